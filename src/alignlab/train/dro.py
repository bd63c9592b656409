"""The DRO stage: offline regularised RL on rated single responses (no pairs).

DRO, "Direct Reward Optimisation" (Richemond et al. 2024, "Offline Regularised Reinforcement Learning
for Large Language Models Alignment", arXiv 2405.19107), with the policy and the value network as
separate models (the paper's recommended variant). Per run:

1. read rated single responses (:mod:`alignlab.data.rated`) and tokenise each as one row
   (prompt + response, the response tokens are targets);
2. reference: summed response log-probs of every row, computed once without grad and cached on disk
   exactly as the preference stage does (:func:`alignlab.train.preference.attach_reference`;
   ``ref_model`` when given, else the starting policy, its LoRA adapter disabled under LoRA);
3. train policy π_θ and value V_φ jointly on ½ (r − V(x) − τ ℓ)² (:func:`alignlab.losses.single.
   dro_loss`, ℓ the summed log-ratio) through the shared loop: one module holds both models, so
   checkpoints, resume and DDP cover both; the value model has its own learning rate (an AdamW
   parameter group) and the global gradient-norm clip covers both models together.

The value network is a reward-model-style sequence classifier (:func:`alignlab.models.loading.
load_reward_model`): ``value_model`` when given, else the policy's starting weights with a new scalar
head (as the online stage builds its critic), read at the prompt's last token. The policy is saved as
``<out>/model``, the value model as ``<out>/value``.

Departures from the paper: the policy gradient is not rescaled by default (``policy_grad_scale``
sets a factor, see :mod:`alignlab.losses.single`); no held-out evaluation inside the stage (use the
``eval`` stage).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, model_validator

from alignlab.config import ModelSettings, StageConfig, TrainSettings
from alignlab.data.collate import pad_encoded
from alignlab.data.rated import RatedDataSettings, RatedResponse, load_rated
from alignlab.data.tokenize import Encoded, encode_completion
from alignlab.losses.single import dro_loss
from alignlab.models.loading import load_causal_lm, load_reward_model
from alignlab.models.logprobs import reward_scores, sequence_logprobs
from alignlab.models.sharding import save_gathered
from alignlab.runs import RunFolder
from alignlab.train.common import encode_all, report_data, save_final, start_stage
from alignlab.train.loop import train_loop
from alignlab.train.pref_examples import Example, collate_examples
from alignlab.train.preference import attach_reference, policy_tokenizer

VALUE_DIR = "value"


class DROConfig(StageConfig):
    """DRO (Richemond et al. 2024): policy + separate value model on rated single responses.

    ``tau`` is τ of ½ (r − V(x) − τ log π/π_ref)²; ``value_learning_rate`` defaults to
    ``train.learning_rate``; ``policy_grad_scale`` multiplies the gradient reaching the policy (1:
    the plain joint loss). ``value_model`` defaults to the policy's starting weights (without LoRA)
    with a new scalar head. ``reference_cache`` / ``reference_cache_weights`` as in the ``dpo``
    stage."""

    stage: Literal["dro"] = "dro"
    model: ModelSettings
    ref_model: ModelSettings | None = None
    value_model: ModelSettings | None = None
    data: RatedDataSettings
    train: TrainSettings = Field(default_factory=TrainSettings)
    tau: float = Field(1.0, gt=0.0)
    value_learning_rate: float | None = Field(None, gt=0.0, le=1.0)
    policy_grad_scale: float = Field(1.0, gt=0.0)
    reference_cache: str = "auto"
    reference_cache_weights: Literal["stat", "content"] = "stat"
    out: str

    @model_validator(mode="after")
    def _no_held_out(self) -> DROConfig:
        if self.train.save_best is not None or self.train.eval_every is not None:
            raise ValueError("train.save_best / train.eval_every: the dro stage has no held-out "
                             "evaluation; evaluate the saved model with the eval stage")
        return self


@dataclass(frozen=True)
class RatedLayout:
    """What :func:`attach_reference` reads of an objective: the cache layout of DRO's examples
    (data kind ``rated``, one row per example, no mismatched rows)."""

    data_kind: str = "rated"
    needs: frozenset = frozenset()


# ----------------------------------------------------------------------------- data


def encode_rated(tokenizer, record: RatedResponse, max_length: int,
                 max_prompt_length: int) -> Example:
    """One row (prompt + response, response tokens are targets) with the rating as ``label``."""
    row = encode_completion(tokenizer, record.prompt, record.response, max_length, max_prompt_length)
    return Example((row,), label=record.rating)


def prompt_row(row: Encoded) -> Encoded:
    """The prompt part of an encoded row (the tokens before the first target)."""
    start = row.loss_mask.index(1)
    return Encoded(row.input_ids[:start], [0] * start)


def collate_rated(examples: list[Example], pad_id: int) -> dict:
    """:func:`collate_examples` (rows, ``label`` = ratings, ``ref``) plus the prompts alone as
    ``prompt_input_ids`` / ``prompt_attention_mask`` for the value model."""
    batch = collate_examples(examples, pad_id)
    prompts = pad_encoded([prompt_row(ex.rows[0]) for ex in examples], pad_id)
    batch["prompt_input_ids"] = prompts["input_ids"]
    batch["prompt_attention_mask"] = prompts["attention_mask"]
    return batch


# ----------------------------------------------------------------------------- training


class DROModule(torch.nn.Module):
    """``forward(batch) -> (logps [B], values [B])``: the policy's summed response log-probs and
    V(x) at each prompt's last token; both models inside one module, so DDP and checkpoints see
    both. ``param_groups()`` gives the value model its own learning rate."""

    def __init__(self, policy: torch.nn.Module, value: torch.nn.Module, value_lr: float):
        super().__init__()
        self.model, self.value, self.value_lr = policy, value, value_lr

    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        logps = sequence_logprobs(self.model, batch)
        values = reward_scores(self.value, batch["prompt_input_ids"], batch["prompt_attention_mask"])
        return logps, values

    def param_groups(self) -> list[dict]:
        def trainable(module):
            return [p for p in module.parameters() if p.requires_grad]

        return [{"params": trainable(self.model)},
                {"params": trainable(self.value), "lr": self.value_lr}]


def count_examples(batch: dict) -> int:
    return int(batch["label"].numel())


def dro_step(module: DROModule, batch: dict, tau: float, policy_grad_scale: float):
    """``(loss_sum, n_examples, metric sums)`` of one micro-batch (the loop's step function)."""
    logps, values = module(batch)
    losses, metrics = dro_loss(batch["label"], values, logps, batch["ref"], tau, policy_grad_scale)
    return losses.sum(), losses.numel(), {k: v.float().sum() for k, v in metrics.items()}


def value_settings(cfg: DROConfig) -> ModelSettings:
    """``value_model``, else the policy's starting weights without LoRA (a new scalar head)."""
    return cfg.value_model or cfg.model.model_copy(update={"lora": None})


def load_value(cfg: DROConfig, tokenizer):
    """The value model; its tokenizer must have the policy's size (it reads the same token ids)."""
    value, value_tok = load_reward_model(value_settings(cfg))
    if len(value_tok) != len(tokenizer):
        raise ValueError(f"value_model {value_settings(cfg).path}: tokenizer has {len(value_tok)} "
                         f"tokens, the policy's has {len(tokenizer)}; they must match")
    return value


def load_examples(cfg: DROConfig, acc, run: RunFolder, tokenizer) -> list[Example]:
    """Rated responses read (bad records reported) and tokenised."""
    loaded = load_rated(cfg.data)
    report_data(acc, run, loaded, "rated response")
    encode = partial(encode_rated, tokenizer, max_length=cfg.train.max_length,
                     max_prompt_length=cfg.train.max_prompt_length)
    return encode_all(loaded.records, encode, loaded.source)


def run_dro(cfg: DROConfig, run: RunFolder) -> Path:
    """Train the policy and the value model with DRO; returns the saved policy folder (the value
    model goes to ``<out>/value``)."""
    acc = start_stage(f"dro (tau {cfg.tau})", cfg.train.seed, run)
    tokenizer = policy_tokenizer(cfg.model)
    examples = load_examples(cfg, acc, run, tokenizer)
    ref_settings = cfg.ref_model or cfg.model
    policy = load_causal_lm(cfg.model)[0] if cfg.ref_model is None else None
    [examples] = attach_reference(cfg, acc, run, RatedLayout(), [examples], ref_settings, policy,
                                  tokenizer)
    if policy is None:
        policy, _ = load_causal_lm(cfg.model)
    module = DROModule(policy, load_value(cfg, tokenizer),
                       cfg.value_learning_rate or cfg.train.learning_rate)
    step = partial(dro_step, tau=cfg.tau, policy_grad_scale=cfg.policy_grad_scale)
    collate = partial(collate_rated, pad_id=tokenizer.pad_token_id)
    result = train_loop(module, examples, collate, step, count_examples, cfg.train, run, acc)
    save_gathered(result.model.value, tokenizer, run.path / VALUE_DIR)  # every process (sharding)
    if acc.is_main_process:
        run.log(f"saved value model to {run.path / VALUE_DIR}")
    return save_final(acc, run, result.model.model, tokenizer)
