"""alignlab synth: ROUGE-L, numbered-list parsing, the Self-Instruct filters, template mode, and the
self-instruct loop end to end (tiny random Llama through the CLI; a scripted generator for the
accounting of every filter) including resume after a crash."""

import json
import random
from pathlib import Path

import pytest
import yaml
from test_train_stages import tiny_model  # noqa: F401  (fixture)
from typer.testing import CliRunner

from alignlab.cli import app
from alignlab.config import ConfigError, DataSettings
from alignlab.data.errors import RecordError
from alignlab.data.loading import load_records
from alignlab.data.rouge import RougePool, lcs_length, rouge_l, rouge_tokens
from alignlab.data.synth import (
    DEFAULT_TEMPLATES,
    InstructionPool,
    SynthConfig,
    check_templates,
    instruction_problem,
    judge_instruction,
    parse_numbered,
    read_journal,
    read_seed_tasks,
    request_text,
    template_conversations,
)
from alignlab.generation.base import Sample
from alignlab.generation.hf import HFGenerator

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SEEDS = [
    {"id": "t0", "name": "sum", "instruction": "Add the two numbers given in the input.",
     "instances": [{"input": "2 and 3", "output": "5"}, {"input": "1 and 1", "output": "2"}],
     "is_classification": False},
    {"id": "t1", "name": "joke", "instruction": "Tell a short joke about cats.",
     "instances": [{"input": "", "output": "Cats never lie; they just purr."}],
     "is_classification": False},
    {"id": "t2", "name": "sentiment", "instruction": "Is the sentiment of this review positive?",
     "instances": [{"input": "Loved it.", "output": "Yes"}], "is_classification": True},
]


def _write_jsonl(path, rows, extra=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + extra)
    return path


def _config_file(tmp_path, **values):
    path = tmp_path / "synth.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


# ----------------------------------------------------------------------------- ROUGE-L


def test_rouge_l_hand_computed():
    # X = the cat sat on the mat (m=6), Y = the cat on the mat (n=5): LCS = "the cat on the mat" = 5,
    # R = 5/6, P = 5/5, F = 2PR/(P+R) = (10/6)/(11/6) = 10/11.
    assert rouge_l("the cat sat on the mat", "the cat on the mat") == pytest.approx(10 / 11)
    # Lin (2004) section 3.1: S1 = police killed the gunman; S2 = police kill the gunman: LCS 3
    # ("police the gunman"), F = 2*3/(4+4) = 0.75; S3 = the gunman kill police: LCS 2 ("the gunman"),
    # F = 2*2/8 = 0.5.
    s1 = "police killed the gunman"
    assert rouge_l(s1, "police kill the gunman") == pytest.approx(0.75)
    assert rouge_l(s1, "the gunman kill police") == pytest.approx(0.5)
    # tokens are lowercased letter/digit runs: punctuation and case do not matter
    assert rouge_tokens("The CAT, sat!") == ["the", "cat", "sat"]
    assert rouge_l("The cat.", "the CAT") == 1.0
    assert rouge_l("", "anything") == 0.0 and rouge_l("...", "...") == 0.0
    assert rouge_l("a b", "c d") == 0.0


def test_lcs_length_textbook_cases():
    assert lcs_length("ABCBDAB", "BDCABA") == 4  # CLRS: BCBA
    assert lcs_length("abc", "") == 0
    assert lcs_length("abc", "abc") == 3
    assert lcs_length("short", "a much longer sequence with short inside") == 5


def _brute_max(query, texts):
    return max((rouge_l(query, t) for t in texts), default=0.0)


def test_pool_max_equals_brute_force_and_skips_by_length():
    rng = random.Random(0)
    vocab = ["a", "an", "the", "cat", "dog", "sat", "ran", "on", "in", "mat", "log", "big", "red", "blue"]
    texts = [" ".join(rng.choices(vocab, k=rng.randint(1, 30))) for _ in range(150)]
    pool = RougePool(texts)
    for _ in range(40):
        query = " ".join(rng.choices(vocab, k=rng.randint(1, 12)))
        match = pool.best(query)
        assert match.score == pytest.approx(_brute_max(query, texts))
        assert rouge_l(query, texts[match.index]) == pytest.approx(match.score)
    assert pool.skipped > 0 and pool.compared < 40 * 150


