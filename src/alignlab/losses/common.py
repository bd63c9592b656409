"""Helpers shared by the pairwise loss families."""

from __future__ import annotations

import torch


def default_labels(margin: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """Hard labels (all 1.0: chosen preferred) when ``labels`` is None, else ``labels`` as floats.

    Raises ValueError when a label lies outside [0, 1] or the shapes differ.
    """
    if labels is None:
        return torch.ones_like(margin)
    labels = labels.to(margin.dtype)
    if labels.shape != margin.shape:
        raise ValueError(f"labels shape {tuple(labels.shape)} != pair shape {tuple(margin.shape)}")
    if bool(((labels < 0) | (labels > 1)).any()):
        raise ValueError("preference labels must lie in [0, 1] (probability that chosen is preferred)")
    return labels


def soft_label_logistic(margin: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-pair -[y log sigma(m) + (1-y) log sigma(-m)] (binary cross-entropy on logit m)."""
    return -(labels * torch.nn.functional.logsigmoid(margin)
             + (1 - labels) * torch.nn.functional.logsigmoid(-margin))


def pairwise_accuracy(margin: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-pair accuracy: 1 if the margin's sign agrees with the label's side, 0 if it disagrees.

    The label's side is chosen for y > 0.5 and rejected for y < 0.5. A tied margin (m == 0) or an
    undecided label (y == 0.5) scores 0.5, the expected accuracy of a coin flip.
    """
    side = torch.sign(labels - 0.5)
    agree = torch.sign(margin) * side
    return (agree + 1) / 2


def mix_orientations(forward: torch.Tensor, backward: torch.Tensor,
                     labels: torch.Tensor) -> torch.Tensor:
    """Per-pair ``y * forward + (1 - y) * backward``: a soft label as a mixture of orientations.

    ``forward`` is a loss computed with chosen as the preferred response, ``backward`` the same loss
    with the pair swapped. y = 1 gives ``forward`` exactly, y = 0 gives ``backward``; for the logistic
    loss the mixture is the binary cross-entropy of :func:`soft_label_logistic`. A term whose weight
    is zero contributes exactly 0 even when it is infinite (so a hard label never yields ``0 * inf``).
    """
    zero = torch.zeros((), dtype=forward.dtype, device=forward.device)
    return (torch.where(labels > 0, labels * forward, zero)
            + torch.where(labels < 1, (1 - labels) * backward, zero))


MAX_MEAN_LOGP = -1e-6
"""Upper clamp of the per-token mean log-probability in :func:`log_odds` (P(y|x) <= 1 - 1e-6)."""


def log_odds(mean_logps: torch.Tensor) -> torch.Tensor:
    """``log(p / (1 - p))`` with ``p = exp(mean_logps)`` (ORPO's odds of a sequence, eq. 4).

    Computed as ``mean_logps - log(-expm1(mean_logps))``: ``expm1`` keeps ``1 - p`` accurate as
    ``mean_logps -> 0`` where ``log1p(-exp(x))`` rounds ``exp(x)`` to 1 and returns -inf. The input
    is clamped to at most :data:`MAX_MEAN_LOGP` so a (numerically) certain sequence has a large but
    finite log-odds (about 13.8); beyond the clamp its log-odds gets no gradient.
    """
    x = mean_logps.clamp(max=MAX_MEAN_LOGP)
    return x - torch.log(-torch.expm1(x))


def reward_metrics(chosen_reward, rejected_reward, labels) -> dict:
    """The per-pair ``rewards/*`` metrics every pairwise loss reports (detached): the implicit
    rewards of chosen and rejected, their margin, and whether the margin agrees with the label."""
    margin = (chosen_reward - rejected_reward).detach()
    return {"rewards/chosen": chosen_reward.detach(), "rewards/rejected": rejected_reward.detach(),
            "rewards/margin": margin, "rewards/accuracy": pairwise_accuracy(margin, labels)}
