"""Measurements over red-teaming attempts: attack success rate, its confidence intervals, diversity.

An *attempt* is one JSONL row (a dict) with at least ``attack`` (the attack prompt: the last
user turn), ``method`` (``"file"``, ``"zero_shot"``, ``"few_shot"``, ``"supervised"``, ``"rl"``,
...), ``category`` (str or None), ``target``, ``reply``, ``verdict`` and ``harm_score``.
``verdict`` is the judge's call: ``True`` = the attack succeeded (the reply is harmful),
``False`` = it did not, ``None`` = the judge could not judge. Unjudged attempts are left out of
every rate and counted separately. ``harm_score`` is the judge's graded score (higher = more
harmful) or None.

The attack success rate (ASR) is the fraction of judged attempts whose verdict is True, as in
Perez et al. 2022 ("Red Teaming Language Models with Language Models") and Ganguli et al. 2022
("Red Teaming Language Models to Reduce Harms"). Its standard error follows
:func:`alignlab.eval.stats.rate` (``n - 1`` in the variance). Two intervals are given: the Wilson
score interval (closed form, sensible at 0/n and n/n) and a percentile bootstrap. Undefined
numbers are ``nan`` for rates and ``None`` for diversity (JSON ``null`` either way, see
:func:`as_json`).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from alignlab.eval.stats import rate

Row = Mapping[str, Any]
GROUP_KEYS = ("target", "method", "category")
PAIR_KEYS = ("attack", "method", "category")


# --------------------------------------------------------------------------- verdicts and rates


def parse_verdict(value: Any) -> bool | None:
    """A judge verdict as ``True``/``False``/``None`` (unjudged); 1 and 0 are accepted as
    True/False, anything else raises ``ValueError``."""
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    raise ValueError(f"verdict must be True, False or None (or 1/0), got {value!r}")


@dataclass(frozen=True)
class ASR:
    """Attack success rate over the judged attempts.

    ``asr = successes / n`` (``nan`` when ``n == 0``), ``se`` as in
    :func:`alignlab.eval.stats.rate`, ``unjudged`` = attempts whose verdict was None (not in
    ``n``)."""

    asr: float
    successes: int
    n: int
    unjudged: int
    se: float

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (``nan`` as ``None``)."""
        return {"asr": _num(self.asr), "successes": self.successes, "n": self.n,
                "unjudged": self.unjudged, "se": _num(self.se)}


def attack_success_rate(verdicts: Iterable[Any]) -> ASR:
    """ASR = mean of the judged verdicts (Perez et al. 2022; Ganguli et al. 2022).

    ``verdicts``: True (attack succeeded), False, or None (unjudged: excluded from the rate and
    counted in ``unjudged``). The mean and se come from :func:`alignlab.eval.stats.rate`."""
    judged: list[bool] = []
    unjudged = 0
    for value in verdicts:
        v = parse_verdict(value)
        if v is None:
            unjudged += 1
        else:
            judged.append(v)
    stat = rate(judged)
    return ASR(stat.mean, sum(judged), stat.n, unjudged, stat.se)


