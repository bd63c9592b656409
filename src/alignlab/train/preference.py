"""The offline preference stage: every registered objective (``alignlab.losses``) through one loop.

Per run:

1. read the data as the objective's kind (pair / binary / ranked; pairs convert to unpaired binary
   feedback, ranked lists to pairs, see ``data.loading``) and tokenise it into fixed-slot examples
   (``pref_examples``);
2. reference (objectives with ``reference="cached"``): sequence log-probs of every row, computed once
   in batched no-grad passes split across processes and cached on disk keyed by model and data
   (``reference_cache``), BEFORE the policy trains, so no reference model is held during training.
   The reference is ``ref_model`` when given (loaded, used, freed), else the starting policy (with
   its LoRA adapter disabled when it has one; without LoRA the policy before its first update *is*
   the reference). Reference-free objectives load and run no reference at all; TDPO
   (``reference="online"``) runs the reference on every batch because it needs full distributions;
3. train: each batch of B examples is ONE forward over all S*B rows (chosen and rejected, or the
   whole list), reduced to per-sequence stats and handed to the weighted sum of objectives.

sDPO (Kim et al. 2024, "sDPO: Don't Use Your Data All at Once") splits the data into consecutive
chunks; chunk k is trained with the model that finished chunk k-1 as both starting policy and
reference. Each chunk is a sub-run ``sdpo-k/`` with its own checkpoints and saved model, so a killed
run resumes inside the chunk it was training.
"""

from __future__ import annotations

import copy
import gc
import itertools
import shutil
import time
from functools import partial
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, field_validator, model_validator

from alignlab.config import DataSettings, ModelSettings, StageConfig, StrictModel, TrainSettings
from alignlab.data.collate import pad_encoded
from alignlab.data.loading import load_records
from alignlab.losses import get_loss
from alignlab.losses.terms import LossTerm, loss_term_list
from alignlab.models.loading import load_causal_lm, load_tokenizer, resolve_model_source
from alignlab.models.reference import precompute_logprobs
from alignlab.runs import RunFolder
from alignlab.train.common import keep_best, report_data, save_final, sharded_map, start_stage
from alignlab.train.held_out import HeldOut
from alignlab.train.loop import main_log, make_accelerator, train_loop
from alignlab.train.objective import Objective
from alignlab.train.pref_examples import (
    Example,
    collate_examples,
    encode_binary,
    encode_pairs,
    encode_ranked,
    slot_major_rows,
)
from alignlab.train.pref_forward import PreferenceModule, objective_inputs, row_stats
from alignlab.train.reference_cache import (
    ReferenceCache,
    cache_meta,
    cached_reference,
    example_layout,
    model_fingerprint,
    resolve_cache_dir,
)


class SDPOSettings(StrictModel):
    """sDPO (Kim et al. 2024): train on ``stages`` consecutive chunks of the data; each chunk's
    reference is the model that finished the previous chunk."""

    stages: int = Field(2, ge=2)


