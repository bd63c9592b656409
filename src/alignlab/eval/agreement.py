"""How well a judge's scores agree with a reference score (e.g. the gym's gold reward).

Used by the ``sample`` stage to report, each round, how good the selecting score (a self-rewarding
judge, a reward model, ...) is against every monitor (Yuan et al. 2024, "Self-Rewarding Language
Models", sec. 3.2 / Table 4 measure the judge against human rankings with pairwise accuracy and
Spearman / Kendall correlations; here the reference is any monitor):

- :func:`pair_agreement`: over every pair of samples of one prompt whose reference scores differ,
  whether the judge orders them the same way; a judge tie counts half (so a constant judge scores
  0.5) and is counted apart;
- :func:`pearson` and :func:`spearman` (average ranks for ties) over all scored samples pooled.

Samples the judge could not score (``None``) are left out of everything.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class PairCounts:
    """Pairs compared (reference scores differ, both judged), agreeing, and tied by the judge."""

    compared: int = 0
    agree: int = 0
    judge_ties: int = 0

    def add(self, other: PairCounts) -> None:
        self.compared += other.compared
        self.agree += other.agree
        self.judge_ties += other.judge_ties

    def rates(self) -> dict[str, float | int | None]:
        """``pair_agreement`` (ties half), ``strict_agreement`` (among untied) and counts."""
        untied = self.compared - self.judge_ties
        return {"pairs_compared": self.compared, "judge_ties": self.judge_ties,
                "pair_agreement": (self.agree + 0.5 * self.judge_ties) / self.compared
                if self.compared else None,
                "strict_agreement": self.agree / untied if untied else None}


def pair_agreement(judge: Sequence[float | None], reference: Sequence[float]) -> PairCounts:
    """Counts over the pairs (i < j) of one prompt's samples with ``reference[i] != reference[j]``
    and both judged: agree when the judge orders them as the reference does."""
    counts = PairCounts()
    for i in range(len(judge)):
        for j in range(i + 1, len(judge)):
            if judge[i] is None or judge[j] is None or reference[i] == reference[j]:
                continue
            counts.compared += 1
            if judge[i] == judge[j]:
                counts.judge_ties += 1
            elif (judge[i] > judge[j]) == (reference[i] > reference[j]):
                counts.agree += 1
    return counts


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson's correlation; None with fewer than two points or a constant side."""
    if len(x) != len(y):
        raise ValueError(f"pearson: {len(x)} and {len(y)} values")
    if len(x) < 2:
        return None
    mx, my = math.fsum(x) / len(x), math.fsum(y) / len(y)
    sxy = math.fsum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = math.fsum((a - mx) ** 2 for a in x)
    syy = math.fsum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else None


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, tied values sharing the mean of their ranks."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            ranks[order[k]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation: Pearson's on average ranks."""
    return pearson(average_ranks(x), average_ranks(y))


def judge_agreement(groups: Sequence[tuple[Sequence[float | None], Sequence[float]]]) -> dict:
    """Agreement of a judge with a reference over prompts: ``groups`` holds, per prompt, the judge's
    scores (None: unscored) and the reference's. Pair counts and rates, and the correlations over
    every judged sample pooled."""
    counts = PairCounts()
    xs, ys = [], []
    for judge, reference in groups:
        counts.add(pair_agreement(judge, reference))
        kept = [(j, r) for j, r in zip(judge, reference) if j is not None]
        xs += [j for j, _ in kept]
        ys += [r for _, r in kept]
    return {**counts.rates(), "samples": len(xs), "pearson": pearson(xs, ys),
            "spearman": spearman(xs, ys)}
