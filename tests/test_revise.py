"""`alignlab cai revise`: critique -> revision (Constitutional AI sec. 3) with fake and tiny models."""

import hashlib
import json
import random
from pathlib import Path

import pytest
import yaml
from test_train_stages import _prompt, _write_jsonl, tiny_model  # noqa: F401

from alignlab.config import ConfigError, DataSettings, GenerationSettings, ModelSettings
from alignlab.data.loading import load_records
from alignlab.data.records import Message
from alignlab.feedback.constitution import ConstitutionError, load_constitution
from alignlab.feedback.revise import ReviseConfig, run_revise, step_seed
from alignlab.generation.base import Sample
from alignlab.runs import RunFolder

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PRINCIPLES = [{"name": n, "critique": f"critique by {n}", "revision": f"revise by {n}"}
              for n in ("alpha", "beta", "gamma")]
EXAMPLE = {"conversation": [{"role": "user", "content": "ex q"}, {"role": "assistant", "content": "ex a"}],
           "critique_request": "ex creq", "critique": "ex crit", "revision_request": "ex rreq",
           "revision": "ex rev"}


class FakeGenerator:
    """Records every generate call; the reply depends only on the messages and the seed."""

    def __init__(self, fail_after=None, empty_for=()):
        self.calls, self.fail_after, self.empty_for = [], fail_after, tuple(empty_for)

    def generate(self, prompts, settings):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise RuntimeError("killed")
        self.calls.append(([tuple(p) for p in prompts], settings))
        return [[Sample(self._reply(p, settings.seed), [])] for p in prompts]

    def _reply(self, messages, seed):
        last = messages[-1].content
        if any(marker in last for marker in self.empty_for):
            return "   "
        digest = hashlib.sha256(repr((messages, seed)).encode()).hexdigest()[:6]
        return f"  reply {digest} to [{last[:12]}]\n"


def _constitution(tmp_path):
    path = tmp_path / "constitution.yaml"
    path.write_text(yaml.safe_dump({"name": "test", "principles": PRINCIPLES, "comparison": ["which?"],
                                    "examples": [EXAMPLE]}))
    return str(path)


def _config(tmp_path, out, n=3, **extra):
    prompts = _write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": _prompt(f"question {i}")}
                                                        for i in range(n)])
    base = {"model": ModelSettings(path="unused"), "prompts": DataSettings(path=prompts),
            "constitution": _constitution(tmp_path), "rounds": 2, "few_shot": 1, "seed": 7,
            "generation": GenerationSettings(max_new_tokens=8, seed=3), "out": str(out)}
    return ReviseConfig(**{**base, **extra})


def _run(cfg, gen):
    run_revise(cfg, RunFolder(cfg.out, cfg, echo=False), generators=(gen, gen))
    return _rows(Path(cfg.out) / "revisions.jsonl")


def _rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def _turns(*pairs):
    return tuple(Message(role, content) for role, content in pairs)


def test_message_sequence_of_two_rounds(tmp_path):
    cfg = _config(tmp_path, tmp_path / "out", n=2, flush_every=8)
    gen = FakeGenerator()
    rows = _run(cfg, gen)
    assert len(gen.calls) == 5  # answer, then critique + revision per round, each batched
    ex = _turns(("user", "ex q"), ("assistant", "ex a"), ("user", "ex creq"), ("assistant", "ex crit"),
                ("user", "ex rreq"), ("assistant", "ex rev"))
    for i, row in enumerate(rows):
        rng = random.Random(f"7-{i}")
        drawn = [rng.choice(PRINCIPLES) for _ in range(2)]
        assert row["principles"] == [p["name"] for p in drawn]
        prompt = _turns(("user", f"question {i}"))
        assert gen.calls[0][0][i] == prompt
        latest = row["initial"]
        for r, p in enumerate(drawn):
            critique_ask = ex + prompt + _turns(("assistant", latest), ("user", p["critique"]))
            assert gen.calls[1 + 2 * r][0][i] == critique_ask
            assert gen.calls[2 + 2 * r][0][i] == critique_ask + _turns(
                ("assistant", row["critiques"][r]), ("user", p["revision"]))
            latest = row["revisions"][r]
        assert row["final"] == latest and row["final"] != row["initial"]
        assert row["critique_requests"] == [p["critique"] for p in drawn]
        assert row["revision_requests"] == [p["revision"] for p in drawn]
        assert row["initial"] == row["initial"].strip() and row["initial"].startswith("reply")
    assert [c[1].seed for c in gen.calls] == [step_seed(3, 0, s) for s in range(5)]
    assert len({c[1].seed for c in gen.calls}) == 5


