"""Knobs of the online algorithms (``rl:`` in an online config), shared by the algorithms and the trainer."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from alignlab.config import StrictModel


class RLSettings(StrictModel):
    """Knobs of the online algorithms (see ``alignlab.rl.algorithms`` for which one reads what).

    KL: ``kl_coef`` is beta (fixed), or the starting beta of the adaptive controller when
    ``kl_target`` is set (Ziegler et al. 2019). PPO, RLOO and REINFORCE++ put the KL in the reward;
    GRPO puts the k3 estimate in the loss. ``ref_sync_every`` > 0 replaces the reference by the
    current policy every that many iterations (iterative methods); 0 keeps the starting model.
    ``whiten_advantages`` None means the algorithm's default (on for PPO, off for the others).
    ``minibatch_size`` and ``micro_batch_size`` count sequences (pairs for online DPO); None: one
    minibatch / no split. ``sppo_eta`` and ``sppo_mode`` are SPPO's η and its estimated-win-rate
    (``soft``) or winner = 1 / loser = 0 (``hard``) targets. ``mixture_coef`` is Nash-MD's β of the
    geometric mixture π^(1−β) π_ref^β its opponent samples: one value, or one per iteration (the
    last value holds afterwards). ``xpo_alpha`` is XPO's α, the weight of its exploration term.
    ``share_prompt``: the forwards over a rollout (old and reference log-probs, the update's policy
    and critic) compute the prompt a prompt's k samples share once per prompt instead of once per
    sample (:mod:`alignlab.models.shared_prefix`; the same numbers up to float rounding; models
    whose attention takes no custom mask, e.g. flash-attention, run every row whole).
    """

    ppo_epochs: int = Field(1, ge=1)
    minibatch_size: int | None = Field(None, ge=1)
    micro_batch_size: int | None = Field(None, ge=1)
    clip_eps: float = Field(0.2, gt=0.0)
    clip_eps_high: float | None = Field(None, gt=0.0)
    kl_coef: float = Field(0.05, ge=0.0)
    kl_target: float | None = Field(None, gt=0.0)
    kl_horizon: float = Field(10000.0, gt=0.0)
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    gamma: float = Field(1.0, ge=0.0, le=1.0)
    lam: float = Field(0.95, ge=0.0, le=1.0)
    whiten_advantages: bool | None = None
    score_norm: Literal["none", "batch"] = "none"
    reward_clip: float | None = Field(None, gt=0.0)
    missing_eos_penalty: float | None = None
    vf_coef: float = Field(0.1, ge=0.0)
    value_clip: float | None = Field(0.2, gt=0.0)
    critic_learning_rate: float | None = Field(None, gt=0.0)
    grpo_scale: Literal["std", "none"] = "std"
    reduction: Literal["auto", "token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] = "auto"
    ptx_coef: float = Field(0.0, ge=0.0)
    ref_sync_every: int = Field(0, ge=0)
    sppo_eta: float = Field(10.0, gt=0.0)
    sppo_mode: Literal["soft", "hard"] = "soft"
    mixture_coef: float | list[float] = 0.5
    xpo_alpha: float = Field(1e-5, ge=0.0)
    share_prompt: bool = True

    @field_validator("mixture_coef")
    @classmethod
    def _coef_in_unit_interval(cls, value):
        values = value if isinstance(value, list) else [value]
        if not values or any(not 0.0 <= v <= 1.0 for v in values):
            raise ValueError("mixture_coef must be a number in [0, 1] or a non-empty list of them")
        return value

    def mixture_coef_at(self, iteration: int) -> float:
        """Nash-MD's mixture coefficient at ``iteration`` (0-based) of the schedule."""
        if isinstance(self.mixture_coef, list):
            return self.mixture_coef[min(iteration, len(self.mixture_coef) - 1)]
        return self.mixture_coef

