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