def test_pool_stop_above_returns_a_score_over_the_threshold():
    pool = RougePool(["write a poem about the sea", "write a poem about the sky", "x y z"])
    match = pool.best("Write a poem about the sea.", stop_above=0.7)
    assert match.score > 0.7
    assert RougePool().best("anything").index == -1


# ----------------------------------------------------------------------------- parsing and filters


def test_parse_numbered_list():
    text = ("Sure! Here are some tasks:\n"
            "9. Write a haiku about rain.\n"
            "10) Summarise the article\n   in two sentences.\n"
            "\n"
            "Some closing remark that is not a task.\n"
            "Task 11: Translate the sentence into French.\n"
            "**12.** Name three primes.\n"
            "13.\n\n"
            "3.5 cups of flour is not an item\n"
            "1. Restarted numbering counts too.")
    assert parse_numbered(text) == [
        "Write a haiku about rain.",
        "Summarise the article in two sentences.",
        "Translate the sentence into French.",
        "Name three primes.",
        "Restarted numbering counts too.",
    ]
    assert parse_numbered("no list here") == []


@pytest.mark.parametrize("text,reason", [
    ("Add it", "too_short"),                            # 2 words < min_words 3
    (" ".join(["word"] * 11), "too_long"),              # 11 words > max_words 10
    ("Draw a picture of a horse.", "keyword"),
    ("Describe the attached image in detail.", "keyword"),
    ("Please go  to the website and summarise it.", "keyword"),   # phrase, any whitespace
    ("Plot the values as a bar chart.", "keyword"),
    ("\"Quote\" the most famous line.", "bad_start"),
    ("3 reasons to exercise daily.", "bad_start"),
    ("Écris un poème sur la mer.", "bad_start"),          # non-English first character
    ("Explain the mapping between these profiles.", None),  # 'map', 'file' only as whole words
    ("Write a short poem about autumn.", None),
])
def test_each_heuristic_filter(text, reason):
    assert instruction_problem(text, min_words=3, max_words=10) == reason


def _cfg(**extra):
    base = {"mode": "template", "seed_tasks": "unused.jsonl", "out": "unused", "rouge_threshold": 0.7}
    return SynthConfig(**{**base, **extra})


def test_dedup_against_seeds_and_accepted():
    pool = InstructionPool.from_seeds(["Write a poem about the sea.", "List three fruits."])
    cfg = _cfg()
    assert judge_instruction("write a poem  about the SEA.", pool, cfg)["verdict"] == "duplicate"
    near = judge_instruction("Write a poem about the sea today.", pool, cfg)
    assert near["verdict"] == "similar" and near["rouge_max"] == pytest.approx(2 * 6 / 13)
    first = judge_instruction("Explain how vaccines train the immune system.", pool, cfg)
    assert first["verdict"] == "accepted" and first["rouge_max"] < 0.7
    assert pool.accepted == ["Explain how vaccines train the immune system."]
    again = judge_instruction("Explain how vaccines train the immune system quickly.", pool, cfg)
    assert again["verdict"] == "similar"
    assert again["most_similar"] == "Explain how vaccines train the immune system."
    # just under the threshold is accepted: LCS 2 of 3 and 3 tokens -> 4/6 = 0.667 <= 0.7
    assert judge_instruction("List three vegetables.", pool, cfg)["verdict"] == "accepted"


def test_request_text_numbers_the_examples():
    text = request_text(["Do a.", "Do\nb."])
    assert "1. Do a.\n2. Do b.\n" in text and "from 3 on" in text


# ----------------------------------------------------------------------------- seed tasks and templates