def _z(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    return NormalDist().inv_cdf(0.5 + level / 2)


def wilson_ci(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927).

    With ``p = successes / n`` and ``z`` the two-sided normal quantile for ``level``::

        centre = (p + z²/(2n)) / (1 + z²/n)
        half   = z / (1 + z²/n) * sqrt(p(1 - p)/n + z²/(4n²))

    returns ``(centre - half, centre + half)``, set to exactly 0 / 1 at ``successes`` 0 / n (where
    the formula gives them up to round-off). Unlike the bootstrap it does not collapse at 0/n or n/n
    (0/10 gives an upper bound z²/(n + z²) > 0). ``n == 0``: ``(nan, nan)``."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"wilson_ci: need 0 <= successes <= n, got {successes}/{n}")
    if n == 0:
        return (math.nan, math.nan)
    z = _z(level)
    p = successes / n
    z2n = z * z / n
    centre = (p + z2n / 2) / (1 + z2n)
    half = z / (1 + z2n) * math.sqrt(p * (1 - p) / n + z2n / (4 * n))
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends: no round-off at 0/n, n/n
    high = 1.0 if successes == n else min(1.0, centre + half)
    return (low, high)


def bootstrap_ci(flags: Iterable[Any], level: float = 0.95, draws: int = 2000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of 0/1 ``flags`` (Efron & Tibshirani 1993, ch. 13).

    Each bootstrap resample draws ``n`` flags with replacement; its mean is the statistic, and the
    interval is the ``(1-level)/2`` and ``(1+level)/2`` percentiles (linear interpolation, as
    ``numpy.quantile``) of the ``draws`` resampled means. Departure, for speed only: for 0/1
    flags the number of ones in such a resample is exactly Binomial(n, k/n), so it is drawn
    directly (O(draws) instead of O(draws · n)) from ``numpy.random.default_rng(seed)``; same
    seed → same CI.

    Degenerate cases, handled explicitly: ``n == 0`` → ``(nan, nan)``; all 0 → ``(0.0, 0.0)``;
    all 1 → ``(1.0, 1.0)`` (every resample equals the sample: the percentile bootstrap has no
    width there, which is why the report shows the Wilson interval). ``None`` flags (unjudged)
    are skipped."""
    values = [v for v in (parse_verdict(f) for f in flags) if v is not None]
    _z(level)
    if draws < 1:
        raise ValueError(f"bootstrap_ci: draws must be >= 1, got {draws}")
    n, k = len(values), sum(values)
    if n == 0:
        return (math.nan, math.nan)
    if k == 0:
        return (0.0, 0.0)
    if k == n:
        return (1.0, 1.0)
    means = np.random.default_rng(seed).binomial(n, k / n, size=draws) / n
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return (float(low), float(high))


def grouped_asr(rows: Iterable[Row], keys: Sequence[str] = GROUP_KEYS, level: float = 0.95,
                draws: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    """ASR per group of rows sharing the values of ``keys`` (first-seen order of groups).

    Each entry: the key values, then :meth:`ASR.to_dict` (``asr``, ``successes``, ``n``,
    ``unjudged``, ``se``), ``wilson`` ``[low, high]`` (:func:`wilson_ci`) and ``bootstrap``
    ``[low, high]`` (:func:`bootstrap_ci`, same ``seed`` for every group)."""
    groups: dict[tuple, list[Any]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k) for k in keys), []).append(row.get("verdict"))
    out = []
    for values, verdicts in groups.items():
        entry: dict[str, Any] = dict(zip(keys, values))
        entry.update(rate_with_cis(verdicts, level=level, draws=draws, seed=seed))
        out.append(entry)
    return out


def rate_with_cis(verdicts: Iterable[Any], level: float = 0.95, draws: int = 2000,
                  seed: int = 0) -> dict[str, Any]:
    """:func:`attack_success_rate` as a dict plus its ``wilson`` and ``bootstrap`` intervals."""
    verdicts = list(verdicts)
    asr = attack_success_rate(verdicts)
    out = asr.to_dict()
    out["wilson"] = [_num(x) for x in wilson_ci(asr.successes, asr.n, level)]
    out["bootstrap"] = [_num(x) for x in bootstrap_ci(verdicts, level, draws, seed)]
    return out


# --------------------------------------------------------------------------- diversity


def tokens(text: str) -> list[str]:
    """Lower-cased whitespace tokens, the tokenisation of :func:`distinct_n` and
    :func:`self_bleu`."""
    return text.lower().split()


def _ngrams(toks: Sequence[str], n: int) -> Counter:
    return Counter(tuple(toks[i:i + n]) for i in range(len(toks) - n + 1))


def distinct_n(texts: Iterable[str], n: int) -> float | None:
    """Distinct-n (Li et al. 2016, "A Diversity-Promoting Objective Function for Neural
    Conversation Models"): unique n-grams / total n-grams, pooled over the whole set.

    n-grams do not cross text boundaries; tokens from :func:`tokens`. ``None`` when the set has no
    n-grams at all (e.g. every text is shorter than ``n``)."""
    if n < 1:
        raise ValueError(f"distinct_n: n must be >= 1, got {n}")
    pooled: Counter = Counter()
    for text in texts:
        pooled.update(_ngrams(tokens(text), n))
    total = sum(pooled.values())
    return len(pooled) / total if total else None


def bleu(hypothesis: str, references: Sequence[str], max_n: int = 4) -> float:
    """Sentence BLEU (Papineni et al. 2002) of ``hypothesis`` against ``references``.

    - modified n-gram precision ``p_n``: each hypothesis n-gram count is clipped at its largest
      count in any single reference; ``p_1 = clipped / total`` (unsmoothed);
    - for ``n > 1``, add-one smoothing ``p_n = (clipped + 1) / (total + 1)`` (Lin & Och 2004,
      "ORANGE", the "BLEU+1" smoothing). So a hypothesis shorter than ``n`` tokens gets ``p_n = 1``;
    - score ``BP · exp(mean_n log p_n)`` with uniform weights over ``1..max_n``;
    - brevity penalty ``BP = 1`` if ``c > r`` else ``exp(1 - r/c)``, ``c`` = hypothesis length,
      ``r`` = the reference length closest to ``c`` (the shorter one on a tie).

    An empty hypothesis, no references, or ``p_1 = 0`` (no shared unigram) give exactly 0.0."""
    if max_n < 1:
        raise ValueError(f"bleu: max_n must be >= 1, got {max_n}")
    hyp = tokens(hypothesis)
    refs = [tokens(r) for r in references]
    return _bleu_tokens(hyp, refs, max_n)


def _bleu_tokens(hyp: list[str], refs: list[list[str]], max_n: int,
                 ref_counts: list[list[Counter]] | None = None) -> float:
    if not hyp or not refs:
        return 0.0
    log_sum = 0.0
    for n in range(1, max_n + 1):
        counts = _ngrams(hyp, n)
        total = sum(counts.values())
        rc = [c[n - 1] for c in ref_counts] if ref_counts else [_ngrams(r, n) for r in refs]
        clipped = sum(min(cnt, max(r.get(g, 0) for r in rc)) for g, cnt in counts.items())
        if n == 1:
            if clipped == 0:
                return 0.0
            log_sum += math.log(clipped / total)
        else:
            log_sum += math.log((clipped + 1) / (total + 1))
    c = len(hyp)
    r = min((len(ref) for ref in refs), key=lambda length: (abs(length - c), length))
    bp = 1.0 if c > r else math.exp(1 - r / c)
    return bp * math.exp(log_sum / max_n)


def self_bleu(texts: Sequence[str], max_n: int = 4, sample: int | None = None,
              seed: int = 0) -> float | None:
    """Self-BLEU (Zhu et al. 2018, "Texygen"): mean over texts of the BLEU of each text against all
    the *other* texts as references (:func:`bleu`). Higher = less diverse; 1.0 for identical texts.

    ``sample``: when the set is larger, score a seeded subset of ``sample`` texts
    (``random.Random(seed).sample``) against each other, so the O(N²) cost is capped (a
    departure from Texygen, which uses the whole set as references). ``None`` for fewer than 2
    texts."""
    texts = list(texts)
    if sample is not None:
        if sample < 2:
            raise ValueError(f"self_bleu: sample must be >= 2, got {sample}")
        if len(texts) > sample:
            texts = random.Random(seed).sample(texts, sample)
    if len(texts) < 2:
        return None
    toks = [tokens(t) for t in texts]
    counts = [[_ngrams(t, n) for n in range(1, max_n + 1)] for t in toks]
    scores = []
    for i, hyp in enumerate(toks):
        others = [j for j in range(len(toks)) if j != i]
        scores.append(_bleu_tokens(hyp, [toks[j] for j in others], max_n,
                                   [counts[j] for j in others]))
    return math.fsum(scores) / len(scores)


# ------------------------------------------------------------------- examples and comparisons


def most_damaging(rows: Iterable[Row], k: int) -> list[Row]:
    """The ``k`` successful attempts (``verdict`` True) with the highest ``harm_score``.

    Ties keep the input order (stable sort); successful attempts without a harm score rank after
    every scored one, in input order."""
    hits = [r for r in rows if parse_verdict(r.get("verdict")) is True]
    ranked = sorted(hits, key=lambda r: (r.get("harm_score") is None,
                                         -float(r["harm_score"] or 0.0)))
    return ranked[:max(0, k)]


def two_proportion_z(x_a: int, n_a: int, x_b: int, n_b: int) -> tuple[float, float]:
    """Pooled two-proportion z-test of ``x_b/n_b`` against ``x_a/n_a``: returns ``(z, p)``.

    ``p̂ = (x_a + x_b) / (n_a + n_b)``, ``se = sqrt(p̂(1 - p̂)(1/n_a + 1/n_b))``,
    ``z = (x_b/n_b - x_a/n_a) / se``, two-sided ``p = erfc(|z| / √2)``. When ``se == 0`` (both runs
    all 0 or all 1) the rates are equal: ``z = 0, p = 1``. Either ``n == 0``: ``(nan, nan)``.
    (:func:`alignlab.eval.stats.z_score` is the unpooled version on two ``Stat``s, not this
    test.)"""
    if n_a == 0 or n_b == 0:
        return (math.nan, math.nan)
    pooled = (x_a + x_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se == 0.0:
        return (0.0, 1.0)
    z = (x_b / n_b - x_a / n_a) / se
    return (z, math.erfc(abs(z) / math.sqrt(2)))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar test (McNemar 1947) on the discordant pair counts ``b`` and ``c``.

    Under the null each discordant pair is equally likely to go either way, so ``min(b, c)`` is
    Binomial(b + c, 1/2): ``p = min(1, 2 · Σ_{i ≤ min(b,c)} C(b+c, i) / 2^(b+c))`` (computed with
    ``math.comb``). No discordant pairs: ``p = 1``. E.g. ``b=5, c=0`` → ``2 · 0.5^5 = 0.0625``."""
    if b < 0 or c < 0:
        raise ValueError(f"mcnemar_exact: counts must be >= 0, got {b}, {c}")
    m = b + c
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**m)


def _pairs(rows_a: Sequence[Row], rows_b: Sequence[Row]) -> list[tuple[bool, bool]]:
    """Judged (a, b) verdict pairs on the same ``attack`` + ``method`` + ``category``; repeated keys
    are paired by occurrence order (i-th in a with i-th in b)."""
    def keyed(rows: Sequence[Row]) -> dict[tuple, list[bool | None]]:
        out: dict[tuple, list[bool | None]] = {}
        for r in rows:
            key = tuple(r.get(k) for k in PAIR_KEYS)
            out.setdefault(key, []).append(parse_verdict(r.get("verdict")))
        return out

    a, b = keyed(rows_a), keyed(rows_b)
    pairs = []
    for key, va in a.items():
        for x, y in zip(va, b.get(key, [])):
            if x is not None and y is not None:
                pairs.append((x, y))
    return pairs


def _compare(rows_a: Sequence[Row], rows_b: Sequence[Row]) -> dict[str, Any]:
    a = attack_success_rate(r.get("verdict") for r in rows_a)
    b = attack_success_rate(r.get("verdict") for r in rows_b)
    z, p_z = two_proportion_z(a.successes, a.n, b.successes, b.n)
    out: dict[str, Any] = {"a": a.to_dict(), "b": b.to_dict(), "diff": _num(b.asr - a.asr),
                           "z": _num(z), "p_z": _num(p_z), "test": "two-proportion z (pooled)"}
    pairs = _pairs(rows_a, rows_b)
    out["n_pairs"] = len(pairs)
    out["paired"] = None
    if pairs:
        only_a = sum(1 for x, y in pairs if x and not y)
        only_b = sum(1 for x, y in pairs if y and not x)
        out["paired"] = {"only_a": only_a, "only_b": only_b,
                         "diff": (only_b - only_a) / len(pairs),
                         "p_mcnemar": mcnemar_exact(only_a, only_b)}
        out["test"] = "exact McNemar (paired)"
    return out


def compare_runs(rows_a: Sequence[Row], rows_b: Sequence[Row],
                 group_key: str | None = None) -> dict[str, Any]:
    """Compare two red-teaming runs: ASR difference ``b − a`` and its significance.

    Always: each run's :class:`ASR`, ``diff`` (b − a), and the pooled two-proportion z-test
    (:func:`two_proportion_z`, ``z`` and ``p_z``), which treats the runs as independent samples.
    When the runs attacked the same attack texts (rows matched on ``attack`` + ``method`` +
    ``category``, both judged), ``paired`` holds the discordant counts ``only_a`` (succeeded in a
    only), ``only_b``, the paired difference and the exact McNemar p-value (:func:`mcnemar_exact`);
    ``test`` names the test to read: ``"exact McNemar (paired)"`` when any pair matched, else
    ``"two-proportion z (pooled)"``. With ``group_key`` (e.g. ``"category"``), ``groups`` repeats
    the comparison per value of that key (first-seen order over a then b)."""
    rows_a, rows_b = list(rows_a), list(rows_b)
    out = _compare(rows_a, rows_b)
    if group_key is not None:
        values: list[Any] = []
        for r in rows_a + rows_b:
            if r.get(group_key) not in values:
                values.append(r.get(group_key))
        out["groups"] = [
            {group_key: v, **_compare([r for r in rows_a if r.get(group_key) == v],
                                      [r for r in rows_b if r.get(group_key) == v])}
            for v in values]
    return out


# --------------------------------------------------------------------------- JSON


def _num(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def as_json(value: Any) -> Any:
    """``value`` with every ``nan``/``inf`` float replaced by ``None`` (strict JSON)."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, Mapping):
        return {k: as_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_json(v) for v in value]
    return value
