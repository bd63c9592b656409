"""Per-token KL estimators and KL-coefficient controllers for online RL from feedback.

Pure functions and small state objects: no models, no trainer. Token tensors are ``[B, T]`` over the
response tokens; masking is the caller's (multiply by the response mask before summing/averaging).
"""

from __future__ import annotations

import math

import torch

KL_KINDS = ("k1", "k2", "k3")


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token Monte-Carlo estimate of KL(pi || pi_ref) from log-probs of tokens sampled from pi.

    Schulman 2020, "Approximating KL divergence" (blog note). With ``log r = ref_logp - logp`` for a
    token x ~ pi (``logp = log pi(x | prefix)``, ``ref_logp = log pi_ref(x | prefix)``, both for the
    single sampled token, not summed over the vocabulary):

        k1 = -log r                 = logp - ref_logp
        k2 = (log r)^2 / 2
        k3 = (r - 1) - log r        = exp(ref_logp - logp) - 1 - (ref_logp - logp)

    Properties (for x ~ pi, so E_pi[r] = 1):

    * k1: unbiased for KL(pi || pi_ref), but a single sample can be negative (high variance).
    * k2: always >= 0, but biased (its expectation is an f-divergence that matches KL only to second
      order as pi -> pi_ref); low variance.
    * k3: always >= 0 (since r - 1 >= log r) AND unbiased (adds the zero-mean control variate r - 1
      to k1). Summed over the tokens of a sequence sampled from pi, k1 and k3 are unbiased for the
      sequence-level KL, because each per-token term is unbiased conditional on its prefix.

    These are estimates of the KL *value* (for reward shaping and logging). Differentiating them as a
    loss does not in general give the gradient of the KL; that is the caller's choice. The tensors
    must be from the same tokens and share a shape; padding positions are returned as computed (mask
    them yourself). Returns a tensor of the input's shape.
    """
    if logp.shape != ref_logp.shape:
        raise ValueError(f"logp {tuple(logp.shape)} and ref_logp {tuple(ref_logp.shape)} must have the same shape")
    log_ratio = ref_logp - logp  # log r
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio.square()
    if kind == "k3":
        # expm1 keeps (r - 1) accurate when r is close to 1
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"kind must be one of {KL_KINDS}, got {kind!r}")


def _check_finite_non_negative(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


def _check_positive(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


class FixedKLController:
    """Constant KL coefficient beta (InstructGPT / Ouyang et al. 2022 use a fixed beta).

    ``.value`` is the coefficient; ``.update`` validates its arguments and leaves it unchanged, so a
    trainer can call either controller the same way. Checkpoint with ``state_dict()``.
    """

    kind = "fixed"

    def __init__(self, coef: float) -> None:
        self.value = _check_finite_non_negative("coef", coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        """No-op for a fixed coefficient; returns ``.value``."""
        _check_update_args(current_kl, n_steps)
        return self.value

    def state_dict(self) -> dict:
        return {"kind": self.kind, "value": self.value}

    def load_state_dict(self, state: dict) -> None:
        _check_kind(state, self.kind)
        self.value = _check_finite_non_negative("value", state["value"])


class AdaptiveKLController:
    """Proportional controller that steers the measured KL towards a target.

    Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences", sec. 2.2:

        e_t       = clip(KL_t / KL_target - 1, -0.2, 0.2)
        beta_{t+1} = beta_t * (1 + K_beta * e_t)

    with the gain written as ``K_beta = n_steps / horizon`` (their released code's form): each update
    covers ``n_steps`` samples (or episodes) and ``horizon`` sets how many of them it takes to move
    beta by a factor of about e^(0.2) at the clip. ``current_kl`` is the measured KL(pi || pi_ref) per
    sequence (summed over response tokens, averaged over the batch) in the same units as ``target``.

    ``.value`` is the current beta. ``state_dict()`` stores beta, target and horizon;
    ``load_state_dict`` restores all three (the checkpoint wins over the constructor arguments).
    """

    kind = "adaptive"

    def __init__(self, init_coef: float, target: float, horizon: float) -> None:
        self.value = _check_finite_non_negative("init_coef", init_coef)
        self.target = _check_positive("target", target)
        self.horizon = _check_positive("horizon", horizon)

    def proportional_error(self, current_kl: float) -> float:
        """e = clip(current_kl / target - 1, -0.2, 0.2)."""
        return min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)

    def update(self, current_kl: float, n_steps: int) -> float:
        """beta <- beta * (1 + e * n_steps / horizon); returns the new ``.value``."""
        current_kl, n_steps = _check_update_args(current_kl, n_steps)
        self.value *= 1.0 + self.proportional_error(current_kl) * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict:
        return {"kind": self.kind, "value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        _check_kind(state, self.kind)
        self.value = _check_finite_non_negative("value", state["value"])
        self.target = _check_positive("target", state["target"])
        self.horizon = _check_positive("horizon", state["horizon"])


def _check_update_args(current_kl: float, n_steps: int) -> tuple[float, int]:
    current_kl = float(current_kl)
    if not math.isfinite(current_kl):
        raise ValueError(f"current_kl must be finite, got {current_kl}")
    if isinstance(n_steps, bool) or int(n_steps) != n_steps or n_steps < 0:
        raise ValueError(f"n_steps must be an integer >= 0, got {n_steps!r}")
    return current_kl, int(n_steps)


def _check_kind(state: dict, kind: str) -> None:
    if state.get("kind") != kind:
        raise ValueError(f"state_dict is for a {state.get('kind')!r} KL controller, not {kind!r}")
