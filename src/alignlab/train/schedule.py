"""Learning-rate schedules: linear warm-up, then constant, linear decay to 0, or cosine decay to 0."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def lr_factor(step: int, kind: str, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the base learning rate before optimiser step ``step`` (0-based).

    Warm-up rises linearly from 1/warmup to 1 over ``warmup_steps``; afterwards ``constant`` stays at
    1, ``linear`` falls linearly to 0 at ``total_steps`` and ``cosine`` follows half a cosine to 0.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if kind == "linear":
        return 1.0 - progress
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr_schedule {kind!r}; choose constant, linear or cosine")


def make_scheduler(optimizer: torch.optim.Optimizer, kind: str, warmup_ratio: float,
                   total_steps: int) -> LambdaLR:
    """A LambdaLR stepping once per optimiser step; warm-up lasts ceil(warmup_ratio * total)."""
    warmup = math.ceil(warmup_ratio * total_steps)
    lr_factor(0, kind, warmup, total_steps)  # fail early on an unknown kind
    return LambdaLR(optimizer, lambda step: lr_factor(step, kind, warmup, total_steps))
