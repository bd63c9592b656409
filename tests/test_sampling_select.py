"""Best-of-N, rejection-sampling selection, best-vs-worst pairs and RSO acceptance, by hand."""

import pytest

from alignlab.sampling.select import (
    best_index,
    best_worst_pair,
    rso_accept,
    rso_pairs,
    top_k_indices,
)


def test_best_of_n_top_k_and_pairs_by_hand():
    scores = [0.2, 0.9, -1.0, 0.9, 0.5]
    assert best_index(scores) == 1  # the earlier of the two 0.9s
    assert top_k_indices(scores, 3) == [1, 3, 4]
    assert top_k_indices(scores, 3, threshold=0.6) == [1, 3]
    assert top_k_indices(scores, 2, threshold=1.0) == []
    assert best_worst_pair(scores) == (1, 2)
    assert best_worst_pair([0.3, 0.3]) is None
    with pytest.raises(ValueError, match="at least 1"):
        top_k_indices(scores, 0)


def _draws(values):
    it = iter(values)
    return lambda: next(it)


def test_rso_acceptance_follows_algorithm_1_by_hand():
    # scores (1, 0, 2), beta = 1. Pass 1: r_max = 2; acceptance exp(-1) = 0.368, exp(-2) = 0.135, 1.
    # u = 0.5 rejects 0; u = 0.1 accepts 1 (0.1 < 0.135); u = 0.9 accepts 2 (< 1). Pass 2: only 0
    # is left, r_max = 1, acceptance 1: accepted.
    assert rso_accept([1.0, 0.0, 2.0], beta=1.0, num=3, uniform=_draws([0.5, 0.1, 0.9, 0.99])) == \
        [1, 2, 0]
    # num = 1 stops at the first acceptance: u = 0.3 < exp(-1) = 0.368 accepts candidate 0
    assert rso_accept([1.0, 0.0, 2.0], beta=1.0, num=1, uniform=_draws([0.3, 0.9])) == [0]


def test_rso_beta_limits():
    scores = [0.1, 3.0, 1.0, 2.0]
    # beta -> 0: only the current best is ever accepted, so candidates come out best first
    assert rso_accept(scores, beta=1e-6, num=4, seed=3) == [1, 3, 2, 0]
    # beta -> inf: every candidate is accepted in the (shuffled) order of the first pass
    accepted = rso_accept(scores, beta=1e9, num=4, seed=3)
    assert sorted(accepted) == [0, 1, 2, 3]
    firsts = {rso_accept(scores, beta=1e9, num=1, seed=s)[0] for s in range(40)}
    assert firsts == {0, 1, 2, 3}  # any candidate can be drawn first: the SFT distribution
    with pytest.raises(ValueError, match="beta"):
        rso_accept(scores, beta=0.0, num=1)


def test_rso_pairs_first_round_and_tournament_by_hand():
    scores = [0.5, 2.0, 1.0, 1.0, 3.0]
    accepted = [4, 0, 1, 2, 3]  # acceptance order
    # first round: (4, 0) -> 4 beats 0; (1, 2) -> 1 beats 2; 3 is left out
    assert rso_pairs(scores, accepted, "first_round") == ([(4, 0), (1, 2)], 0)
    # tournament: round 1 as above (3 advances unplayed); round 2: (4, 1) -> 4; then (4, 3) -> 4
    assert rso_pairs(scores, accepted, "tournament") == ([(4, 0), (1, 2), (4, 1), (4, 3)], 0)
    # a tie gives no pair and its first player advances
    assert rso_pairs([1.0, 1.0, 0.0], [0, 1, 2], "tournament") == ([(0, 2)], 1)
    with pytest.raises(ValueError, match="ranking"):
        rso_pairs(scores, accepted, "swiss")


def test_replay_subset_keeps_decay_to_the_age_on_average_and_is_seeded():
    from alignlab.sampling.select import replay_subset

    assert replay_subset(10, 1, 1.0, 0) == list(range(10))
    one, two = replay_subset(4000, 1, 0.5, 0), replay_subset(4000, 2, 0.5, 0)
    assert abs(len(one) - 2000) < 150 and abs(len(two) - 1000) < 120  # 0.5 and 0.25 of 4000
    assert replay_subset(4000, 2, 0.5, 0) == two and replay_subset(4000, 2, 0.5, 1) != two
    with pytest.raises(ValueError, match="decay"):
        replay_subset(3, 1, 0.0, 0)
