"""Performance gap recovered and supervisor imitation, by hand."""

import math

import pytest

from alignlab.eval.pgr import bootstrap_pgr, pgr, pgr_over_seeds, weak_error_agreement


def test_pgr_by_hand():
    assert pgr(0.60, 0.70, 0.80) == pytest.approx(0.5)
    assert pgr(0.60, 0.55, 0.80) == pytest.approx(-0.25)
    assert pgr(0.60, 0.90, 0.80) == pytest.approx(1.5)
    assert math.isnan(pgr(0.70, 0.75, 0.70)) and math.isnan(pgr(0.70, 0.75, 0.65))


def test_bootstrap_pgr_point_and_interval():
    # 10 examples: weak right on 5, student on 7, ceiling on 9 -> PGR (0.7 - 0.5) / (0.9 - 0.5) = 0.5
    weak = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    w2s = [1, 1, 1, 1, 1, 1, 1, 0, 0, 0]
    ceiling = [1, 1, 1, 1, 1, 1, 1, 1, 1, 0]
    out = bootstrap_pgr(weak, w2s, ceiling, resamples=500, seed=1)
    assert out["pgr"] == pytest.approx(0.5)
    assert out["low"] < 0.5 < out["high"] and out["resamples"] + out["undefined"] == 500
    # the student equals the ceiling on every example: every defined resample gives exactly 1
    same = bootstrap_pgr(weak, ceiling, ceiling, resamples=200)
    assert same["low"] == same["high"] == 1.0
    # no gap anywhere: undefined, never a number
    flat = bootstrap_pgr(weak, w2s, weak, resamples=50)
    assert math.isnan(flat["pgr"]) and flat["resamples"] == 0 and flat["undefined"] == 50
    with pytest.raises(ValueError, match="equal"):
        bootstrap_pgr(weak, w2s[:3], ceiling)


def test_pgr_over_seeds_by_hand():
    stat = pgr_over_seeds([(0.6, 0.7, 0.8), (0.6, 0.8, 0.8), (0.7, 0.8, 0.7)])
    # PGRs 0.5 and 1.0 (the third seed has no gap): mean 0.75, se = sd / sqrt(2) = 0.25
    assert stat.n == 2 and stat.mean == pytest.approx(0.75) and stat.se == pytest.approx(0.25)


def test_weak_error_agreement_by_hand():
    gold = [1, 0, 1, 0, 1]
    weak = [0, 0, 0, 1, 1]          # wrong on examples 0, 2, 3
    student = [0, 1, 1, 1, 1]       # copies the mistake on 0 and 3, fixes 2
    assert weak_error_agreement(student, weak, gold) == pytest.approx(2 / 3)
    assert math.isnan(weak_error_agreement(gold, gold, gold))
