"""Merging fine-tuned models by their task vectors τ_i = θ_i − θ_base, one tensor at a time.

- :func:`task_arithmetic` (Ilharco et al. 2023, "Editing Models with Task Arithmetic"):
  θ = θ_base + λ Σ_i w_i τ_i.
- :func:`ties` (Yadav et al. 2023, "TIES-Merging", Algorithm 1):
  1. **trim**: keep each τ_i's ``density`` fraction of largest-magnitude entries, zero the rest;
  2. **elect**: the sign of Σ_i w_i τ̂_i per entry;
  3. **disjoint merge**: the mean of the w_i τ̂_i entries whose sign agrees with the elected one
     (zeros do not count);
  then θ = θ_base + λ τ_m.
- :func:`dare` (Yu et al. 2024, "Language Models are Super Mario", DARE): drop each delta entry with
  probability 1 − ``density`` and rescale the survivors by 1/``density``; DARE-TIES applies it in
  place of TIES's trim.

Departures: the trim is per tensor (the paper ranks a task vector's entries globally; per tensor is
what common implementations do and keeps layers with small deltas from being emptied). With
weights w_i the disjoint mean is over the weighted deltas, which is the unweighted paper algorithm
when every w_i = 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Tensor = torch.Tensor


def task_arithmetic(deltas: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """Σ_i w_i τ_i (the caller scales by λ and adds the base)."""
    return sum(w * d for w, d in zip(weights, deltas))


def trim(delta: Tensor, density: float) -> Tensor:
    """``delta`` with all but its ``density`` fraction of largest-magnitude entries set to zero
    (at least one entry kept; ties at the threshold are kept)."""
    if density >= 1.0:
        return delta
    k = max(1, round(density * delta.numel()))
    threshold = delta.abs().flatten().kthvalue(delta.numel() - k + 1).values
    return torch.where(delta.abs() >= threshold, delta, torch.zeros_like(delta))


def elect_and_merge(deltas: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """TIES steps 2–3: elected sign of the weighted sum, mean of the agreeing nonzero entries."""
    stacked = torch.stack([w * d for w, d in zip(weights, deltas)])
    sign = torch.sign(stacked.sum(0))
    agree = (torch.sign(stacked) == sign) & (stacked != 0)
    count = agree.sum(0).clamp(min=1)
    return (stacked * agree).sum(0) / count


def ties(deltas: Sequence[Tensor], weights: Sequence[float], density: float) -> Tensor:
    """TIES-Merging of the deltas (module docstring)."""
    return elect_and_merge([trim(d, density) for d in deltas], weights)


def dare(delta: Tensor, density: float, generator: torch.Generator) -> Tensor:
    """DARE: keep each entry with probability ``density``, rescaled by 1/``density``."""
    if density >= 1.0:
        return delta
    keep = torch.rand(delta.shape, generator=generator) < density
    return torch.where(keep, delta / density, torch.zeros_like(delta))


def dare_ties(deltas: Sequence[Tensor], weights: Sequence[float], density: float,
              generator: torch.Generator) -> Tensor:
    """DARE's random drop and rescale, then TIES's sign election and disjoint merge."""
    return elect_and_merge([dare(d, density, generator) for d in deltas], weights)
