"""Preference-model pretraining scoring and binarisation (Askell et al. 2021), by hand."""

from alignlab.data.pmp import binarize, ranked_pairs, vote_score
from alignlab.data.records import Message, PreferencePair


def test_vote_scores_by_hand():
    # round(log2(1 + n)): n=0 -> 0; n=1 -> 1; n=2 -> log2 3 = 1.585 -> 2; n=10 -> log2 11 = 3.46 -> 3
    assert [vote_score(n) for n in (0, 1, 2, 10, 100)] == [0, 1, 2, 3, 7]  # log2 101 = 6.66
    assert vote_score(2, accepted=True) == 3
    assert vote_score(-4) == -1 and vote_score(-1, accepted=True) == 0


def test_ranked_pairs_skip_equal_scores():
    # scores 2, 0, 2, 3: pairs (0,1), (2,1), (3,0), (3,1), (3,2); (0,2) tie skipped
    assert ranked_pairs([2, 0, 2, 3]) == [(0, 1), (3, 0), (2, 1), (3, 1), (3, 2)]
    assert ranked_pairs([1, 1]) == []


def test_binarize_is_good_a_over_bad_a_and_bad_b_over_good_b():
    q = (Message("user", "how?"),)
    assert binarize(q, "use a map", "guess") == [
        PreferencePair(q, "GOOD: use a map", "BAD: use a map"),
        PreferencePair(q, "BAD: guess", "GOOD: guess")]
    assert binarize(q, "a", "b", template="{text}\n[{label}]")[1] == PreferencePair(q, "b\n[BAD]",
                                                                                   "b\n[GOOD]")
