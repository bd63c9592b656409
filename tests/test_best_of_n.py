"""Best-of-N estimator, KL and curve (alignlab.eval.best_of_n), checked against hand-derived numbers
and a brute-force enumeration of subsets."""

import itertools
import math
import random

import pytest

from alignlab.eval.best_of_n import (
    best_of_n_curve,
    bon_kl,
    bon_weights,
    empirical_bon_kl,
    expected_best_of_n,
)


def test_bon_kl_hand_values():
    assert bon_kl(1) == 0.0
    assert bon_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert bon_kl(4) == pytest.approx(math.log(4) - 0.75)
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        bon_kl(0)


def test_weights_m3_n2():
    # subsets of {a<b<c}: {a,b}->b, {a,c}->c, {b,c}->c  => weights 0, 1/3, 2/3
    assert bon_weights([0.3, 0.1, 0.2], 2) == pytest.approx([2 / 3, 0.0, 1 / 3])


def test_n1_is_plain_mean_and_n_m_is_argmax():
    proxy, gold = [0.5, -1.0, 2.0, 0.1], [1.0, 3.0, -2.0, 0.0]
    one = expected_best_of_n(proxy, gold, 1)
    assert one.gold == pytest.approx(0.5) and one.proxy == pytest.approx(0.4)
    top = expected_best_of_n(proxy, gold, 4)
    assert top.gold == -2.0 and top.proxy == 2.0


def test_hand_example_m3_n2():
    # proxy order: s1 (gold 4) < s2 (gold 1) < s0 (gold 0): gold = 0*4 + 1/3*1 + 2/3*0
    result = expected_best_of_n([3.0, 1.0, 2.0], [0.0, 4.0, 1.0], 2)
    assert result.gold == pytest.approx(1 / 3)
    assert result.proxy == pytest.approx(1 / 3 * 2.0 + 2 / 3 * 3.0)


def brute_force(proxy, gold, n, rng=None):
    """Mean over all subsets of the gold score of the argmax; ties averaged over the tied members."""
    totals = []
    for subset in itertools.combinations(range(len(proxy)), n):
        best = max(proxy[i] for i in subset)
        tied = [gold[i] for i in subset if proxy[i] == best]
        totals.append(sum(tied) / len(tied))
    return sum(totals) / len(totals)


def test_brute_force_random_distinct():
    rng = random.Random(3)
    proxy = [rng.gauss(0, 1) for _ in range(9)]
    gold = [rng.gauss(0, 1) for _ in range(9)]
    for n in range(1, 10):
        assert expected_best_of_n(proxy, gold, n).gold == pytest.approx(brute_force(proxy, gold, n))
        assert expected_best_of_n(proxy, gold, n).proxy == pytest.approx(brute_force(proxy, proxy, n))


def test_ties_equal_random_tie_breaking():
    # with ties, averaging over tied argmaxes within a subset equals sharing the group's weight
    rng = random.Random(5)
    proxy = [float(rng.randint(0, 3)) for _ in range(10)]
    gold = [rng.gauss(0, 1) for _ in range(10)]
    for n in range(1, 11):
        assert expected_best_of_n(proxy, gold, n).gold == pytest.approx(brute_force(proxy, gold, n))


def test_all_tied_gives_plain_mean_and_order_free():
    gold = [1.0, 2.0, 6.0]
    for n in (1, 2, 3):
        assert expected_best_of_n([0.0, 0.0, 0.0], gold, n).gold == pytest.approx(3.0)
    a = expected_best_of_n([1.0, 1.0, 0.0], [5.0, 1.0, 9.0], 2)
    b = expected_best_of_n([1.0, 0.0, 1.0], [1.0, 9.0, 5.0], 2)
    assert a == b


def test_large_pool_weights_sum_to_one():
    proxy = [float(i) for i in range(256)]
    for n in (1, 2, 64, 128, 255, 256):
        w = bon_weights(proxy, n)
        assert math.fsum(w) == pytest.approx(1.0)
        assert all(x >= 0 for x in w)
    assert bon_weights(proxy, 256)[-1] == 1.0
    # n = 2: weight of the top sample is C(255, 1) / C(256, 2) = 2 / 256
    assert bon_weights(proxy, 2)[-1] == pytest.approx(2 / 256)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="only 2 samples"):
        expected_best_of_n([1.0, 2.0], [0.0, 0.0], 3)
    with pytest.raises(ValueError, match="2 proxy scores but 1 gold"):
        expected_best_of_n([1.0, 2.0], [0.0], 1)
    with pytest.raises(ValueError, match="proxy score 1 is not finite"):
        bon_weights([1.0, float("nan")], 1)
    with pytest.raises(ValueError, match="prompt 0 is not a"):
        best_of_n_curve([[1.0, 2.0, 3.0]], [1])


def test_empirical_kl():
    assert empirical_bon_kl([3.0, 1.0, 2.0], 1) == 0.0
    # two distinct outcomes, q = 1/2 each, n = 2: p = (1/4, 3/4)
    expected = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert empirical_bon_kl([0.0, 1.0], 2) == pytest.approx(expected)
    # all tied: best-of-n is the base distribution
    assert empirical_bon_kl([2.0] * 5, 4) == 0.0
    # many distinct samples: close to the analytic value
    assert empirical_bon_kl([float(i) for i in range(20000)], 8) == pytest.approx(bon_kl(8), abs=1e-3)


def test_curve_rows_mean_and_se():
    prompts = [([0.0, 1.0], [1.0, 3.0]), ([1.0, 0.0], [0.0, 2.0])]
    rows = best_of_n_curve(prompts, [1, 2])
    assert [r["n"] for r in rows] == [1, 2]
    assert rows[0]["gold_mean"] == pytest.approx(1.5) and rows[0]["kl"] == 0.0
    # n = 2 picks gold 3 and gold 0: mean 1.5, se = std([3, 0]) / sqrt(2) = 1.5
    assert rows[1]["gold_mean"] == pytest.approx(1.5)
    assert rows[1]["gold_se"] == pytest.approx(1.5)
    assert rows[1]["proxy_mean"] == pytest.approx(1.0) and rows[1]["proxy_se"] == 0.0
    assert rows[1]["proxy_gain_mean"] == pytest.approx(0.5)
    assert rows[1]["gold_gain_mean"] == pytest.approx(0.0)
    assert rows[1]["gold_gain_se"] == pytest.approx(1.0)  # gains +1 and -1
    assert rows[1]["sqrt_kl"] == pytest.approx(math.sqrt(math.log(2) - 0.5))