def test_read_seed_tasks_and_bad_rows(tmp_path):
    tasks = read_seed_tasks(str(_write_jsonl(tmp_path / "s.jsonl", SEEDS)))
    assert [t.id for t in tasks] == ["t0", "t1", "t2"] and tasks[2].is_classification
    assert tasks[0].instances[1].output == "2"
    cases = [({"id": "x", "instances": []}, "'instruction'"),
             ({"id": "x", "instruction": "Do it.", "instances": [{"input": ""}]},
              "'instances[0].output'"),
             ({"id": "x", "instruction": "Do it.", "instances": "none"}, "'instances'"),
             ({"id": "t0", "instruction": "Do it.", "instances": []}, "duplicate id"),
             ({"id": "x", "instruction": "  ", "instances": []}, "empty")]
    for row, needle in cases:
        path = _write_jsonl(tmp_path / "bad.jsonl", SEEDS + [row])
        with pytest.raises(RecordError) as err:
            read_seed_tasks(str(path))
        assert f"{path}:4" in str(err.value) and needle in str(err.value)


def test_check_templates():
    assert check_templates(DEFAULT_TEMPLATES) == DEFAULT_TEMPLATES
    for bad, needle in [("{instruction} {output}", "{output}"), ("{instruction}", "{input}"),
                        ("{instruction} {input!r}", "{input!r}"), ("{} {input}", "{}"),
                        ("{instruction {input}", "templates[0]")]:
        with pytest.raises(ConfigError, match="templates\\[0\\]") as err:
            check_templates([bad])
        assert needle in str(err.value)


def test_template_conversations(tmp_path):
    tasks = read_seed_tasks(str(_write_jsonl(tmp_path / "s.jsonl", SEEDS)))
    convs, stats = template_conversations(tasks, ["Q: {instruction} | {input}"], seed=0)
    users = [c.messages[0].content for c in convs]
    assert users == ["Q: Add the two numbers given in the input. | 2 and 3",
                     "Q: Add the two numbers given in the input. | 1 and 1",
                     "Tell a short joke about cats.",                     # blank input
                     "Q: Is the sentiment of this review positive? | Loved it."]
    assert [c.messages[1].content for c in convs] == ["5", "2", "Cats never lie; they just purr.", "Yes"]
    assert stats["conversations"] == 4 and stats["instruction_only"] == 1
    many = template_conversations(tasks, DEFAULT_TEMPLATES, seed=0)[0]
    assert many == template_conversations(tasks, DEFAULT_TEMPLATES, seed=0)[0]


def test_template_mode_through_cli(tmp_path):
    seeds = _write_jsonl(tmp_path / "seeds.jsonl", SEEDS)
    out = tmp_path / "run"
    config = _config_file(tmp_path, mode="template", seed_tasks=str(seeds), out=str(out))
    result = CliRunner().invoke(app, ["synth", "--config", str(config)])
    assert result.exit_code == 0, result.output
    loaded = load_records(DataSettings(path=str(out / "sft.jsonl")), "conversation")
    assert len(loaded.records) == 4
    stats = json.loads((out / "synth_stats.json").read_text())
    assert stats["conversations"] == 4 and sum(stats["template_counts"].values()) == 3

    bad = CliRunner().invoke(app, ["synth", "--config", str(config), "templates=[\"{instruction} {x}\"]"])
    assert bad.exit_code == 2 and "unknown placeholder {x}" in bad.output


def test_bad_seed_row_exit_code_2(tmp_path):
    seeds = _write_jsonl(tmp_path / "seeds.jsonl", SEEDS[:1], '{"id": "t9", "instances": []}\n')
    config = _config_file(tmp_path, mode="template", seed_tasks=str(seeds), out=str(tmp_path / "r"))
    result = CliRunner().invoke(app, ["synth", "--config", str(config)])
    assert result.exit_code == 2
    assert f"{seeds}:2" in result.output and "'instruction'" in result.output


# ----------------------------------------------------------------------------- self-instruct loop

SCRIPT = ("Sure, here you go:\n"
          "1. Write a haiku about autumn leaves.\n"        # accepted
          "2. Draw a picture of a cat.\n"                  # keyword
          "3. Be nice\n"                                   # too_short (2 words)
          "4. 42 is the answer to which question?\n"       # bad_start
          "5. Add the two numbers given in the input.\n"   # duplicate of a seed
          "6. Write a haiku about autumn leaves today.\n"  # similar to item 1 (12/13)
          "7. Summarise the given news article in two sentences.\n")  # accepted


