"""Best-of-N sampling against a proxy reward, scored by a gold reward (reward over-optimisation).

Best-of-N draws N completions from the base policy and keeps the one the proxy reward model scores
highest. Gao et al. (2022), "Scaling Laws for Reward Model Overoptimization", plot the gold reward of
that choice against sqrt(KL(best-of-N ‖ base)); the proxy keeps rising with N while the gold reward
rises, peaks and can fall. This module computes those curves from a fixed pool of m samples per prompt:

- :func:`bon_kl`: the analytic KL of best-of-N, ``log N - (N - 1) / N`` (Stiennon et al. 2020,
  appendix; Gao et al. 2022, section 2). It assumes every completion has a distinct proxy score and
  is an upper bound otherwise (Beirami et al. 2024, "Theoretical guarantees on the best-of-n alignment
  policy"); :func:`empirical_bon_kl` gives the exact KL for the pool's empirical distribution.
- :func:`bon_weights` / :func:`expected_best_of_n`: the unbiased estimator of Gao et al. (appendix,
  "best-of-n"): over all C(m, n) subsets of size n of the m samples, the mean score of each subset's
  proxy-argmax. With samples sorted by proxy ascending, the i-th (1-based) is the argmax of exactly
  C(i - 1, n - 1) subsets, so its weight is C(i - 1, n - 1) / C(m, n).
- :func:`best_of_n_curve`: mean ± standard error over prompts for each N.

Ties (a departure the papers do not need to make: they assume continuous scores). Samples with equal
proxy scores are treated as if ties were broken uniformly at random: each member of a tie group gets
the average of the group's weights. The result does not depend on the order of the samples, and with
every proxy score equal the estimate is the plain mean for every n. The same rule is used by
:func:`empirical_bon_kl`, so identical completions (which always share a score) are one outcome.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from alignlab.eval.stats import mean_se


def _check_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"best-of-n: n must be an integer >= 1, got {n!r}")
    return n


def bon_kl(n: int) -> float:
    """Analytic KL(best-of-n ‖ base) = log n - (n - 1) / n, in nats (Stiennon et al. 2020; Gao et al.
    2022, eq. in section 2). Exact only when the proxy scores are almost surely distinct; an upper
    bound otherwise (see the module docstring)."""
    _check_n(n)
    return math.log(n) - (n - 1) / n


def _tie_groups(proxy: Sequence[float]) -> tuple[list[int], list[tuple[int, int]]]:
    """Indices sorted by proxy ascending (stable), and the ``[start, end)`` spans of equal scores."""
    order = sorted(range(len(proxy)), key=lambda i: proxy[i])
    spans, start = [], 0
    for k in range(1, len(order) + 1):
        if k == len(order) or proxy[order[k]] != proxy[order[start]]:
            spans.append((start, k))
            start = k
    return order, spans


def _check_scores(proxy: Sequence[float], gold: Sequence[float] | None, n: int) -> None:
    m = len(proxy)
    if m == 0:
        raise ValueError("best-of-n: no samples")
    if gold is not None and len(gold) != m:
        raise ValueError(f"best-of-n: {m} proxy scores but {len(gold)} gold scores")
    bad = [i for i, v in enumerate(proxy) if not math.isfinite(float(v))]
    if bad:
        raise ValueError(f"best-of-n: proxy score {bad[0]} is not finite ({proxy[bad[0]]!r})")
    if _check_n(n) > m:
        raise ValueError(f"best-of-n: n = {n} but only {m} samples; need n <= m")


def bon_weights(proxy: Sequence[float], n: int) -> list[float]:
    """Weight of each sample (in input order) in the unbiased best-of-n estimate.

    Sorted by proxy ascending, the i-th sample (1-based) has weight C(i - 1, n - 1) / C(m, n)
    (Gao et al. 2022, appendix); tied samples share their group's mean weight (module docstring).
    Exact integer arithmetic: Python's int division rounds once, so m in the thousands works."""
    _check_scores(proxy, None, n)
    m = len(proxy)
    total = math.comb(m, n)
    order, spans = _tie_groups(proxy)
    weights = [0.0] * m
    for start, end in spans:
        group = sum(math.comb(i, n - 1) for i in range(start, end))  # positions start+1..end
        share = group / (total * (end - start))
        for k in range(start, end):
            weights[order[k]] = share
    return weights


@dataclass(frozen=True)
class BestOfN:
    """Expected gold and proxy score of the best-of-n choice for one prompt."""

    gold: float
    proxy: float


