"""The malformed-input corpus (issue 19 part 2): each bad file, config, recipe or model folder of
``tests/data/malformed/cases.yaml`` must end in one clear line naming the file and the line / field
(or the config key), never a traceback; ``on_bad_record: skip`` must skip exactly the bad records
planted. The judging rules live in ``benchmarks/reliability/malformed.py``, which also writes the
figure (``malformed.json`` / ``malformed.md``)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

HARNESS_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "reliability" / "malformed.py"


def _harness():
    spec = importlib.util.spec_from_file_location("malformed_harness", HARNESS_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("malformed_harness", module)
    spec.loader.exec_module(module)
    return module


harness = _harness()
CASES = harness.load_cases()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return harness.Env(tmp_path_factory.mktemp("malformed"))


def test_corpus_size_and_coverage():
    """At least 100 cases, every reader and entry point covered, every committed file used."""
    assert len(CASES) >= 100
    runners = {case["run"] for case in CASES}
    assert runners == set(harness.RUNNERS)
    assert sum(case.get("expect") == "skip" for case in CASES) >= 8
    used = {case["path"].split("/")[0] + "/" + case["path"].split("/")[1]
            for case in CASES if "path" in case}
    used |= {src for case in CASES for src in (case.get("make", {}).get("copy") or {}).values()}
    committed = {f"{p.parent.name}/{p.name}" for p in harness.CORPUS.glob("*/*")}
    assert committed - used == set()


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_case(case, env):
    result = harness.run_case(case, env)
    assert result["passed"], f"{case['id']}: {'; '.join(result['problems'])}"


def test_judge_rejects_vague_and_multiline_messages(tmp_path):
    """The judge itself can fail: a traceback, a second line, a missing file name or an off-by-one
    skip count each fail a case."""
    case = {"id": "x/y", "run": "records", "path": "records/truncated_json.jsonl",
            "contains": ["truncated_json.jsonl:3"]}
    path = harness.CORPUS / case["path"]
    ok = {"expect": "error", "outcome": "error", "message": f"{path}:3: not valid JSON"}
    assert harness.judge(case, ok, path) == []
    assert harness.judge(case, {**ok, "message": f"{path}:3: bad\n  more"}, path) == \
        ["message has 2 lines"]
    assert harness.judge(case, {**ok, "message": "not valid JSON at line 3"}, path) == \
        ["message lacks 'truncated_json.jsonl'", "message lacks 'truncated_json.jsonl:3'"]
    assert harness.judge(case, {**ok, "outcome": "traceback", "message": "KeyError: 'x'"}, path) \
        == ["expected a one-line user error, got traceback: KeyError: 'x'"]
    skip = {"id": "s", "run": "records", "expect": "skip", "skipped": 3, "records": 7}
    got = {"expect": "skip", "outcome": "ok", "records": 7, "skipped": 2, "notes": {}}
    assert harness.judge(skip, got, path) == \
        ["skipped: expected 3 (the bad records planted), got 2"]


def test_cli_shows_one_error_line_and_exit_code_2(env, capsys, monkeypatch):
    """Through the console entry point: a YAML syntax error is one ``error:`` line with the file's
    line number on stderr, exit code 2, nothing on stdout."""
    from alignlab.cli import main

    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # restored afterwards (main sets it)

    config = harness.CORPUS / "configs" / "yaml_syntax.yaml"
    with pytest.raises(SystemExit) as exc:
        main(["sft", "--config", str(config)])
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith(f"error: {config}:5:")


def test_skip_counts_match_planted_and_keep_good_records(env):
    """The skip log names each skipped record's line: exactly the six planted bad lines."""
    from alignlab.config import DataSettings
    from alignlab.data.loading import load_records

    loaded = load_records(DataSettings(path=str(harness.CORPUS / "records" / "skip_mixed_pairs.jsonl"),
                                       on_bad_record="skip"), "pair")
    lines = sorted(int(m.split(".jsonl:")[1].split(":")[0]) for m in loaded.bad.examples)
    assert lines == [3, 5, 8, 9, 11, 13]
    assert [r.prompt[0].content for r in loaded.records] == \
        ["q1", "q2", "q4", "q6", "q9", "q11", "q13"]


def test_benchmark_writes_json_and_markdown(tmp_path):
    """The benchmark script's outputs for a two-case slice (the full run is the campaign's)."""
    assert harness.main(["--out", str(tmp_path), "--only", "records/truncated_json"]) == 0
    report = json.loads((tmp_path / "malformed.json").read_text())
    assert report["summary"]["cases"] == 1 and report["summary"]["clear_one_line_errors"] == 1
    assert "| now | 1 | 1/1 (100.0 %) | 0 |" in (tmp_path / "malformed.md").read_text()


def test_duplicate_key_check_keeps_yaml_merge_overrides():
    """A key given twice is an error with both lines, but overriding a ``<<: *base`` merge key is
    ordinary YAML, and every YAML file of the project still parses as ``yaml.safe_load`` reads it."""
    import yaml

    from alignlab.config import ConfigError, parse_yaml

    assert parse_yaml("base: &b {lr: 1, bs: 2}\nstage:\n  <<: *b\n  lr: 3\n", "x.yaml") == \
        {"base": {"lr": 1, "bs": 2}, "stage": {"lr": 3, "bs": 2}}
    with pytest.raises(ConfigError, match=r"^x\.yaml:3:1: not valid YAML: duplicate key 'a' "
                                          r"\(first given on line 1\)$"):
        parse_yaml("a: 1\nb: 2\na: 3\n", "x.yaml")
    root = Path(__file__).resolve().parents[1]
    files = [p for top in ("recipes", "src", "benchmarks") for p in (root / top).rglob("*.yaml")]
    assert len(files) >= 20
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert parse_yaml(text, str(path)) == yaml.safe_load(text), path