def _scripted_generate(calls):
    """A stand-in for HFGenerator.generate: requests get SCRIPT, or numbered items built from the
    request seed; answers echo the instruction. ``calls`` counts request calls and may raise."""
    def generate(self, prompts, settings):
        text = prompts[0][0].content
        if text.startswith("Here are some example tasks"):
            calls["n"] += 1
            if calls["n"] > calls.get("crash_after", 10 ** 9):
                raise RuntimeError("killed")
            if calls.get("script"):
                return [[Sample(SCRIPT, [], "eos")]]
            rng = random.Random(settings.seed)
            words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta", "lambda", "zeta"]
            lines = [f"{i}. Describe " + " ".join(rng.sample(words, 4)) for i in range(1, 4)]
            lines.append("4. " + text.splitlines()[2][3:])  # echo the first example: duplicate
            return [[Sample("\n".join(lines), [], "eos")]]
        return [[Sample(f"Answer to: {p[0].content}", [], "eos")] for p in prompts]
    return generate


def _si_config(tmp_path, tiny, out, **extra):
    seeds = _write_jsonl(tmp_path / "seeds.jsonl", SEEDS)
    values = {"mode": "self_instruct", "model": {"path": tiny}, "seed_tasks": str(seeds),
              "out": str(out), "num_instructions": 2, "prompt_tasks": 3, "machine_tasks": 1,
              "min_words": 3, "generation": {"max_new_tokens": 24, "temperature": 0.7, "top_p": 0.9},
              **extra}
    return _config_file(tmp_path, **values)