def test_principle_draw_depends_on_seed(tmp_path):
    names = {tuple(row["principles"]) for seed in range(6) for row in
             _run(_config(tmp_path, tmp_path / f"s{seed}", n=4, seed=seed), FakeGenerator())}
    assert len(names) > 1
    again = _run(_config(tmp_path, tmp_path / "again", n=4, seed=2), FakeGenerator())
    assert [r["principles"] for r in again] == [r["principles"] for r in _rows(
        tmp_path / "s2" / "revisions.jsonl")]


def test_empty_critique_and_revision_keep_previous_answer(tmp_path):
    cfg = _config(tmp_path, tmp_path / "out", n=3, rounds=1, few_shot=0,
                  constitution=_constitution(tmp_path))
    gen = FakeGenerator(empty_for=("critique by", "revise by alpha"))
    rows = _run(cfg, gen)
    assert len(gen.calls) == 2  # every critique empty -> no revision call at all
    for row in rows:
        assert row["critiques"] == [""] and row["revision_requests"] == [None]
        assert row["empty"] == ["critique"] and row["final"] == row["initial"]
    stats = json.loads((Path(cfg.out) / "revise_stats.json").read_text())
    assert stats["empty_critiques"] == 3 and stats["unchanged_finals"] == 3
    assert stats["preference_pairs"] == 0 and (Path(cfg.out) / "prefs.jsonl").read_text() == ""

    gen = FakeGenerator(empty_for=("revise by alpha",))
    rows = _run(_config(tmp_path, tmp_path / "out2", n=6, rounds=1, few_shot=0), gen)
    alpha = [r for r in rows if r["principles"] == ["alpha"]]
    assert alpha and all(r["empty"] == ["revision"] and r["final"] == r["initial"] for r in alpha)
    others = [r for r in rows if r["principles"] != ["alpha"]]
    assert all(r["empty"] == [None] and r["final"] != r["initial"] for r in others)
    stats = json.loads((tmp_path / "out2" / "revise_stats.json").read_text())
    assert stats["empty_revisions"] == len(alpha) and stats["preference_pairs"] == len(others)


def test_sft_and_prefs_are_loadable_and_match(tmp_path):
    cfg = _config(tmp_path, tmp_path / "out", n=5, flush_every=2)
    rows = _run(cfg, FakeGenerator(empty_for=("revise by beta",)))
    out = Path(cfg.out)
    convs = load_records(DataSettings(path=str(out / "sft.jsonl"), format="alignlab"),
                         "conversation").records
    assert [c.messages[-1] for c in convs] == [Message("assistant", r["final"]) for r in rows]
    assert [c.messages[0].content for c in convs] == [f"question {i}" for i in range(5)]
    pairs = load_records(DataSettings(path=str(out / "prefs.jsonl"), format="alignlab"), "pair").records
    changed = [r for r in rows if r["final"] != r["initial"]]
    assert changed and [(p.chosen, p.rejected, p.label) for p in pairs] == [
        (r["final"], r["initial"], 1.0) for r in changed]
    assert [p.prompt[0].content for p in pairs] == [r["prompt"][0]["content"] for r in changed]
    stats = json.loads((out / "revise_stats.json").read_text())
    assert stats["prompts"] == 5 and stats["rounds"] == 2 and stats["sft_rows"] == 5
    assert stats["unchanged_finals"] == 5 - len(changed)
    assert sum(stats["principle_counts"].values()) == 10


