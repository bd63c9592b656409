"""DPO stage (Rafailov et al. 2023), sigmoid loss on summed sequence log-probs (``losses.preference``).

Reference log-probs are computed ONCE, before the first update, in a batched no-grad eval-mode pass
split across processes, and stored with each pair, so training never runs a reference model:

- ``ref_model`` given: it is loaded frozen, used for that pass, and freed before training;
- LoRA policy: the reference is the policy with its adapter disabled (``models.reference``);
- otherwise: the starting policy itself. Departure from "load a frozen copy": before the first update
  the policy *is* the reference, so its log-probs are identical and no second copy is loaded.

Each batch of B pairs is one forward over 2B rows (chosen first, then rejected).
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from alignlab.config import DPOConfig
from alignlab.data.collate import collate_pairs
from alignlab.data.loading import load_records
from alignlab.data.tokenize import EncodedPair, encode_pair
from alignlab.losses.preference import dpo_sigmoid_loss
from alignlab.models.loading import load_causal_lm
from alignlab.models.reference import precompute_logprobs
from alignlab.runs import RunFolder
from alignlab.train.common import encode_all, report_data, save_final, sharded_map, start_stage
from alignlab.train.forward import TokenLogprobModule, masked_sequence_sum
from alignlab.train.loop import main_log, train_loop


@dataclass(frozen=True)
class PairWithReference:
    """An encoded pair and its reference sequence log-probs (summed over completion tokens)."""

    pair: EncodedPair
    ref_chosen: float
    ref_rejected: float


def collate_with_reference(items: list[PairWithReference], pad_id: int) -> dict:
    """``collate_pairs`` plus ``ref_chosen`` / ``ref_rejected`` float tensors [B]."""
    batch = collate_pairs([item.pair for item in items], pad_id)
    batch["ref_chosen"] = torch.tensor([item.ref_chosen for item in items])
    batch["ref_rejected"] = torch.tensor([item.ref_rejected for item in items])
    return batch


def count_pairs(batch: dict) -> int:
    return int(batch["label"].numel())


def dpo_step(model, batch: dict, beta: float):
    """``(loss_sum, n_pairs, metric sums)``; ``model`` is a TokenLogprobModule."""
    sequence = masked_sequence_sum(model(batch), batch["loss_mask"])
    half = batch["label"].numel()
    losses, metrics = dpo_sigmoid_loss(sequence[:half], sequence[half:], batch["ref_chosen"],
                                       batch["ref_rejected"], beta, batch["label"])
    return losses.sum(), half, {name: value.sum() for name, value in metrics.items()}


def reference_values(acc, reference, pairs: list[EncodedPair], pad_id: int, batch_size: int,
                     disable_adapter: bool) -> list[tuple[float, float]]:
    """(ref_chosen, ref_rejected) for every pair, computed once, split across processes."""
    def score(chunk):
        batch = collate_pairs(chunk, pad_id)
        values = precompute_logprobs(reference, [batch], disable_adapter=disable_adapter)
        half = len(chunk)
        return list(zip(values[:half].tolist(), values[half:].tolist()))

    return sharded_map(acc, pairs, score, batch_size)


def attach_reference(cfg: DPOConfig, acc, run: RunFolder, policy, tokenizer,
                     pairs: list[EncodedPair]) -> list[PairWithReference]:
    """Pairs with their reference log-probs, from the reference chosen as the module doc says."""
    pad, size = tokenizer.pad_token_id, cfg.train.batch_size
    if cfg.ref_model is not None:
        reference, ref_tok = load_causal_lm(cfg.ref_model, for_training=False)
        if len(ref_tok) != len(tokenizer):
            raise ValueError(f"ref_model {cfg.ref_model.path}: tokenizer has {len(ref_tok)} tokens, "
                             f"the policy's has {len(tokenizer)}; they must share a vocabulary")
        values = reference_values(acc, reference.to(acc.device), pairs, pad, size, False)
        del reference
        gc.collect()
        source = f"ref_model {cfg.ref_model.path}"
    else:
        lora = cfg.model.lora is not None
        values = reference_values(acc, policy.to(acc.device), pairs, pad, size, lora)
        source = "policy with adapter disabled" if lora else "starting policy"
    main_log(acc, run, f"reference log-probs for {len(pairs)} pairs from the {source}")
    return [PairWithReference(p, c, r) for p, (c, r) in zip(pairs, values)]


def run_dpo(cfg: DPOConfig, run: RunFolder) -> Path:
    """Train ``cfg.model`` with DPO on ``cfg.data``; returns the saved model folder."""
    acc = start_stage("dpo", cfg.train.seed, run)
    loaded = load_records(cfg.data, "pair")
    report_data(acc, run, loaded, "pair")
    policy, tokenizer = load_causal_lm(cfg.model)
    encode = partial(encode_pair, tokenizer, max_length=cfg.train.max_length,
                     max_prompt_length=cfg.train.max_prompt_length)
    pairs = encode_all(loaded.records, encode, loaded.source)
    items = attach_reference(cfg, acc, run, policy, tokenizer, pairs)
    collate = partial(collate_with_reference, pad_id=tokenizer.pad_token_id)
    step = partial(dpo_step, beta=cfg.beta)
    result = train_loop(TokenLogprobModule(policy), items, collate, step, count_pairs, cfg.train,
                        run, acc)
    return save_final(acc, run, result.model.model, tokenizer)