def test_scripted_self_instruct_counts_every_filter(tiny_model, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(HFGenerator, "generate", _scripted_generate({"n": 0, "script": True}))
    config = _si_config(tmp_path, tiny_model, tmp_path / "run")
    result = CliRunner().invoke(app, ["synth", "--config", str(config)])
    assert result.exit_code == 0, result.output
    stats = json.loads((tmp_path / "run" / "synth_stats.json").read_text())
    assert stats["requests"] == 1 and stats["generated"] == 7 and stats["accepted"] == 2
    assert stats["rejected"] == {"bad_start": 1, "duplicate": 1, "keyword": 1, "similar": 1,
                                 "too_short": 1}
    assert stats["stopped"] == "target"
    rows = [json.loads(x) for x in (tmp_path / "run" / "instructions.jsonl").read_text().splitlines()]
    assert [r["instruction"] for r in rows] == ["Write a haiku about autumn leaves.",
                                                "Summarise the given news article in two sentences."]
    assert all(r["request"] == 0 and r["rouge_max"] <= 0.7 for r in rows)
    sft = load_records(DataSettings(path=str(tmp_path / "run" / "sft.jsonl")), "conversation")
    assert [c.messages[1].content for c in sft.records] == [f"Answer to: {r['instruction']}"
                                                            for r in rows]


def _outputs(folder):
    names = ["requests.jsonl", "instructions.jsonl", "sft.jsonl", "synth_stats.json"]
    return {n: (folder / n).read_text() for n in names}


def test_scripted_resume_equals_straight_run(tiny_model, tmp_path, monkeypatch):  # noqa: F811
    config = _si_config(tmp_path, tiny_model, tmp_path / "a", num_instructions=8)
    calls = {"n": 0, "crash_after": 2}
    monkeypatch.setattr(HFGenerator, "generate", _scripted_generate(calls))
    crashed = CliRunner().invoke(app, ["synth", "--config", str(config)])
    assert isinstance(crashed.exception, RuntimeError)
    assert len(read_journal(tmp_path / "a" / "requests.jsonl")[0].rows) == 2
    with open(tmp_path / "a" / "requests.jsonl", "a") as fh:   # a torn line from the kill
        fh.write('{"request": 2, "items": [')
    calls.update(n=0, crash_after=10 ** 9)
    assert CliRunner().invoke(app, ["synth", "--config", str(config)]).exit_code == 0
    assert calls["n"] >= 1
    straight = _si_config(tmp_path, tiny_model, tmp_path / "b", num_instructions=8)
    assert CliRunner().invoke(app, ["synth", "--config", str(straight)]).exit_code == 0
    a, b = _outputs(tmp_path / "a"), _outputs(tmp_path / "b")
    assert a == b
    stats = json.loads(a["synth_stats.json"])
    assert stats["accepted"] == 8 and stats["rejected"].get("duplicate", 0) >= 1
    journal = [json.loads(x) for x in a["requests.jsonl"].splitlines()]
    machine = [ex for row in journal[1:] for ex in row["examples"] if ex.startswith("Describe")]
    assert machine, "accepted instructions are shown in later requests"


def test_tiny_model_end_to_end_with_resume(tiny_model, tmp_path, monkeypatch):  # noqa: F811
    """A random 2-layer Llama: nearly everything is filtered; check the accounting and that a
    crashed-and-resumed run equals a straight one, sample for sample."""
    config = _si_config(tmp_path, tiny_model, tmp_path / "a")
    real = HFGenerator.generate
    calls = {"n": 0}

    def crashing(self, prompts, settings):
        calls["n"] += 1
        if calls["n"] > 2:
            raise RuntimeError("killed")
        return real(self, prompts, settings)

    monkeypatch.setattr(HFGenerator, "generate", crashing)
    assert isinstance(CliRunner().invoke(app, ["synth", "--config", str(config)]).exception,
                      RuntimeError)
    monkeypatch.setattr(HFGenerator, "generate", real)
    first = CliRunner().invoke(app, ["synth", "--config", str(config)])
    assert first.exit_code == 0, first.output
    straight = _si_config(tmp_path, tiny_model, tmp_path / "b")
    assert CliRunner().invoke(app, ["synth", "--config", str(straight)]).exit_code == 0
    a, b = _outputs(tmp_path / "a"), _outputs(tmp_path / "b")
    assert a == b
    stats = json.loads(a["synth_stats.json"])
    journal = [json.loads(x) for x in a["requests.jsonl"].splitlines()]
    assert stats["requests"] == len(journal) and all(len(r["samples"]) == 1 for r in journal)
    assert stats["generated"] == stats["accepted"] + sum(stats["rejected"].values())
    assert stats["generated"] == sum(len(r["items"]) for r in journal)
    if stats["accepted"] < 2:
        assert stats["requests"] == stats["max_requests"] == 6 and stats["stopped"] == "max_requests"
    assert len({r["samples"][0] for r in journal}) > 1  # each request has its own seed


def test_changed_settings_refuse_to_resume(tiny_model, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(HFGenerator, "generate", _scripted_generate({"n": 0, "script": True}))
    config = _si_config(tmp_path, tiny_model, tmp_path / "run")
    assert CliRunner().invoke(app, ["synth", "--config", str(config)]).exit_code == 0
    again = CliRunner().invoke(app, ["synth", "--config", str(config), "seed=5"])
    assert again.exit_code == 2 and "changed: seed" in again.output


# ----------------------------------------------------------------------------- real seed tasks


@pytest.mark.shared_data
@pytest.mark.skipif(not (SHARED / "data" / "self-instruct").is_dir(), reason="no ../shared data")
def test_real_seed_tasks():
    tasks = read_seed_tasks(str(SHARED / "data" / "self-instruct" / "seed_tasks.jsonl"))
    assert len(tasks) == 175 and all(t.instances for t in tasks)
    instructions = [t.instruction for t in tasks]
    pool = RougePool(instructions[:150])
    for query in instructions[150:]:
        assert pool.best(query).score == pytest.approx(_brute_max(query, instructions[:150]))
    convs, stats = template_conversations(tasks, DEFAULT_TEMPLATES, seed=0)
    assert stats["conversations"] == 175 and len(convs) == 175


def test_max_requests_caps_the_run(tiny_model, tmp_path):  # noqa: F811
    config = _si_config(tmp_path, tiny_model, tmp_path / "capped")
    result = CliRunner().invoke(app, ["synth", "--config", str(config), "max_requests=2"])
    assert result.exit_code == 0, result.output
    stats = json.loads((tmp_path / "capped" / "synth_stats.json").read_text())
    assert stats["max_requests"] == 2 and stats["requests"] <= 2
    if stats["accepted"] < 2:
        assert stats["requests"] == 2 and stats["stopped"] == "max_requests"