def test_resume_after_kill_equals_straight_run(tmp_path):
    straight = _config(tmp_path, tmp_path / "straight", n=5, flush_every=2)
    _run(straight, FakeGenerator())
    resumed = _config(tmp_path, tmp_path / "resumed", n=5, flush_every=2)
    with pytest.raises(RuntimeError, match="killed"):
        _run(resumed, FakeGenerator(fail_after=7))  # 5 calls per chunk: chunk 0 done, chunk 1 not
    assert len(_rows(tmp_path / "resumed" / "revisions.jsonl")) == 2
    with open(tmp_path / "resumed" / "revisions.jsonl", "a") as fh:
        fh.write('{"index": 2, "prompt": [')  # a torn write
    gen = FakeGenerator()
    _run(resumed, gen)
    assert len(gen.calls) == 10 and all(len(c[0]) in (2, 1) for c in gen.calls)
    for name in ("revisions.jsonl", "sft.jsonl", "prefs.jsonl"):
        assert (tmp_path / "resumed" / name).read_text() == (tmp_path / "straight" / name).read_text()
    assert [r["index"] for r in _rows(tmp_path / "resumed" / "revisions.jsonl")] == [0, 1, 2, 3, 4]
    gen = FakeGenerator()
    _run(resumed, gen)  # everything done: nothing generated
    assert gen.calls == []


def test_bad_settings_are_clear_errors(tmp_path):
    with pytest.raises(ConstitutionError, match="few_shot=3"):
        _run(_config(tmp_path, tmp_path / "a", few_shot=3), FakeGenerator())
    with pytest.raises(ConfigError, match="num_samples"):
        _run(_config(tmp_path, tmp_path / "b", generation=GenerationSettings(num_samples=2)),
             FakeGenerator())


@pytest.mark.skipif(not (SHARED_DATA / "constitution").is_dir(), reason="no Anthropic constitution")
def test_anthropic_constitution_folder(tmp_path):
    folder = SHARED_DATA / "constitution"
    constitution = load_constitution(str(folder))
    cfg = _config(tmp_path, tmp_path / "out", n=2, rounds=1, constitution=str(folder))
    gen = FakeGenerator()
    rows = _run(cfg, gen)
    names = {p.name for p in constitution.principles}
    example = constitution.examples[0]
    for i, row in enumerate(rows):
        assert row["principles"][0] in names
        ask = gen.calls[1][0][i]
        assert ask[:len(example.conversation)] == example.conversation
        assert ask[len(example.conversation)].content == example.critique_request
        assert ask[-1].content == row["critique_requests"][0] and "Human:" not in ask[-1].content


