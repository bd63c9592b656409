"""Performance gap recovered (PGR) and how much a weak-to-strong student imitates its supervisor.

Burns et al. 2023 ("Weak-to-Strong Generalization"): with the weak supervisor's test
performance P_weak, the student trained on weak labels P_w2s and the strong ceiling trained on gold
labels P_ceiling,

    PGR = (P_w2s - P_weak) / (P_ceiling - P_weak)

(1: the student recovers the whole gap; 0: it is no better than its supervisor). It is undefined when
the ceiling does not beat the weak model, and is then reported as NaN, never as a number.

- :func:`pgr`: the point estimate from accuracies.
- :func:`bootstrap_pgr`: a percentile bootstrap over test examples (the three models' per-example
  correctness resampled *together*, so their correlation is kept); resamples where the ceiling does
  not beat the weak model are counted and left out.
- :func:`pgr_over_seeds`: mean ± standard error of per-seed PGR when several seeds are run.
- :func:`weak_error_agreement`: among test examples the weak supervisor gets wrong, the share where
  the student gives the supervisor's (wrong) answer — how much it imitates the mistakes (Burns et al.
  study student-supervisor agreement as a measure of imitation).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from alignlab.eval.stats import Stat, mean_se


def pgr(weak: float, w2s: float, ceiling: float) -> float:
    """``(w2s - weak) / (ceiling - weak)``; NaN when the ceiling does not beat the weak model."""
    gap = ceiling - weak
    return (w2s - weak) / gap if gap > 0 else float("nan")


def _mean(values: Sequence[float], idx: Sequence[int]) -> float:
    return math.fsum(values[i] for i in idx) / len(idx)


def bootstrap_pgr(weak: Sequence[float], w2s: Sequence[float], ceiling: Sequence[float],
                  resamples: int = 2000, seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """PGR on the test set with a percentile bootstrap CI over examples.

    ``weak``, ``w2s``, ``ceiling``: per-example scores on the same test examples (1/0 correctness,
    or any per-example metric whose mean is the performance). Returns ``pgr``, ``low``, ``high``,
    ``resamples`` used and ``undefined`` (resamples without a gap)."""
    n = len(weak)
    if n == 0 or len(w2s) != n or len(ceiling) != n:
        raise ValueError(f"bootstrap_pgr: need equal, non-empty per-example lists, got {len(weak)}, "
                         f"{len(w2s)}, {len(ceiling)}")
    everything = range(n)
    point = pgr(_mean(weak, everything), _mean(w2s, everything), _mean(ceiling, everything))
    rng = random.Random(seed)
    values, undefined = [], 0
    for _ in range(resamples):
        idx = [rng.randrange(n) for _ in everything]
        value = pgr(_mean(weak, idx), _mean(w2s, idx), _mean(ceiling, idx))
        if math.isnan(value):
            undefined += 1
        else:
            values.append(value)
    values.sort()
    if not values:
        return {"pgr": point, "low": float("nan"), "high": float("nan"), "resamples": 0,
                "undefined": undefined}
    tail = (1 - level) / 2
    return {"pgr": point, "low": _percentile(values, tail), "high": _percentile(values, 1 - tail),
            "resamples": len(values), "undefined": undefined}


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile of already sorted values."""
    position = q * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (position - low) * (sorted_values[high] - sorted_values[low])


def pgr_over_seeds(runs: Sequence[tuple[float, float, float]]) -> Stat:
    """Mean ± se of PGR over seeds, each run ``(weak, w2s, ceiling)``; seeds without a gap are left
    out (``n`` counts the seeds used)."""
    values = [pgr(*run) for run in runs]
    return mean_se(v for v in values if not math.isnan(v))


def weak_error_agreement(student: Sequence, weak: Sequence, gold: Sequence) -> float:
    """Among examples where ``weak != gold``, the share where ``student == weak``; NaN when the
    supervisor makes no mistake."""
    if not len(student) == len(weak) == len(gold):
        raise ValueError("weak_error_agreement: student, weak and gold must have equal lengths")
    mistakes = [(s, w) for s, w, g in zip(student, weak, gold) if w != g]
    return sum(s == w for s, w in mistakes) / len(mistakes) if mistakes else float("nan")
