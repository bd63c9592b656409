"""Simulated annotators: Bradley–Terry choices on a gold utility with temperature T.

P(A ≻ B) = σ((u_A − u_B) / T)   (Bradley & Terry, 1952), with the utility

    u = component(task) + length_bias · (number of words)

where ``task`` is ``helpful`` (the helpful component), ``harmless`` (the harmless component) or
``overall`` (gold = helpful + harmless). T is calibrated by bisection so that the expected agreement
with the *gold* preference (the response with the higher gold reward; gold ties left out) is the target
(≈ 0.75, roughly the inter-annotator agreement reported for HH-RLHF crowd labels).

Modes: hard labels (a seeded Bernoulli draw), soft labels (the BT probability itself), binary
judgements (σ(u / T), i.e. a comparison against a zero-utility response) and ranked lists
(Plackett–Luce: scores u/T + Gumbel noise, whose pairwise marginals are exactly the BT probabilities).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from alignlab.gym.gold import GoldResult

TASKS = ("helpful", "harmless", "overall")


def sigmoid(x: float) -> float:
    """Numerically safe logistic function."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def utility(result: GoldResult, response: str, task: str, length_bias: float = 0.0) -> float:
    """The annotator's utility of one scored response for ``task``."""
    if task not in TASKS:
        raise ValueError(f"unknown annotator task {task!r}; choose one of {TASKS}")
    base = {"helpful": result.helpful, "harmless": result.harmless, "overall": result.reward}[task]
    return base + length_bias * len(response.split())


@dataclass(frozen=True)
class Annotator:
    """A Bradley–Terry annotator with temperature ``temperature`` and an optional length bias."""

    temperature: float
    length_bias: float = 0.0

    def prob_first(self, u_a: float, u_b: float) -> float:
        """P(A ≻ B) = σ((u_A − u_B)/T)."""
        return sigmoid((u_a - u_b) / self.temperature)

    def choose_first(self, rng: random.Random, u_a: float, u_b: float) -> bool:
        """A hard label: True when the annotator prefers A (seeded draw)."""
        return rng.random() < self.prob_first(u_a, u_b)

    def judge_desirable(self, rng: random.Random, u: float) -> bool:
        """An unpaired thumbs-up/down: P(desirable) = σ(u/T)."""
        return rng.random() < sigmoid(u / self.temperature)

    def rank_scores(self, rng: random.Random, utilities: Sequence[float]) -> list[float]:
        """Noisy scores for a ranked list: u/T + Gumbel(0, 1) (Plackett–Luce sampling)."""
        return [u / self.temperature - math.log(-math.log(max(rng.random(), 1e-12)))
                for u in utilities]


@dataclass(frozen=True)
class PairUtilities:
    """One comparison: the annotator's utilities and the gold rewards of both responses."""

    u_a: float
    u_b: float
    gold_a: float
    gold_b: float


def expected_agreement(pairs: Sequence[PairUtilities], temperature: float) -> float:
    """Mean probability that a BT annotator at ``temperature`` picks the gold-better response
    (pairs tied on gold are left out)."""
    probs = []
    for p in pairs:
        if p.gold_a == p.gold_b:
            continue
        p_a = sigmoid((p.u_a - p.u_b) / temperature)
        probs.append(p_a if p.gold_a > p.gold_b else 1.0 - p_a)
    if not probs:
        raise ValueError("no comparison with a gold preference; cannot calibrate the annotator")
    return sum(probs) / len(probs)


def calibrate_temperature(pairs: Sequence[PairUtilities], target: float = 0.75,
                          low: float = 1e-3, high: float = 100.0, iters: int = 60) -> float:
    """Bisection (in log T) for the temperature whose expected gold agreement equals ``target``.

    Agreement falls as T grows; if even T = ``low`` cannot reach the target (utilities that disagree
    with gold, e.g. a strong length bias), ``low`` is returned."""
    if expected_agreement(pairs, low) < target:
        return low
    lo, hi = math.log(low), math.log(high)
    for _ in range(iters):
        mid = (lo + hi) / 2
        if expected_agreement(pairs, math.exp(mid)) > target:
            lo = mid
        else:
            hi = mid
    return math.exp((lo + hi) / 2)


def measured_agreement(choices: Sequence[bool], pairs: Sequence[PairUtilities]) -> float:
    """Fraction of sampled choices (True = A picked) that match the gold preference, gold ties left out."""
    hits = [c == (p.gold_a > p.gold_b) for c, p in zip(choices, pairs) if p.gold_a != p.gold_b]
    return sum(hits) / max(len(hits), 1)
