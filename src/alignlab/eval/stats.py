"""Means with standard errors, for every number an evaluation reports.

Conventions (used by every metric in :mod:`alignlab.eval`):

- ``se`` is the standard error of the mean: the sample standard deviation (``n - 1`` in the variance,
  Bessel's correction) divided by ``sqrt(n)``.
- ``n == 1``: the mean is the value and ``se`` is ``nan`` (the spread of one value is unknown; we do not
  pretend it is 0). ``n == 0``: mean and se are both ``nan``. ``nan`` is written to JSON as ``null``.
- A proportion (:func:`rate`) uses the same formula on 0/1 values, i.e. ``sqrt(p(1-p)/(n-1))``, not the
  ``n`` in the denominator of the textbook binomial estimate; the two agree for large ``n``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stat:
    """A mean with its standard error over ``n`` independent values."""

    mean: float
    se: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        """``{"mean", "se", "n"}`` with ``nan`` written as ``None`` (valid JSON ``null``)."""
        return {"mean": _json_float(self.mean), "se": _json_float(self.se), "n": int(self.n)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Stat:
        """Inverse of :meth:`to_dict` (``None`` becomes ``nan``)."""
        try:
            return cls(_from_json(data["mean"]), _from_json(data["se"]), int(data["n"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a metric dict {{'mean','se','n'}}: {dict(data)!r} ({exc})") from None

    def __str__(self) -> str:
        return format_stat(self)


def _json_float(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _from_json(value: Any) -> float:
    return math.nan if value is None else float(value)


def format_stat(stat: Stat, digits: int = 3) -> str:
    """``"0.512 ± 0.031"``; a missing se prints as ``"± n/a"`` and an empty stat as ``"n/a"``."""
    if stat.n == 0 or math.isnan(stat.mean):
        return "n/a"
    se = "n/a" if math.isnan(stat.se) else f"{stat.se:.{digits}f}"
    return f"{stat.mean:.{digits}f} ± {se}"


def mean_se(values: Iterable[float]) -> Stat:
    """Mean and standard error (sample std with ``n - 1``, over ``sqrt(n)``) of ``values``."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        return Stat(math.nan, math.nan, 0)
    mean = math.fsum(xs) / n
    if n == 1:
        return Stat(mean, math.nan, 1)
    var = math.fsum((x - mean) ** 2 for x in xs) / (n - 1)
    return Stat(mean, math.sqrt(var / n), n)


def rate(flags: Iterable[bool]) -> Stat:
    """Proportion of true ``flags`` with its standard error (see the module notes)."""
    return mean_se(1.0 if bool(f) else 0.0 for f in flags)


def paired_difference(a: Iterable[float], b: Iterable[float]) -> Stat:
    """Mean and se of the per-item differences ``a_i - b_i``.

    Use it to compare two models on the *same* prompts: the prompt-to-prompt variation that both share
    cancels, so the se is usually much smaller than combining two independent standard errors.
    """
    xs, ys = list(a), list(b)
    if len(xs) != len(ys):
        raise ValueError(f"paired_difference: {len(xs)} values vs {len(ys)}; pair them per prompt")
    return mean_se(x - y for x, y in zip(xs, ys))


def z_score(stat_a: Stat, stat_b: Stat) -> float:
    """``(a.mean - b.mean) / sqrt(a.se² + b.se²)``: the difference in standard errors.

    Assumes the two estimates are independent (different prompts or samples). For two models scored on
    the same prompts prefer ``d = paired_difference(a, b)`` and ``d.mean / d.se``.
    """
    se = math.sqrt(stat_a.se**2 + stat_b.se**2)
    diff = stat_a.mean - stat_b.mean
    if math.isnan(se) or se == 0.0:
        return math.nan if math.isnan(se) or diff == 0.0 else math.copysign(math.inf, diff)
    return diff / se
