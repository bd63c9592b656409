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


def _se_file(tmp_path, rows):
    import json

    path = tmp_path / "se.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_stackexchange_reader_scores_votes_by_hand(tmp_path):
    from alignlab.config import DataSettings
    from alignlab.data.loading import load_records

    row = {"question": "How do I sort a list?", "answers": [
        {"text": "zero", "upvotes": 0}, {"text": "three", "upvotes": 3},
        {"text": "down", "upvotes": -2}, {"text": "seven", "upvotes": 7, "accepted": True}]}
    single = {"question": "Lonely?", "answers": [{"text": "yes", "pm_score": 4}]}
    pm = {"question": [{"role": "user", "content": "Q2"}],
          "answers": [{"text": "a", "pm_score": 2}, {"text": "b", "pm_score": 2, "selected": True}]}
    loaded = load_records(DataSettings(path=str(_se_file(tmp_path, [row, single, pm]))), "ranked")
    ranked = loaded.records[0]
    # 7 votes + accepted: round(log2 8) + 1 = 4; 3: round(log2 4) = 2; 0: 0; -2: -1
    assert ranked.responses == ("seven", "three", "zero", "down")
    assert ranked.scores == (4.0, 2.0, 0.0, -1.0)
    assert ranked.prompt == (Message("user", "How do I sort a list?"),)
    assert loaded.records[1].scores == (2.0, 2.0) and len(loaded.records) == 2
    assert loaded.notes["stackexchange_single_answer"] == 1
    pairs = load_records(DataSettings(path=str(_se_file(tmp_path, [row, pm]))), "pair")
    assert len(pairs.records) == 6 and pairs.notes["ranked_tie_skipped"] == 1


def test_stackexchange_reader_errors_name_line_and_field(tmp_path):
    import pytest

    from alignlab.config import DataSettings
    from alignlab.data.loading import load_records

    ok = {"question": "q", "answers": [{"text": "a", "upvotes": 1}, {"text": "b", "upvotes": 2}]}
    bad = {"question": "q", "answers": [{"text": "a", "upvotes": 1}, {"text": "b", "votes": 2}]}
    with pytest.raises(Exception, match=r"se\.jsonl:2: .*answers\[1\]\.upvotes"):
        load_records(DataSettings(path=str(_se_file(tmp_path, [ok, bad]))), "pair")
    wrong = {"question": "q", "answers": [{"text": "a", "upvotes": "many"}, {"text": "b",
                                                                             "upvotes": 1}]}
    with pytest.raises(Exception, match=r"answers\[0\]\.upvotes.*expected"):
        load_records(DataSettings(path=str(_se_file(tmp_path, [wrong]))), "pair")
    skipped = load_records(DataSettings(path=str(_se_file(tmp_path, [ok, bad, ok])),
                                        on_bad_record="skip"), "pair")
    assert len(skipped.records) == 2 and skipped.bad.skipped == 1


def test_gym_forum_votes_track_gold_and_read_as_stackexchange(tmp_path):
    from alignlab.config import DataSettings
    from alignlab.data.loading import load_records
    from alignlab.gym.forum import write_forum
    from alignlab.gym.world import generate_world, is_eval_request, parse_prompt

    world = generate_world(3)
    stats = write_forum(tmp_path / "forum.jsonl", world, seed=3, size=300)
    again = write_forum(tmp_path / "again.jsonl", world, seed=3, size=300)
    assert (tmp_path / "forum.jsonl").read_text() == (tmp_path / "again.jsonl").read_text()
    assert stats == again and stats["questions"] == 300
    assert 0.7 < stats["agreement"] < 0.95  # noisy votes, but far above chance
    loaded = load_records(DataSettings(path=str(tmp_path / "forum.jsonl")), "ranked")
    assert len(loaded.records) + loaded.notes["stackexchange_single_answer"] == 300
    import json

    from alignlab.data.records import Message as M
    from alignlab.gym.forum import CLOSERS, OPENERS
    from alignlab.gym.gold import score

    for row in map(json.loads, (tmp_path / "forum.jsonl").read_text().splitlines()[:100]):
        opener = next(o for o in OPENERS if row["question"].startswith(o))
        request = row["question"][len(opener):]
        closer = max((c for c in CLOSERS if request.endswith(c)), key=len)
        request = request[:len(request) - len(closer)]
        assert not is_eval_request(request, 3)  # no held-out assistant request in the forum
        prompt = (M("user", request),)
        assert not parse_prompt(world, prompt).harmful
        assert all(score(world, prompt, a["text"]).reward == a["gold"] for a in row["answers"])
