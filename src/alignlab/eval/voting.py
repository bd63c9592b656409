"""Accuracy of picking one of n sampled solutions: verifier best-of-n, majority vote, weighted vote.

For one problem with m sampled solutions (final answers, correctness, optional verifier scores and
trace-error flags), each function gives the *expected* accuracy when n of the m solutions are drawn
without replacement, so a curve over n = 1..m needs no resampling of the model:

- :func:`selection_accuracy`: pick the solution a verifier scores highest (best-of-n; Cobbe et al.
  2021, Lightman et al. 2023). Exact, with the subset weights of
  :func:`alignlab.eval.best_of_n.bon_weights` (Gao et al. 2022's unbiased estimator; ties shared).
  Also returns the expected rate of picking a correct answer with a wrong step (a trace error;
  Uesato et al. 2022) so the trace-error rate among correct picks can be reported.
- :func:`pass_at_n`: the oracle — some drawn solution is right: 1 − C(m − c, n) / C(m, n)
  (Chen et al. 2021's unbiased pass@k).
- :func:`vote_accuracy`: majority vote over final answers (self-consistency; Wang et al. 2023), or
  verifier-weighted voting (each answer's votes weighted by the verifier score; Li et al. 2023,
  "Making Large Language Models Better Reasoners with Step-Aware Verifier"). A departure: the
  expected accuracy over size-n subsets has no closed form for voting, so it is estimated from
  ``draws`` random subsets (seeded; exact for n = m, where there is one subset); ties between top
  answers are broken uniformly at random, in expectation (a tie of t answers that includes the right
  one counts 1/t). A solution with no answer casts no vote; a subset without votes scores 0.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Sequence

from alignlab.eval.best_of_n import bon_weights


def pass_at_n(correct: Sequence[bool], n: int) -> float:
    """P(at least one of n solutions drawn without replacement is right)."""
    m, c = len(correct), sum(bool(x) for x in correct)
    if not 1 <= n <= m:
        raise ValueError(f"pass@n: n = {n} must lie in 1..{m}")
    return 1.0 - math.comb(m - c, n) / math.comb(m, n)


def selection_accuracy(scores: Sequence[float], correct: Sequence[bool], n: int,
                       trace_error: Sequence[bool] | None = None) -> tuple[float, float]:
    """``(P(pick is right), P(pick is right with a wrong step))`` for the verifier's best of n."""
    weights = bon_weights(scores, n)
    right = math.fsum(w for w, c in zip(weights, correct) if c)
    traced = 0.0 if trace_error is None else math.fsum(
        w for w, c, t in zip(weights, correct, trace_error) if c and t)
    return right, traced


def _vote_once(answers: Sequence[str | None], right: Sequence[bool], weights: Sequence[float],
               subset: Sequence[int]) -> float:
    tally: dict[str, float] = defaultdict(float)
    is_right: dict[str, bool] = {}
    for i in subset:
        if answers[i] is not None:
            tally[answers[i]] += weights[i]
            is_right[answers[i]] = bool(right[i])
    if not tally:
        return 0.0
    top = max(tally.values())
    winners = [a for a, v in tally.items() if v == top]
    return sum(is_right[a] for a in winners) / len(winners)


def vote_accuracy(answers: Sequence[str | None], correct: Sequence[bool], n: int,
                  weights: Sequence[float] | None = None, draws: int = 256,
                  seed: int = 0) -> float:
    """Expected accuracy of (weighted) majority voting over n of the m solutions (module docstring).
    ``weights`` None is plain majority vote; otherwise each solution votes with its weight."""
    m = len(answers)
    if not 1 <= n <= m:
        raise ValueError(f"vote: n = {n} must lie in 1..{m}")
    w = [1.0] * m if weights is None else [float(x) for x in weights]
    if n == m:
        return _vote_once(answers, correct, w, range(m))
    rng = random.Random(seed * 1_000_003 + n)
    return math.fsum(_vote_once(answers, correct, w, rng.sample(range(m), n))
                     for _ in range(draws)) / draws
