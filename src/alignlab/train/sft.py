"""Supervised fine-tuning stage: prompt-masked NLL on assistant turns, global token-mean.

Records of kind ``conversation`` (pairs become prompt + chosen) are encoded with the chat template
(``data.tokenize.encode_conversation``), optionally packed (``packing: true``: first-fit rows of
``max_length`` tokens, each document attending only to itself, see ``data.packing``), and trained
with the shared loop; the loss is the sum of -log p over every target token of the optimiser step
divided by the global number of target tokens (see ``losses.sft`` for why this differs from
averaging per micro-batch).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Literal

from pydantic import Field

from alignlab.config import DataSettings, ModelSettings, StageConfig, TrainSettings
from alignlab.data.collate import pad_encoded
from alignlab.data.loading import load_records
from alignlab.data.packing import check_packing_support, pack_encoded
from alignlab.data.tokenize import encode_conversation
from alignlab.losses.sft import nll_sum
from alignlab.models.loading import load_causal_lm
from alignlab.runs import RunFolder
from alignlab.train.common import encode_all, keep_best, report_data, save_final, start_stage
from alignlab.train.forward import TokenLogprobModule
from alignlab.train.held_out import HeldOut, perplexity
from alignlab.train.loop import main_log, train_loop
from alignlab.train.penalties import DeltaL1


class SFTConfig(StageConfig):
    """Supervised fine-tuning: prompt-masked NLL on assistant turns.

    ``delta_l1``: λ of PAFT's sparsity penalty λ‖θ − θ_0‖₁ on the change from the starting weights
    (:class:`alignlab.train.penalties.DeltaL1`); 0 (default) trains without it."""

    stage: Literal["sft"] = "sft"
    model: ModelSettings
    data: DataSettings
    train: TrainSettings = Field(default_factory=TrainSettings)
    packing: bool = False
    delta_l1: float = Field(0.0, ge=0.0)
    eval_data: DataSettings | None = None
    out: str


def count_targets(batch: dict) -> int:
    """Target tokens of a padded batch (``loss_mask`` shifted like the log-probs)."""
    return int(batch["loss_mask"][:, 1:].sum())


def sft_step(model, batch: dict):
    """``(nll_sum, n_tokens, {})`` for one micro-batch; ``model`` is a TokenLogprobModule."""
    total, n = nll_sum(model(batch), batch["loss_mask"][:, 1:])
    return total, n, {}


def build_sft_items(cfg: SFTConfig, tokenizer, records, source: str) -> tuple[list, int]:
    """Encoded (optionally packed) sequences, and how many had no target token left."""
    encode = partial(encode_conversation, tokenizer, max_length=cfg.train.max_length,
                     max_prompt_length=cfg.train.max_prompt_length)
    items = encode_all(records, encode, source)
    kept = [item for item in items if sum(item.loss_mask[1:]) > 0]
    dropped = len(items) - len(kept)
    if cfg.packing:
        check_packing_support()
        kept = pack_encoded(kept, cfg.train.max_length)
    return kept, dropped


def run_sft(cfg: SFTConfig, run: RunFolder) -> Path:
    """Fine-tune ``cfg.model`` on ``cfg.data``; returns the saved model folder."""
    acc = start_stage("sft", cfg.train.seed, run)
    loaded = load_records(cfg.data, "conversation")
    report_data(acc, run, loaded, "conversation")
    model, tokenizer = load_causal_lm(cfg.model)
    items, dropped = build_sft_items(cfg, tokenizer, loaded.records, loaded.source)
    main_log(acc, run, f"{len(items)} training sequences (packing={cfg.packing}); "
                       f"{dropped} without target tokens after truncation dropped")
    if not items:
        raise ValueError(f"{loaded.source}: no sequence has a target token within max_length")
    collate = partial(pad_encoded, pad_id=tokenizer.pad_token_id)
    held_out = sft_held_out(cfg, acc, run, tokenizer, collate)
    penalty = DeltaL1(model, cfg.delta_l1) if cfg.delta_l1 > 0 else None
    result = train_loop(TokenLogprobModule(model), items, collate, sft_step, count_targets,
                        cfg.train, run, acc, held_out, grad_penalty=penalty)
    return save_final(acc, run, result.model.model, tokenizer, cfg.train.save_best is not None)


def sft_held_out(cfg: SFTConfig, acc, run: RunFolder, tokenizer, collate) -> HeldOut | None:
    """``eval_data`` as held-out sequences: NLL per target token and perplexity during training."""
    if cfg.eval_data is None:
        return None
    loaded = load_records(cfg.eval_data, "conversation")
    report_data(acc, run, loaded, "held-out conversation")
    items, dropped = build_sft_items(cfg.model_copy(update={"packing": False}), tokenizer,
                                     loaded.records, loaded.source)
    main_log(acc, run, f"{len(items)} held-out sequences ({dropped} without target tokens dropped)")
    return HeldOut(items, collate, sft_step, cfg.train.batch_size, derive=perplexity,
                   save_best=keep_best(run, tokenizer, lambda module: module.model))