class PreferenceConfig(StageConfig):
    """Offline preference optimisation: any registered objective (or a weighted sum of several).

    ``stage: dpo`` and ``stage: preference`` are the same stage. ``reference_cache`` is the folder of
    the on-disk reference log-prob cache (``auto``: ``$ALIGNLAB_CACHE/reference``; ``none``: compute
    every run, keep nothing). ``reference_cache_weights`` says how the cache recognises the reference
    weights: ``stat`` (default; size, mtime and ctime of every file) or ``content`` (SHA-256 of every
    file: survives copying the model folder, costs one read of the weights per run).
    ``eval_data`` (same kind as ``data``) is evaluated during training (``train.eval_every``) and at
    the end with the objective's own loss and metrics: for DPO ``eval/rewards/accuracy``,
    ``eval/rewards/margin``, ``eval/rewards/chosen``, ``eval/rewards/rejected`` (reference values of
    the held-out rows are cached like the training rows). ``share_prompt`` (default on) runs the
    prompt that an example's rows share once, in the reference pass and in training, as one packed
    row with a tree attention mask (``models.shared_prefix``; equal log-probs and gradients up to
    float summation order). It is skipped for flash-attention models and for objectives that need
    full next-token distributions (TDPO, CRINGE).
    """

    stage: Literal["dpo", "preference"] = "dpo"
    model: ModelSettings
    ref_model: ModelSettings | None = None
    data: DataSettings
    train: TrainSettings = Field(default_factory=TrainSettings)
    loss: list[LossTerm] = Field(default_factory=lambda: [LossTerm(name="dpo", beta=0.1)],
                                 min_length=1)
    reference_cache: str = "auto"
    reference_cache_weights: Literal["stat", "content"] = "stat"
    share_prompt: bool = True
    sdpo: SDPOSettings | None = None
    eval_data: DataSettings | None = None
    out: str

    @field_validator("loss", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        return loss_term_list(value)

    @model_validator(mode="after")
    def _check_combination(self) -> "PreferenceConfig":
        specs = [get_loss(term.name) for term in self.loss]
        kinds = {spec.data_kind for spec in specs}
        if len(kinds) > 1:
            raise ValueError("loss: combined objectives must train on one data kind, got "
                             + ", ".join(f"{s.name}={s.data_kind}" for s in specs))
        if len({term.name for term in self.loss}) != len(self.loss):
            raise ValueError("loss: an objective is listed twice")
        if self.sdpo is not None and self.ref_model is not None:
            raise ValueError("sdpo: the reference moves to each stage's starting model, so "
                             "ref_model must not be set")
        return self


DPOConfig = PreferenceConfig


SDPO_DONE = "DONE"
REFERENCE_BLOCK = 1024  # examples per cached block of reference values


# ----------------------------------------------------------------------------- data


def policy_tokenizer(settings: ModelSettings):
    """The policy's tokenizer alone (the model is loaded later, after the reference pass)."""
    source, extra = resolve_model_source(settings)
    return load_tokenizer(source, settings, extra)


def encode_examples(cfg: PreferenceConfig, objective: Objective, tokenizer, records) -> list[Example]:
    """Tokenise records into examples of the objective's kind (see ``pref_examples``)."""
    lengths = (cfg.train.max_length, cfg.train.max_prompt_length)
    kind = objective.data_kind
    if kind == "pair":
        return encode_pairs(tokenizer, records, *lengths)
    if kind == "binary":
        return encode_binary(tokenizer, records, *lengths, with_mismatch="kl_pairs" in objective.needs)
    return encode_ranked(tokenizer, records, *lengths)


def load_examples(cfg: PreferenceConfig, objective: Objective, acc, run: RunFolder, tokenizer,
                  data: DataSettings | None = None, what: str = ""):
    loaded = load_records(data or cfg.data, objective.data_kind)
    report_data(acc, run, loaded, f"{what}{objective.data_kind}")
    try:
        return encode_examples(cfg, objective, tokenizer, loaded.records)
    except ValueError as exc:
        raise ValueError(f"{loaded.source}: cannot tokenise the data: {exc}") from None


# ----------------------------------------------------------------------------- reference


def reference_rows(model, examples: list[Example], pad_id: int, disable_adapter: bool,
                   share_prompt: bool = True) -> torch.Tensor:
    """``[len(examples), slots]`` summed reference log-probs of every row (no grad, eval mode);
    with ``share_prompt`` each example's common prompt runs once (``models.shared_prefix``)."""
    slots = len(examples[0].rows)
    batch = pad_encoded(slot_major_rows(examples), pad_id)
    values = precompute_logprobs(model, [batch], disable_adapter=disable_adapter,
                                 slots=slots if share_prompt else 1)
    return values.reshape(slots, len(examples)).T


class LazyReference:
    """Loads the reference model on first use (a fully cached run never loads it)."""

    def __init__(self, settings: ModelSettings, policy, tokenizer):
        self.settings, self.policy, self.tokenizer = settings, policy, tokenizer
        self.model = None

    def get(self):
        if self.policy is not None:
            return self.policy
        if self.model is None:
            self.model, ref_tok = load_causal_lm(self.settings, for_training=False)
            if len(ref_tok) != len(self.tokenizer):
                raise ValueError(f"ref_model {self.settings.path}: tokenizer has {len(ref_tok)} "
                                 f"tokens, the policy's has {len(self.tokenizer)}; they must match")
        return self.model

    def release(self) -> None:
        self.model = None
        gc.collect()


def reference_cache_for(cfg: PreferenceConfig, objective: Objective, examples: list[Example],
                        fingerprint: dict | None, log) -> ReferenceCache:
    """The cache entry of these examples' reference values (``reference_cache`` module docstring)."""
    layout = example_layout(objective.data_kind, examples, "kl_pairs" in objective.needs)
    return ReferenceCache(resolve_cache_dir(cfg.reference_cache),
                          cache_meta(fingerprint, layout, examples, REFERENCE_BLOCK), log)


def reference_fingerprint(cfg: PreferenceConfig, ref_settings: ModelSettings, adapter_base: bool,
                          log) -> dict | None:
    """The reference weights' identity for the cache key (None: no disk cache, or a hub model
    whose commit cannot be resolved, which is logged)."""
    if resolve_cache_dir(cfg.reference_cache) is None:
        return None
    fingerprint = model_fingerprint(ref_settings, adapter_base, cfg.reference_cache_weights)
    if fingerprint is None:
        log(f"reference cache off: hub model {ref_settings.path!r} has no pinned revision and "
            "its commit cannot be resolved (set model.revision to a commit to cache)")
    return fingerprint


def attach_reference(cfg: PreferenceConfig, acc, run: RunFolder, objective: Objective,
                     example_sets: list[list[Example]], ref_settings: ModelSettings, policy,
                     tokenizer, share_prompt: bool = True) -> list[list[Example]]:
    """Each set of examples (training, held-out) with cached reference log-probs, computed where
    its cache entry has none. The reference model is loaded at most once and the weights are
    fingerprinted once for all sets; each set keeps its own cache entry. ``share_prompt``: see
    :class:`PreferenceConfig`."""
    adapter_base = policy is not None and cfg.model.lora is not None
    lazy = LazyReference(ref_settings, policy, tokenizer)
    batch_size = cfg.train.batch_size

    def compute(block: list[Example]) -> torch.Tensor:
        model = lazy.get().to(acc.device)
        rows = sharded_map(acc, block, lambda chunk: list(reference_rows(
            model, chunk, tokenizer.pad_token_id, adapter_base, share_prompt)), batch_size)
        return torch.stack(rows)

    log = partial(main_log, acc, run)
    start = time.time()
    fingerprint = reference_fingerprint(cfg, ref_settings, adapter_base, log)
    out = [cached_reference(examples, reference_cache_for(cfg, objective, examples, fingerprint, log),
                            compute, acc.is_main_process, acc.wait_for_everyone, log)
           for examples in example_sets]
    lazy.release()
    source = "ref_model" if policy is None else (
        "policy with adapter disabled" if adapter_base else "starting policy")
    counts = " + ".join(str(len(examples)) for examples in example_sets)
    main_log(acc, run, f"reference log-probs for {counts} examples from the {source} "
                       f"({ref_settings.path}) in {time.time() - start:.1f}s")
    if acc.is_main_process:
        run.log_metrics({"reference_seconds": time.time() - start}, step=0)
    return out


# ----------------------------------------------------------------------------- training


def count_examples(batch: dict) -> int:
    return int(batch["label"].numel())


def preference_step(model, batch: dict, objective: Objective):
    """``(loss_sum, n_examples, metric sums)`` of one micro-batch; ``model`` is a PreferenceModule."""
    stats = row_stats(model(batch), batch)
    losses, metrics = objective(objective_inputs(objective.data_kind, stats, batch))
    return losses.sum(), count_examples(batch), {k: v.float().sum() for k, v in metrics.items()}


def held_out_step(model, batch: dict, objective: Objective):
    """:func:`preference_step` that leaves a stateful objective (e.g. beta-DPO's running statistics)
    as it found it, so evaluating never changes training."""
    state = copy.deepcopy(objective.state_dict())
    try:
        return preference_step(model, batch, objective)
    finally:
        objective.load_state_dict(state)


def preference_held_out(cfg: PreferenceConfig, run: RunFolder, objective: Objective,
                        examples: list[Example] | None, tokenizer) -> HeldOut | None:
    """The held-out examples (reference already attached when the objective needs one)."""
    if not examples:
        return None
    collate = partial(collate_examples, pad_id=tokenizer.pad_token_id)
    return HeldOut(examples, collate, partial(held_out_step, objective=objective),
                   cfg.train.batch_size,
                   save_best=keep_best(run, tokenizer, lambda module: module.model))


def online_reference(cfg: PreferenceConfig, objective: Objective, policy):
    """The frozen model TDPO-style objectives run per batch (None: the LoRA adapter-disabled policy)."""
    if objective.reference != "online":
        return None
    if cfg.ref_model is not None:
        reference, _ = load_causal_lm(cfg.ref_model, for_training=False)
        return reference
    if cfg.model.lora is not None:
        return None
    frozen = copy.deepcopy(policy).eval()
    frozen.requires_grad_(False)
    return frozen


def train_chunk(cfg: PreferenceConfig, run: RunFolder, objective: Objective, acc,
                model_settings: ModelSettings, examples: list[Example], ref_settings: ModelSettings,
                tokenizer, eval_examples: list[Example] | None = None):
    """Reference pass (if any), then training on ``examples``; returns the trained policy."""
    policy = None
    if objective.reference == "cached":
        if ref_settings is model_settings:
            policy, _ = load_causal_lm(model_settings)
        sets = [examples] + ([eval_examples] if eval_examples else [])
        examples, *held = attach_reference(cfg, acc, run, objective, sets, ref_settings, policy,
                                           tokenizer, cfg.share_prompt)
        eval_examples = held[0] if held else eval_examples
    elif objective.reference == "none":
        main_log(acc, run, "reference-free objective: no reference model is loaded")
    held_out = preference_held_out(cfg, run, objective, eval_examples, tokenizer)
    if policy is None:
        policy, _ = load_causal_lm(model_settings)
    reference = online_reference(cfg, objective, policy)
    module = PreferenceModule(policy, objective.needs, objective.topk(), reference,
                              cfg.share_prompt)
    collate = partial(collate_examples, pad_id=tokenizer.pad_token_id)
    step = partial(preference_step, objective=objective)
    acc.register_for_checkpointing(objective)
    result = train_loop(module, examples, collate, step, count_examples, cfg.train, run, acc,
                        held_out)
    return result.model.model


def run_preference(cfg: PreferenceConfig, run: RunFolder) -> Path:
    """Train ``cfg.model`` with ``cfg.loss`` on ``cfg.data``; returns the saved model folder."""
    objective = Objective.from_config(cfg.loss)
    acc = start_stage(f"preference ({' + '.join(s.name for s in objective.specs)})",
                      cfg.train.seed, run)
    tokenizer = policy_tokenizer(cfg.model)
    examples = load_examples(cfg, objective, acc, run, tokenizer)
    eval_examples = None
    if cfg.eval_data is not None:
        eval_examples = load_examples(cfg, objective, acc, run, tokenizer, cfg.eval_data,
                                      "held-out ")
    if cfg.sdpo is not None:
        return run_sdpo(cfg, run, objective, acc, examples, tokenizer, eval_examples)
    ref_settings = cfg.ref_model or cfg.model
    policy = train_chunk(cfg, run, objective, acc, cfg.model, examples, ref_settings, tokenizer,
                         eval_examples)
    return save_final(acc, run, policy, tokenizer, cfg.train.save_best is not None)


# ----------------------------------------------------------------------------- sDPO


def sdpo_chunks(examples: list[Example], stages: int) -> list[list[Example]]:
    """Consecutive, near-equal chunks in data order (sDPO orders data easy → hard beforehand)."""
    if len(examples) < stages:
        raise ValueError(f"sdpo.stages={stages} but the data has only {len(examples)} examples")
    bounds = [round(i * len(examples) / stages) for i in range(stages + 1)]
    return [examples[a:b] for a, b in itertools.pairwise(bounds)]


def run_sdpo(cfg: PreferenceConfig, run: RunFolder, objective: Objective, acc,
             examples: list[Example], tokenizer,
             eval_examples: list[Example] | None = None) -> Path:
    """Train chunk by chunk; chunk k starts from, and is referenced to, chunk k-1's saved model."""
    settings = cfg.model
    for k, chunk in enumerate(sdpo_chunks(examples, cfg.sdpo.stages), start=1):
        sub = RunFolder(run.path / f"sdpo-{k}", echo=run.echo)
        if not (sub.path / SDPO_DONE).is_file():
            main_log(acc, run, f"sDPO stage {k}/{cfg.sdpo.stages}: {len(chunk)} examples from "
                               f"{settings.path}")
            stage_acc = acc if k == 1 else make_accelerator()
            policy = train_chunk(cfg, sub, objective, stage_acc, settings, chunk, settings,
                                 tokenizer, eval_examples)
            save_final(stage_acc, sub, policy, tokenizer, cfg.train.save_best is not None)
            if stage_acc.is_main_process:
                (sub.path / SDPO_DONE).write_text("ok\n")
            del policy
            gc.collect()
        settings = settings.model_copy(update={"path": str(sub.model_dir), "gguf_file": None})
    if acc.is_main_process:
        if run.model_dir.exists():
            shutil.rmtree(run.model_dir)
        shutil.copytree(settings.path, run.model_dir)
    acc.wait_for_everyone()
    return run.model_dir
