"""Weak-to-strong transfer losses (Burns et al. 2023, "Weak-to-Strong Generalization").

Pure functions of a strong student's class logits ``[B, C]`` and a weak supervisor's soft labels
``[B, C]`` (rows summing to 1). Each returns per-example losses ``[B]``; the caller averages.

- :func:`soft_label_ce`: the naive transfer, cross-entropy on the weak soft labels.
- :func:`aux_confidence_loss`: the auxiliary confidence loss (Burns et al. 2023):
  the target mixes the weak labels with the student's own *hardened* predictions,
  ``(1 - a) * weak + a * hard(student)``, so the student may disagree with the supervisor where it is
  confident. For two classes the hardening threshold is the quantile of the student's P(class 1) that
  gives the hardened predictions the weak labels' class balance; ``a = alpha * warm-up`` with a LINEAR
  warm-up over the first ``warmup_frac`` of training (:func:`linear_warmup`; the paper warms the
  weight up, the reference implementation jumps to it after a step count — a known bug we do not
  copy). Departure: with more than two classes the hardening is the argmax (the paper defines the
  balanced threshold for binary tasks).
- :func:`confidence_window_loss`: cross-entropy on the weak labels only where the student is unsure,
  ``|P_student(class 1) - 1/2| < radius`` (binary); examples outside the window give 0. A variant
  from the open-source replications (EleutherAI w2s); not in the paper.
- :func:`product_loss`: cross-entropy to the normalised product of the weak labels and the student's
  own (detached) predictions, ``weak^alpha * p^beta / Z`` — a product of experts in which the
  student keeps the classes it and the supervisor agree on. From the paper's reference code (openai
  weak-to-strong, ``product_loss_fn``); the paper's text reports only the confidence loss. No
  warm-up, as in that code. Departure: a class the weak labels give probability 0 gets 0 target
  mass; where the product is 0 for every class (the supervisor and the student each certain of a
  different class) we fall back to the weak labels instead of dividing by zero.

Every loss takes ``step_frac`` (fraction of training done) through :func:`transfer_loss` so the
training loop can call them alike; only the confidence loss uses it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check(logits: torch.Tensor, weak: torch.Tensor) -> None:
    if logits.dim() != 2 or logits.shape != weak.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and weak labels {tuple(weak.shape)} must "
                         "both be [B, C]")
    if bool((weak < 0).any()) or not torch.allclose(weak.sum(-1), torch.ones_like(weak[:, 0]),
                                                    atol=1e-4):
        raise ValueError("weak labels must be probabilities: non-negative rows summing to 1")


def soft_label_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-example ``-sum_c targets[c] * log softmax(logits)[c]``."""
    _check(logits, targets)
    return -(targets.float() * F.log_softmax(logits.float(), dim=-1)).sum(-1)


def linear_warmup(step_frac: float, warmup_frac: float) -> float:
    """``min(1, step_frac / warmup_frac)``: 0 at the start, 1 from ``warmup_frac`` of training on
    (1 throughout when ``warmup_frac`` is 0)."""
    if not 0.0 <= step_frac <= 1.0:
        raise ValueError(f"step_frac must lie in [0, 1], got {step_frac}")
    return 1.0 if warmup_frac <= 0 else min(1.0, step_frac / warmup_frac)


def balanced_hardening(probs: torch.Tensor, weak: torch.Tensor) -> torch.Tensor:
    """The student's predictions hardened to one-hot ``[B, C]``. Two classes: class 1 where
    P(class 1) >= t, t the (1 - q) quantile of P(class 1) over the batch (linear interpolation) with
    q the weak labels' mean P(class 1), so about a share q of the batch is hardened to class 1.
    More classes: the argmax."""
    if probs.shape[1] != 2:
        return F.one_hot(probs.argmax(-1), probs.shape[1]).to(probs.dtype)
    share = float(weak[:, 1].float().mean())
    threshold = torch.quantile(probs[:, 1].float(), 1.0 - share)
    positive = (probs[:, 1] >= threshold).to(probs.dtype)
    return torch.stack([1 - positive, positive], dim=1)


def aux_confidence_loss(logits: torch.Tensor, weak: torch.Tensor, step_frac: float,
                        alpha: float = 0.75, warmup_frac: float = 0.2) -> torch.Tensor:
    """Burns et al.'s auxiliary confidence loss (module docstring): cross-entropy to
    ``(1 - a) * weak + a * hard(student)``, ``a = alpha * linear_warmup(step_frac, warmup_frac)``;
    the hardened predictions carry no gradient."""
    _check(logits, weak)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    weight = alpha * linear_warmup(step_frac, warmup_frac)
    hard = balanced_hardening(torch.softmax(logits.detach().float(), dim=-1), weak)
    return soft_label_ce(logits, (1 - weight) * weak.float() + weight * hard)


def confidence_window_loss(logits: torch.Tensor, weak: torch.Tensor,
                           radius: float = 0.15) -> torch.Tensor:
    """Cross-entropy on the weak labels where the student's P(class 1) is within ``radius`` of 1/2,
    0 elsewhere (binary tasks; module docstring)."""
    _check(logits, weak)
    if logits.shape[1] != 2:
        raise ValueError("the confidence-window loss is defined for two classes")
    p1 = torch.softmax(logits.detach().float(), dim=-1)[:, 1]
    unsure = ((p1 - 0.5).abs() < radius).float()
    return soft_label_ce(logits, weak) * unsure


def product_loss(logits: torch.Tensor, weak: torch.Tensor, alpha: float = 1.0,
                 beta: float = 1.0) -> torch.Tensor:
    """Cross-entropy to ``weak^alpha * softmax(logits)^beta`` normalised per row (module docstring);
    the target carries no gradient."""
    _check(logits, weak)
    probs = torch.softmax(logits.detach().float(), dim=-1)
    target = weak.float().pow(alpha) * probs.pow(beta)
    total = target.sum(-1, keepdim=True)
    target = torch.where(total > 0, target / total.clamp_min(1e-30), weak.float())
    return soft_label_ce(logits, target)


TRANSFER_LOSSES = ("ce", "aux_conf", "product", "window")


def transfer_loss(name: str, logits: torch.Tensor, weak: torch.Tensor, step_frac: float,
                  alpha: float = 0.75, warmup_frac: float = 0.2,
                  radius: float = 0.15) -> torch.Tensor:
    """Per-example loss ``[B]`` of the transfer loss ``name`` (one of :data:`TRANSFER_LOSSES`):
    ``ce`` (:func:`soft_label_ce`), ``aux_conf`` (:func:`aux_confidence_loss` with ``alpha``,
    ``warmup_frac``), ``product`` (:func:`product_loss`, alpha = beta = 1) or ``window``
    (:func:`confidence_window_loss` with ``radius``). Gold training uses ``ce`` on one-hot labels."""
    if name == "ce":
        return soft_label_ce(logits, weak)
    if name == "aux_conf":
        return aux_confidence_loss(logits, weak, step_frac, alpha, warmup_frac)
    if name == "product":
        return product_loss(logits, weak)
    if name == "window":
        return confidence_window_loss(logits, weak, radius)
    raise ValueError(f"unknown transfer loss {name!r}; choose one of {TRANSFER_LOSSES}")
