"""The ``sample`` stage on a tiny model: scores, best-of-N, RS-SFT set, pairs, and resume."""

import json

from test_models_tiny import save_tiny_lm

from alignlab.config import DataSettings
from alignlab.data.loading import load_records
from alignlab.stages import build_stage_config, run_stage


def char_score(prompt, completion):
    """A scorer for the test that varies between samples of equal length."""
    return float(sum(map(ord, completion)) % 13)


def length_score(prompt, completion):
    """A monitor for the test: the completion's length."""
    return float(len(completion))


def _config(tmp_path, model):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"say {w}"}) + "\n"
                               for w in ["a", "bb", "ccc", "dddd", "e", "ff"]))
    raw = {"stage": "sample", "out": str(tmp_path / "run"), "policy": {"path": str(model)},
           "prompts": {"path": str(prompts)},
           "generation": {"num_samples": 3, "max_new_tokens": 8, "temperature": 1.0, "seed": 0},
           "scorers": [{"kind": "function", "function": "test_sampling_stage:char_score"}],
           "flush_every": 2, "rs_top_k": 2, "rs_threshold": 2.0, "pairs": True,
           "rso": {"beta": 1.0, "num": 2},
           "monitors": [{"kind": "function", "function": "test_sampling_stage:length_score",
                         "name": "length"}]}
    return build_stage_config(raw, source="test")


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sample_scores_selects_and_resumes_without_regenerating(tmp_path, monkeypatch):
    model = save_tiny_lm(tmp_path / "lm")
    run_stage(_config(tmp_path, model))
    out = tmp_path / "run"
    rows = _rows(out / "samples.jsonl")
    assert [r["index"] for r in rows] == list(range(6))
    assert all(s["score"] == char_score(None, s["text"]) for r in rows for s in r["samples"])
    best = _rows(out / "best_of_n.jsonl")
    assert [b["score"] for b in best] == [max(s["score"] for s in r["samples"]) for r in rows]
    expected_sft = sum(min(2, sum(s["score"] >= 2.0 for s in r["samples"])) for r in rows)
    sft = load_records(DataSettings(path=str(out / "rs_sft.jsonl")), "conversation")
    assert len(sft.records) == expected_sft and sft.bad.skipped == 0
    assert all(m.content == m.content.strip() for c in sft.records for m in c.messages)
    pairs = load_records(DataSettings(path=str(out / "pairs.jsonl")), "pair").records
    summary = json.loads((out / "summary.json").read_text())
    assert len(pairs) + summary["pairs_skipped_all_equal"] == 6
    assert all(char_score(None, p.chosen) > char_score(None, p.rejected) for p in pairs)
    rso = load_records(DataSettings(path=str(out / "rso_pairs.jsonl")), "pair").records
    assert len(rso) + summary["rso_ties_skipped"] == 6  # num 2 of 3: one first-round match each
    picks = [r["samples"][max(range(3), key=lambda j: (r["samples"][j]["score"], -j))]
             for r in rows]
    assert summary["length_best_of_n"] == sum(len(p["text"]) for p in picks) / 6
    assert all(s["monitor"] == {"length": len(s["text"])} for r in rows for s in r["samples"])
    assert rso and all(char_score(None, p.chosen) > char_score(None, p.rejected) for p in rso)

    # a kill after 4 prompts, in the middle of writing the fifth row
    lines = (out / "samples.jsonl").read_text().splitlines(keepends=True)
    (out / "samples.jsonl").write_text("".join(lines[:4]) + lines[4][:20])
    (out / "DONE").unlink()
    from alignlab.generation.hf import HFGenerator

    calls = []
    real = HFGenerator.generate

    def counting(self, prompts, settings):
        calls.append(len(prompts))
        return real(self, prompts, settings)

    monkeypatch.setattr(HFGenerator, "generate", counting)
    run_stage(_config(tmp_path, model))
    assert calls == [2]  # only the two unfinished prompts, in one chunk
    again = _rows(out / "samples.jsonl")
    assert again[:4] == rows[:4] and [r["index"] for r in again] == list(range(6))


def test_named_rso_sets_each_get_their_file(tmp_path):
    """A list of named RSO settings writes one pair file each: beta -> 0 pairs the two best samples,
    stripped like every selected text; duplicate names are refused when the config is read."""
    import pytest

    from alignlab.runs import RunFolder
    from alignlab.sampling.stage import write_outputs

    raw = _config(tmp_path, tmp_path / "unused").model_dump()
    raw["rso"] = [{"name": "greedy", "beta": 1e-6, "num": 2}, {"name": "sft_rank", "beta": 1e9}]
    cfg = build_stage_config(raw, source="test")
    rows = [{"index": 0, "prompt": [{"role": "user", "content": "q"}],
             "samples": [{"text": t, "score": s}  # decoded samples start with the template's space
                         for t, s in [(" lo", 0.0), (" hi", 3.0), (" mid\n", 2.0)]]}]
    summary = write_outputs(cfg, RunFolder(tmp_path / "out"), rows)
    greedy = _rows(tmp_path / "out" / "greedy_pairs.jsonl")
    assert [(p["chosen"], p["rejected"]) for p in greedy] == [("hi", "mid")]
    assert summary["greedy_pairs"] == 1 and summary["sft_rank_pairs"] == 1
    raw["rso"] = [{"name": "x"}, {"name": "x"}]
    with pytest.raises(Exception, match="names must be unique"):
        build_stage_config(raw, source="test")


def test_min_gap_filters_pairs_and_replay_mixes_earlier_rounds(tmp_path):
    """DNO's round: best-vs-worst pairs with a gap below pairs_min_gap are dropped and counted;
    earlier rounds' pairs follow this round's (decay 1: all kept)."""
    import pytest

    from alignlab.runs import RunFolder
    from alignlab.sampling.stage import write_outputs

    earlier = tmp_path / "earlier.jsonl"
    earlier.write_text("".join(json.dumps({"prompt": "old", "chosen": f"c{i}", "rejected": f"r{i}"})
                               + "\n" for i in range(3)))
    raw = _config(tmp_path, tmp_path / "unused").model_dump()
    raw.update(rso=None, pairs_min_gap=1.0, replay=[{"path": str(earlier)}], replay_decay=1.0)
    cfg = build_stage_config(raw, source="test")
    rows = [{"index": i, "prompt": [{"role": "user", "content": f"q{i}"}],
             "samples": [{"text": "a", "score": 0.0}, {"text": "b", "score": gap}]}
            for i, gap in enumerate([0.5, 2.0])]
    summary = write_outputs(cfg, RunFolder(tmp_path / "out"), rows)
    assert summary["pairs"] == 1 and summary["pairs_skipped_small_gap"] == 1
    mixed = _rows(tmp_path / "out" / "pairs_with_replay.jsonl")
    assert [(m["chosen"], m["rejected"]) for m in mixed] == [("b", "a"), ("c0", "r0"), ("c1", "r1"),
                                                             ("c2", "r2")]
    assert summary["replayed_pairs"] == [3]
    raw["pairs"] = False
    with pytest.raises(Exception, match="set pairs: true"):
        build_stage_config(raw, source="test")
