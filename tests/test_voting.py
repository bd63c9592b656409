"""Accuracy-vs-N estimators of verification against hand-derived numbers."""

import itertools
import math

import pytest

from alignlab.eval.voting import pass_at_n, selection_accuracy, vote_accuracy


def test_pass_at_n_by_hand():
    correct = [True, False, False, False]
    assert pass_at_n(correct, 1) == 0.25
    assert pass_at_n(correct, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(4, 2))  # 0.5
    assert pass_at_n(correct, 4) == 1.0
    with pytest.raises(ValueError):
        pass_at_n(correct, 5)


def test_selection_accuracy_by_hand():
    # scores ascending: s1 (right, trace error), s2 (wrong), s0 (right, clean); m = 3
    scores, correct, trace = [0.9, 0.1, 0.5], [True, True, False], [False, True, False]
    # n = 1: mean correctness 2/3; trace share 1/3
    assert selection_accuracy(scores, correct, 1, trace) == pytest.approx((2 / 3, 1 / 3))
    # n = 2: subsets {0,1}->0 right, {0,2}->0 right, {1,2}->2 wrong: 2/3; traces: none picked
    assert selection_accuracy(scores, correct, 2, trace) == pytest.approx((2 / 3, 0.0))
    assert selection_accuracy(scores, correct, 3)[0] == 1.0


def _exact_vote(answers, correct, n, weights=None):
    w = weights or [1.0] * len(answers)
    total = 0.0
    subsets = list(itertools.combinations(range(len(answers)), n))
    for subset in subsets:
        tally = {}
        for i in subset:
            tally[answers[i]] = tally.get(answers[i], 0.0) + w[i]
        top = max(tally.values())
        winners = [a for a, v in tally.items() if v == top]
        right = {answers[i] for i in range(len(answers)) if correct[i]}
        total += sum(a in right for a in winners) / len(winners)
    return total / len(subsets)


def test_majority_vote_by_hand_and_against_enumeration():
    answers = ["3", "3", "5", "7"]
    correct = [True, True, False, False]
    # n = m: "3" has 2 votes, wins
    assert vote_accuracy(answers, correct, 4) == 1.0
    # n = 2 by hand: 6 subsets; {0,1} -> 1; {0,2},{0,3},{1,2},{1,3} tie -> 1/2; {2,3} -> 0: 3/6
    assert _exact_vote(answers, correct, 2) == 0.5
    assert vote_accuracy(answers, correct, 2, draws=4000) == pytest.approx(0.5, abs=0.03)
    # n = 1 is the mean correctness
    assert vote_accuracy(answers, correct, 1, draws=4000) == pytest.approx(0.5, abs=0.03)


def test_weighted_vote_lets_a_confident_minority_win():
    answers, correct = ["3", "5", "5"], [True, False, False]
    assert vote_accuracy(answers, correct, 3) == 0.0
    assert vote_accuracy(answers, correct, 3, weights=[0.9, 0.3, 0.2]) == 1.0
    w = [0.9, 0.3, 0.2]
    assert vote_accuracy(answers, correct, 2, weights=w, draws=3000) == \
        pytest.approx(_exact_vote(answers, correct, 2, w), abs=0.03)


def test_missing_answers_cast_no_vote():
    assert vote_accuracy([None, None], [False, False], 2) == 0.0
    assert vote_accuracy([None, "4"], [False, True], 2) == 1.0
