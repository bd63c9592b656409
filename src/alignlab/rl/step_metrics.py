"""The metrics of one optimiser step, over every micro-batch of every process.

A chunk's loss is a mean over its loss units (tokens, sequences or pairs) and the objectives'
other metrics are means over its tokens (pairs for the pair objectives). Summing each metric times
its chunk's weight and dividing by the summed weights, over the chunks and then over the processes,
gives the metric of the whole minibatch, whatever the split: one process with one chunk, or
several processes with several micro-batches each, log the same numbers (up to float summation
order). The value function's explained variance is rebuilt from summed moments
(:func:`alignlab.rl.objectives.explained_variance_sums`).
"""

from __future__ import annotations

import math

import torch

from alignlab.rl.objectives import explained_variance_from_sums
from alignlab.rl.processes import Processes

EXPLAINED_VARIANCE = "value/explained_variance"


class StepMetrics:
    """Weighted metric sums of one optimiser step; :meth:`global_means` makes them global.

    Every process must register the same names (a process without units adds its metrics with
    weight 0), since the sums travel as one tensor."""

    def __init__(self):
        self.totals: dict[str, float] = {}
        self.weights: dict[str, float] = {}
        self.moments: torch.Tensor | None = None

    def add(self, prefix: str, metrics: dict, weight: float) -> None:
        """Add ``metrics`` (names prefixed ``prefix/``) with ``weight``; a non-finite value or a
        zero weight only registers the name."""
        for name, value in metrics.items():
            key, value = f"{prefix}/{name}", float(value)
            self.totals.setdefault(key, 0.0)
            self.weights.setdefault(key, 0.0)
            if weight > 0 and math.isfinite(value):
                self.totals[key] += weight * value
                self.weights[key] += weight

    def add_moments(self, sums: torch.Tensor) -> None:
        """Add a chunk's explained-variance sums (zeros from a process without units)."""
        sums = sums.detach().double().cpu()
        self.moments = sums if self.moments is None else self.moments + sums

    def global_means(self, processes: Processes) -> dict[str, float]:
        """Every metric's weighted mean over all chunks of all processes (names without weight
        left out), plus the explained variance when moments were added."""
        names = sorted(self.totals)
        parts = [torch.tensor([self.totals[n] for n in names] + [self.weights[n] for n in names],
                              dtype=torch.float64)]
        if self.moments is not None:
            parts.append(self.moments)
        summed = processes.sum(torch.cat(parts))
        totals, weights = summed[:len(names)], summed[len(names):2 * len(names)]
        out = {n: float(t / w) for n, t, w in zip(names, totals, weights) if w > 0}
        if self.moments is not None:
            out[EXPLAINED_VARIANCE] = explained_variance_from_sums(summed[2 * len(names):])
        return out
