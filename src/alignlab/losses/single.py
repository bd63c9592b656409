"""Single-trajectory objectives: one rated response per example, no pairs.

DRO, "Direct Reward Optimisation" (Richemond et al. 2024, "Offline Regularised Reinforcement Learning
for Large Language Models Alignment", arXiv 2405.19107). Each example is a prompt x, one response y
and a scalar rating r. With the log-ratio ℓ = log π_θ(y|x) − log π_ref(y|x) (summed over the
response tokens) and a value function V_φ(x), DRO minimises the squared residual of the optimal
KL-regularised policy's identity r = V(x) + τ ℓ (the paper's DRO objective, its eq. for L(θ, φ)):

    L(θ, φ) = ½ (r − V_φ(x) − τ ℓ_θ)²

so ∂L/∂V = −(r − V − τℓ) and ∂L/∂ℓ = −τ (r − V − τℓ). As τ → 0 the policy gradient vanishes and V
regresses on the ratings (its minimiser is the mean rating of the prompt).

Departure from the paper: the paper rescales the policy part of the gradient; here the default is
the plain joint squared loss above (``policy_grad_scale = 1``). ``policy_grad_scale = c`` multiplies
only the gradient that reaches ℓ by c (the loss value and V's gradient are unchanged), so the
paper's scaling can be set explicitly.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def dro_loss(ratings: Tensor, values: Tensor, logps: Tensor, ref_logps: Tensor, tau: float = 1.0,
             policy_grad_scale: float = 1.0) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-example DRO losses ½ (r − V − τ ℓ)² [B] and per-example metrics (Richemond et al. 2024,
    arXiv 2405.19107, the DRO objective; see the module docstring for the gradient scaling
    departure).

    ``ratings`` r, ``values`` V(x) (with grad into the value model), ``logps`` the policy's summed
    response log-probs (with grad) and ``ref_logps`` the reference's (no grad), each ``[B]``.
    Metrics (each [B]): ``value`` V(x), ``log_ratio`` ℓ, ``residual`` r − V − τℓ, ``value_loss``
    ½ (r − V)² (how well V alone fits the ratings, the τ → 0 loss).
    """
    if tau < 0:
        raise ValueError(f"tau must be >= 0, got {tau}")
    ratings = ratings.to(values.dtype)
    log_ratio = logps - ref_logps.to(logps.dtype)
    residual = ratings - values - tau * log_ratio
    losses = 0.5 * residual.pow(2)
    if policy_grad_scale != 1.0:
        policy_part = 0.5 * (ratings - values.detach() - tau * log_ratio).pow(2)
        losses = losses + (policy_grad_scale - 1.0) * (policy_part - policy_part.detach())
    metrics = {"value": values.detach(), "log_ratio": log_ratio.detach(),
               "residual": residual.detach(),
               "value_loss": 0.5 * (ratings - values.detach()).pow(2)}
    return losses, metrics