def expected_best_of_n(proxy: Sequence[float], gold: Sequence[float], n: int) -> BestOfN:
    """Unbiased estimate, over all size-n subsets of the m >= n samples, of the gold and proxy score
    of each subset's proxy-argmax (Gao et al. 2022, appendix); ties as in the module docstring."""
    _check_scores(proxy, gold, n)
    weights = bon_weights(proxy, n)
    return BestOfN(gold=math.fsum(w * float(g) for w, g in zip(weights, gold)),
                   proxy=math.fsum(w * float(p) for w, p in zip(weights, proxy)))


def empirical_bon_kl(proxy: Sequence[float], n: int) -> float:
    """Exact KL(best-of-n ‖ base) when the base is the empirical distribution of these samples.

    Outcomes are the groups of equal proxy score, in ascending order, with base mass q_j (their share
    of samples) and cumulative mass F_j. Best-of-n with replacement picks group j with probability
    p_j = F_j^n - F_{j-1}^n, and within a group in proportion to the base, so
    KL = sum_j p_j log(p_j / q_j) (Beirami et al. 2024, exact KL for discrete outcomes). Repeated
    completions make this smaller than :func:`bon_kl`; with m distinct samples it still differs from
    it at large n because the pool is finite (a plug-in estimate, not an unbiased one)."""
    _check_scores(proxy, None, 1)
    _check_n(n)
    m = len(proxy)
    _, spans = _tie_groups(proxy)
    kl, below = 0.0, 0
    for start, end in spans:
        count = end - start
        p = ((below + count) / m) ** n - (below / m) ** n
        if p > 0:
            kl += p * math.log(p * m / count)
        below += count
    return max(kl, 0.0)


def _as_pairs(samples_per_prompt: Iterable) -> list[tuple[list[float], list[float]]]:
    pairs = []
    for index, item in enumerate(samples_per_prompt):
        try:
            proxy, gold = item
        except (TypeError, ValueError):
            raise ValueError(f"best-of-n curve: prompt {index} is not a (proxy, gold) pair") from None
        pairs.append(([float(v) for v in proxy], [float(v) for v in gold]))
    if not pairs:
        raise ValueError("best-of-n curve: no prompts")
    return pairs


def best_of_n_curve(samples_per_prompt: Iterable, ns: Sequence[int]) -> list[dict[str, float]]:
    """One row per n: the best-of-n gold and proxy score, mean ± se over prompts.

    ``samples_per_prompt`` is a sequence of ``(proxy_scores, gold_scores)``, one per prompt, each with
    m >= max(ns) samples (m may differ between prompts). Rows hold ``n``, ``kl`` (:func:`bon_kl`),
    ``sqrt_kl``, ``kl_empirical`` (mean :func:`empirical_bon_kl`), ``gold_mean``, ``gold_se``,
    ``proxy_mean``, ``proxy_se``, and the per-prompt paired change from n = 1, ``gold_gain_*`` and
    ``proxy_gain_*`` (Gao et al. report proxy reward relative to its value at n = 1, since a reward
    model's offset is arbitrary; pairing by prompt removes the prompt-to-prompt spread from the se).
    The se counts prompts as the independent units (both prompt and sampling noise are in it)."""
    pairs = _as_pairs(samples_per_prompt)
    base = [expected_best_of_n(p, g, 1) for p, g in pairs]
    rows = []
    for n in ns:
        est = [expected_best_of_n(p, g, n) for p, g in pairs]
        gold, proxy = mean_se(e.gold for e in est), mean_se(e.proxy for e in est)
        gold_gain = mean_se(e.gold - b.gold for e, b in zip(est, base))
        proxy_gain = mean_se(e.proxy - b.proxy for e, b in zip(est, base))
        kl_emp = mean_se(empirical_bon_kl(p, n) for p, _ in pairs)
        rows.append({"n": n, "kl": bon_kl(n), "sqrt_kl": math.sqrt(bon_kl(n)),
                     "kl_empirical": kl_emp.mean, "gold_mean": gold.mean, "gold_se": gold.se,
                     "proxy_mean": proxy.mean, "proxy_se": proxy.se,
                     "gold_gain_mean": gold_gain.mean, "gold_gain_se": gold_gain.se,
                     "proxy_gain_mean": proxy_gain.mean, "proxy_gain_se": proxy_gain.se,
                     "prompts": len(pairs)})
    return rows