def test_cli_end_to_end_with_tiny_model(tiny_model, tmp_path):  # noqa: F811
    from typer.testing import CliRunner

    from alignlab.cli import app

    prompts = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": _prompt(q)} for q in ("hi", "sky?", "cat?")])
    constitution = tmp_path / "c.yaml"
    constitution.write_text(yaml.safe_dump({"principles": [
        {"name": "short", "critique": "too long?", "revision": "make it short."}]}))
    config = tmp_path / "revise.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"path": tiny_model}, "prompts": {"path": prompts}, "constitution": str(constitution),
        "generation": {"max_new_tokens": 6, "temperature": 1.0, "batch_size": 4}, "flush_every": 2,
        "out": str(tmp_path / "out")}))
    result = CliRunner().invoke(app, ["cai", "revise", "--config", str(config), "rounds=2"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    rows = _rows(out / "revisions.jsonl")
    assert [r["index"] for r in rows] == [0, 1, 2]
    assert all(len(r["critiques"]) == 2 and r["principles"] == ["short", "short"] for r in rows)
    stats = json.loads((out / "revise_stats.json").read_text())
    assert stats["prompts"] == 3 and stats["rounds"] == 2
    assert stats["sft_rows"] == len(_rows(out / "sft.jsonl")) == sum(bool(r["final"]) for r in rows)
    assert stats["preference_pairs"] == len((out / "prefs.jsonl").read_text().splitlines())
    assert (out / "DONE").is_file() and (out / "config.yaml").is_file()
    bad = CliRunner().invoke(app, ["cai", "revise", "--config", str(config), "few_shot=2"])
    assert bad.exit_code == 2 and "few_shot=2" in bad.output


def test_reviser_generation_applies_to_critiques_and_revisions_only(tmp_path):
    cfg = _config(tmp_path, tmp_path / "out", n=2, flush_every=8,
                  generation=GenerationSettings(max_new_tokens=8, temperature=1.0, seed=3),
                  reviser_generation=GenerationSettings(max_new_tokens=5, temperature=0.0, seed=99))
    gen = FakeGenerator()
    _run(cfg, gen)
    used = [(c[1].temperature, c[1].max_new_tokens) for c in gen.calls]
    assert used == [(1.0, 8)] + [(0.0, 5)] * 4
    # seeds still derive from generation.seed, so switching the reviser's settings moves no seed
    assert [c[1].seed for c in gen.calls] == [step_seed(3, 0, s) for s in range(5)]


class _FixedLabeler:
    """A labeler whose P(chosen) is read from the chosen text (``... p=0.7``)."""

    def __init__(self):
        self.seen = []

    def label(self, requests):
        self.seen.extend(requests)
        return [{"label": float(r.chosen.rsplit("p=", 1)[1])} for r in requests]


def test_revision_filter_keeps_strictly_preferred_and_never_copies(tmp_path):
    from alignlab.feedback.revision_filter import keep_rows, keep_stats, revision_probs

    rows = [{"index": i, "prompt": [{"role": "user", "content": f"q{i}"}], "initial": init,
             "final": final} for i, (init, final) in enumerate(
                 [("a", "b p=0.9"), ("a", "a"), ("a", "c p=0.5"), ("a", ""), ("a", "d p=0.2")])]
    labeler = _FixedLabeler()
    probs = revision_probs(rows, labeler, load_constitution(_constitution(tmp_path)), seed=0)
    assert probs == [0.9, None, 0.5, None, 0.2]
    assert [r.rejected for r in labeler.seen] == ["a", "a", "a"]  # revision first, as "chosen"
    verdicts = keep_rows(rows, probs, min_prob=0.5)
    assert [v["kept"] for v in verdicts] == [True, False, False, False, False]
    assert keep_stats(verdicts) == {"judged": 3, "kept": 1, "mean_p_revision": round(1.6 / 3, 4)}


def _save_tiny_rm(folder):
    import torch
    from test_train_stages import _tokenizer
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = _tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      pad_token_id=0, num_labels=1)
    LlamaForSequenceClassification(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def test_keep_with_a_reward_model_filters_sft_data(tmp_path):
    import math

    from alignlab.config import JudgeSettings
    from alignlab.eval.winrate import load_reward_judge
    from alignlab.feedback.revision_filter import KeepSettings

    rm = _save_tiny_rm(tmp_path / "rm")
    keep = KeepSettings(judge=JudgeSettings(kind="reward_model", model=ModelSettings(path=rm)))
    cfg = _config(tmp_path, tmp_path / "out", n=6, keep=keep)
    rows = _run(cfg, FakeGenerator())
    out = Path(cfg.out)
    verdicts = _rows(out / "keep.jsonl")
    judge = load_reward_judge(rm)
    prompts = [tuple(Message(**m) for m in r["prompt"]) for r in rows]
    r_final, r_init = (judge.score(prompts, [r[k] for r in rows]) for k in ("final", "initial"))
    for v, a, b in zip(verdicts, r_final, r_init):  # P = sigmoid(r_revision - r_initial), by hand
        assert v["p_revision"] == pytest.approx(1 / (1 + math.exp(b - a)), abs=2e-6)
        assert v["kept"] == (v["p_revision"] > 0.5)
    kept = [r for r, v in zip(rows, verdicts) if v["kept"]]
    assert 0 < len(kept) < len(rows)  # this random RM prefers some revisions and not others
    sft = _rows(out / "sft.jsonl")
    assert [s["messages"][-1]["content"] for s in sft] == [r["final"] for r in kept]
    stats = json.loads((out / "revise_stats.json").read_text())
    assert stats["sft_rows"] == len(kept) and stats["keep"]["kept"] == len(kept)
    assert len(_rows(out / "prefs.jsonl")) == len(rows)  # preference data stays unfiltered
    assert len(_rows(out / "sft_unfiltered.jsonl")) == len(rows)
