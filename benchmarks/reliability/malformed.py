"""The malformed-input corpus (issue 19 part 2): bad input ends in one clear line, never a traceback.

Every case of ``tests/data/malformed/cases.yaml`` is a small file or folder (committed under
``tests/data/malformed/``, or made at run time from a ``make`` recipe: broken copies of a tiny model
folder, very long lines, parquet files) plus what must happen when alignlab reads it:

- ``expect: error`` (the default): the reader, loader or CLI command ends with a user error (one of
  :func:`alignlab.cli._user_errors`, shown by the CLI as one ``error:`` line, exit code 2) whose
  message is a single line of at most ``MAX_MESSAGE`` characters and holds the file's name (or the
  config key: ``where``) and every string of ``contains`` (line numbers, field names, keys);
- ``expect: skip``: with ``on_bad_record: skip`` the data loads, the skipped count equals the number
  of bad records planted (``skipped``) and the good ones all arrive (``records``);
- ``expect: ok``: a quirk alignlab handles (a byte-order mark, CRLF line ends, a JSON array in a
  ``.jsonl`` attack file): the data loads with ``records`` records and the counted ``notes``.

A case whose exception is not a user error is a *traceback* (the CLI would show one). Everything runs
in one process: readers are called directly, commands through :func:`alignlab.cli.main` with stderr
captured. ``tests/test_malformed_corpus.py`` runs the same cases in the default test suite.

    python benchmarks/reliability/malformed.py [--out benchmarks/reliability] [--before OLD.json]

writes ``malformed.json`` (every case and the summary) and ``malformed.md`` (the figure);
``--before`` adds the summary of an earlier run (e.g. before the error-message fixes).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "data" / "malformed"
MANIFEST = CORPUS / "cases.yaml"
MAX_MESSAGE = 1000
EXPECTS = ("error", "skip", "ok")


def load_cases() -> list[dict[str, Any]]:
    """The cases of the manifest, checked for unique ids and known runners / expectations."""
    cases = yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))["cases"]
    seen: set[str] = set()
    for case in cases:
        if case["id"] in seen:
            raise ValueError(f"{MANIFEST}: duplicate case id {case['id']!r}")
        seen.add(case["id"])
        if case["run"] not in RUNNERS:
            raise ValueError(f"{MANIFEST}: case {case['id']!r}: unknown runner {case['run']!r}")
        if case.get("expect", "error") not in EXPECTS:
            raise ValueError(f"{MANIFEST}: case {case['id']!r}: expect must be one of {EXPECTS}")
    return cases


# ----------------------------------------------------------------------------- materials


class Env:
    """A scratch folder for one corpus run, and the tiny model folder the model cases break."""

    def __init__(self, work: Path):
        self.work = work
        self._model: Path | None = None

    def tiny_model(self) -> Path:
        """A tiny Llama folder (safetensors + char tokenizer with a chat template), made once."""
        if self._model is None:
            sys.path.insert(0, str(ROOT / "tests"))
            from test_models_tiny import save_tiny_lm

            self._model = save_tiny_lm(self.work / "tiny-model")
        return self._model

    def path_of(self, case: dict[str, Any]) -> Path | None:
        """The case's file or folder: committed (``path``) or made now (``make``)."""
        if "make" in case:
            return make(case, self)
        return CORPUS / case["path"] if "path" in case else None


def _folder(case: dict[str, Any], env: Env) -> Path:
    folder = env.work / case["id"].replace("/", "__")
    if folder.exists():
        shutil.rmtree(folder)
    return folder


def make(case: dict[str, Any], env: Env) -> Path:
    """Build a case's material from its ``make`` recipe (see the manifest's header)."""
    spec = case["make"]
    if "generate" in spec:
        return GENERATORS[spec["generate"]](_folder(case, env), spec)
    folder = _folder(case, env)
    if spec.get("model") == "tiny":
        shutil.copytree(env.tiny_model(), folder)
    else:
        folder.mkdir(parents=True)
    for name in spec.get("remove", []):
        for found in folder.glob(name):
            found.unlink()
    for name, text in (spec.get("write") or {}).items():
        (folder / name).write_text(text, encoding="utf-8")
    for name, source in (spec.get("copy") or {}).items():
        shutil.copy(CORPUS / source, folder / name)
    for name, size in (spec.get("truncate") or {}).items():
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[:size])
    for name, edits in (spec.get("edit_json") or {}).items():
        data = json.loads((folder / name).read_text(encoding="utf-8"))
        data.update(edits)
        (folder / name).write_text(json.dumps(data), encoding="utf-8")
    return folder / spec["file"] if "file" in spec else folder


def _huge_line(folder: Path, spec: dict[str, Any]) -> Path:
    """Line 1 a good pair; line 2 a pair whose ``prompt`` string runs ``size`` characters and is
    never closed (a record cut off mid-write, or a binary blob pasted into a text file)."""
    folder.mkdir(parents=True)
    path = folder / "huge_line.jsonl"
    good = json.dumps({"prompt": "Hi", "chosen": "Hello", "rejected": "Go away"})
    path.write_text(good + "\n" + '{"prompt": "' + "x" * spec["size"] + "\n", encoding="utf-8")
    return path


def _huge_value(folder: Path, spec: dict[str, Any]) -> Path:
    """One row whose field ``field`` holds a ``size``-character string where a number belongs:
    the error must name the field without echoing the whole value."""
    folder.mkdir(parents=True)
    path = folder / spec["name"]
    row = json.loads(spec["row"])
    node = row
    keys = spec["field"].split(".")
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node[key]
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = "9" * spec["size"]
    else:
        node[last] = "9" * spec["size"]
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    return path


def _parquet(folder: Path, spec: dict[str, Any]) -> Path:
    """A parquet file of ``rows`` (JSON objects) written with pyarrow."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True)
    path = folder / spec["name"]
    pq.write_table(pa.Table.from_pylist([json.loads(r) for r in spec["rows"]]), path)
    return path


GENERATORS: dict[str, Callable[[Path, dict[str, Any]], Path]] = {
    "huge_line": _huge_line, "huge_value": _huge_value, "parquet": _parquet,
}


# ----------------------------------------------------------------------------- runners
# A runner reads the case's material and returns {"records", "skipped", "notes"}; errors propagate.


def _summary(loaded) -> dict[str, Any]:
    return {"records": len(loaded.records), "skipped": loaded.bad.skipped,
            "notes": dict(loaded.notes)}


def _data(case: dict[str, Any], path: Path, cls=None):
    """The case's data settings, validated as a stage's config section is (a bad value is the
    ConfigError a user would see)."""
    from alignlab.config import DataSettings, build_config

    options = {k: v for k, v in (case.get("options") or {}).items()
               if k not in ("kind", "num_classes")}
    return build_config(cls or DataSettings, {"path": str(path), **options}, source="data")


def run_records(case, path, env):
    """:func:`alignlab.data.loading.load_records` (``options.kind``; ``prompts``: load_prompt_data)."""
    from alignlab.data.loading import load_prompt_data, load_records

    kind = (case.get("options") or {}).get("kind", "pair")
    settings = _data(case, path)
    return _summary(load_prompt_data(settings) if kind == "prompts" else load_records(settings, kind))


def run_rated(case, path, env):
    """:func:`alignlab.data.rated.load_rated`."""
    from alignlab.data.rated import RatedDataSettings, load_rated

    return _summary(load_rated(_data(case, path, RatedDataSettings)))


def run_labelled(case, path, env):
    """:func:`alignlab.data.labelled.load_labelled` (``options.num_classes``, default 2)."""
    from alignlab.data.labelled import load_labelled

    classes = (case.get("options") or {}).get("num_classes", 2)
    return _summary(load_labelled(_data(case, path), classes))


def run_steps(case, path, env):
    """:func:`alignlab.data.step_readers.load_step_solutions`."""
    from alignlab.data.step_readers import StepDataSettings, load_step_solutions

    return _summary(load_step_solutions(_data(case, path, StepDataSettings)))


def run_problems(case, path, env):
    """:func:`alignlab.data.step_readers.load_problems`."""
    from alignlab.data.step_readers import StepDataSettings, load_problems

    return _summary(load_problems(_data(case, path, StepDataSettings)))


def run_seeds(case, path, env):
    """:func:`alignlab.data.synth.read_seed_tasks` (self-instruct seed tasks)."""
    from alignlab.data.synth import read_seed_tasks

    return {"records": len(read_seed_tasks(str(path))), "skipped": 0, "notes": {}}


def run_constitution(case, path, env):
    """:func:`alignlab.feedback.constitution.load_constitution` (YAML file or Anthropic folder)."""
    from alignlab.feedback.constitution import load_constitution

    found = load_constitution(str(path))
    return {"records": len(found.principles), "skipped": 0, "notes": {}}


def run_attacks(case, path, env):
    """:func:`alignlab.redteam.attacks.load_attacks` (red-team attack files: JSONL, JSON, CSV)."""
    from alignlab.redteam.attacks import AttackDataSettings, load_attacks

    return _summary(load_attacks(_data(case, path, AttackDataSettings)))


def run_candidates(case, path, env):
    """:func:`alignlab.gym.annotate.read_candidates` (a sample stage's ``samples.jsonl``)."""
    from alignlab.gym.annotate import read_candidates

    return {"records": len(read_candidates(str(path))), "skipped": 0, "notes": {}}


def run_gym_prompts(case, path, env):
    """:func:`alignlab.gym.feedback.read_prompts` (``alignlab gym feedback``'s prompt files)."""
    from alignlab.gym.feedback import read_prompts

    return {"records": len(read_prompts(path)), "skipped": 0, "notes": {}}


def run_gym_world(case, path, env):
    """:func:`alignlab.gym.loader.load_gym` (a gym folder named by ``gym:`` in configs)."""
    from alignlab.gym.loader import load_gym

    load_gym(path)
    return {"records": 1, "skipped": 0, "notes": {}}


def run_attempts(case, path, env):
    """:func:`alignlab.redteam.compare.read_attempts` (``alignlab redteam compare``'s run folders)."""
    from alignlab.redteam.compare import read_attempts

    return {"records": len(read_attempts(path)), "skipped": 0, "notes": {}}


def run_model(case, path, env):
    """:func:`alignlab.models.loading.load_causal_lm` (``options.reward``: load_reward_model);
    GGUF conversions go to a scratch ``ALIGNLAB_CACHE``."""
    from alignlab.config import ModelSettings
    from alignlab.data.tokenize import has_chat_template
    from alignlab.models.loading import load_causal_lm, load_reward_model

    options = dict(case.get("options") or {})
    reward = options.pop("reward", False)
    settings = ModelSettings(path=str(path), **options)
    old = os.environ.get("ALIGNLAB_CACHE")
    os.environ["ALIGNLAB_CACHE"] = str(env.work / "cache")
    try:
        _, tokenizer = (load_reward_model if reward else load_causal_lm)(settings,
                                                                       for_training=False)
    finally:
        if old is None:
            os.environ.pop("ALIGNLAB_CACHE", None)
        else:
            os.environ["ALIGNLAB_CACHE"] = old
    template = int(has_chat_template(tokenizer))  # 0: prompts are rendered in the HH format
    return {"records": 1, "skipped": 0, "notes": {"chat_template": template}}


class CliResult(Exception):
    """The exit code and captured output of an in-process ``alignlab`` command (raised when the
    command exits non-zero, so the caller classifies it like a reader's error)."""

    def __init__(self, code: int, stdout: str, stderr: str):
        super().__init__(stderr)
        self.code, self.stdout, self.stderr = code, stdout, stderr


def cli_args(case: dict[str, Any], path: Path | None, env: Env) -> list[str]:
    """The case's ``args`` with ``{path}``, ``{corpus}``, ``{work}`` and ``{model}`` filled in."""
    values = {"path": str(path) if path else "", "corpus": str(CORPUS), "work": str(env.work)}
    args = []
    for arg in case["args"]:
        if "{model}" in arg:
            values["model"] = str(env.tiny_model())
        args.append(arg.format(**values))
    return args


def run_cli(case, path, env):
    """``alignlab ARGS`` through :func:`alignlab.cli.main`, stdout and stderr captured."""
    import inspect

    from alignlab.cli import app, main

    args = cli_args(case, path, env)
    if not inspect.signature(main).parameters:  # an alignlab from before main(argv)
        def main(argv):
            app(args=argv, prog_name="alignlab")
    out, err = io.StringIO(), io.StringIO()
    code = 0
    cwd = os.getcwd()
    bars = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS")  # main() sets it for its process
    os.chdir(env.work)  # a config's relative paths (out: ./never-written) land in the scratch folder
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main(args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        os.chdir(cwd)
        if bars is None:
            os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
        else:
            os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = bars
    if code != 0:
        raise CliResult(code, out.getvalue(), err.getvalue())
    return {"records": None, "skipped": 0, "notes": {}, "stdout": out.getvalue()}


RUNNERS: dict[str, Callable[[dict[str, Any], Path | None, Env], dict[str, Any]]] = {
    "records": run_records, "rated": run_rated, "labelled": run_labelled, "steps": run_steps,
    "problems": run_problems, "seeds": run_seeds, "constitution": run_constitution,
    "attacks": run_attacks, "candidates": run_candidates, "gym_prompts": run_gym_prompts,
    "gym_world": run_gym_world, "attempts": run_attempts, "model": run_model, "cli": run_cli,
}


# ----------------------------------------------------------------------------- judging a case


def user_errors() -> tuple[type[Exception], ...]:
    """The exceptions the CLI shows as one ``error:`` line (:func:`alignlab.cli._user_errors`)."""
    from alignlab.cli import _user_errors

    return _user_errors()


def run_case(case: dict[str, Any], env: Env) -> dict[str, Any]:
    """Run one case and judge it: ``outcome`` (error | ok | traceback), ``passed`` and, when it
    failed, ``problems`` saying why."""
    expect = case.get("expect", "error")
    result: dict[str, Any] = {"id": case["id"], "run": case["run"], "expect": expect}
    start = time.perf_counter()
    path: Path | None = None
    try:
        path = env.path_of(case)
        summary = RUNNERS[case["run"]](case, path, env)
        result.update(outcome="ok", **{k: v for k, v in summary.items() if k != "stdout"})
    except CliResult as exc:
        text = exc.stderr.strip()
        if "Traceback (most recent call last)" in text:
            result.update(outcome="traceback", message=text[-2000:], exit_code=exc.code)
        else:
            result.update(outcome="error", message=text.removeprefix("error: "),
                          exit_code=exc.code)
    except user_errors() as exc:
        result.update(outcome="error", message=str(exc))
    except Exception as exc:  # noqa: BLE001  (anything else is what the user would see as a traceback)
        lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
        result.update(outcome="traceback", message=f"{type(exc).__name__}: {exc}"[:2000],
                      traceback="".join(lines)[-3000:])
    result["seconds"] = round(time.perf_counter() - start, 3)
    result["problems"] = judge(case, result, path)
    result["passed"] = not result["problems"]
    return result


def where_of(case: dict[str, Any], path: Path | None) -> str | None:
    """What the error must name: ``where`` from the manifest, else the case file's name."""
    if "where" in case:
        return case["where"]
    return path.name if path else None


def judge(case: dict[str, Any], result: dict[str, Any], path: Path | None) -> list[str]:
    """Why ``result`` does not meet the case's expectation (empty when it does)."""
    expect = result["expect"]
    outcome = result["outcome"]
    problems = []
    if expect == "error":
        if outcome != "error":
            return [f"expected a one-line user error, got {outcome}"
                    + (f": {result['message'][:300]}" if outcome == "traceback" else "")]
        message = result["message"]
        if "\n" in message:
            problems.append(f"message has {message.count(chr(10)) + 1} lines")
        if len(message) > MAX_MESSAGE:
            problems.append(f"message is {len(message)} characters long (over {MAX_MESSAGE})")
        wanted = [w for w in [where_of(case, path), *case.get("contains", [])] if w]
        problems += [f"message lacks {w!r}" for w in wanted if w not in message]
        return problems
    if outcome != "ok":
        return [f"expected the data to load, got {outcome}: {result.get('message', '')[:300]}"]
    if "records" in case and result.get("records") != case["records"]:
        problems.append(f"records: expected {case['records']}, got {result.get('records')}")
    if expect == "skip" and result.get("skipped") != case["skipped"]:
        problems.append(f"skipped: expected {case['skipped']} (the bad records planted), "
                        f"got {result.get('skipped')}")
    for name, count in (case.get("notes") or {}).items():
        if result.get("notes", {}).get(name) != count:
            problems.append(f"note {name!r}: expected {count}, got "
                            f"{result.get('notes', {}).get(name)}")
    return problems


def run_corpus(cases: list[dict[str, Any]] | None = None,
               work: Path | None = None) -> list[dict[str, Any]]:
    """Every case's judged result, in manifest order (scratch files under ``work`` or a temp dir)."""
    cases = load_cases() if cases is None else cases
    with contextlib.ExitStack() as stack:
        if work is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="malformed-")))
        env = Env(work)
        return [run_case(case, env) for case in cases]


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The figure: how many error cases end in a clear one-line error, tracebacks, skip checks."""
    errors = [r for r in results if r["expect"] == "error"]
    skips = [r for r in results if r["expect"] == "skip"]
    oks = [r for r in results if r["expect"] == "ok"]
    clear = sum(r["passed"] for r in errors)
    return {
        "cases": len(results),
        "error_cases": len(errors),
        "clear_one_line_errors": clear,
        "clear_fraction": round(clear / len(errors), 4) if errors else None,
        "tracebacks": sum(r["outcome"] == "traceback" for r in results),
        "skip_cases": len(skips),
        "skip_count_exact": sum(r["passed"] for r in skips),
        "planted_bad_records": sum(int(r.get("skipped") or 0) for r in skips if r["passed"]),
        "handled_quirk_cases": len(oks),
        "handled_quirks_ok": sum(r["passed"] for r in oks),
        "passed": sum(r["passed"] for r in results),
        "failed_ids": [r["id"] for r in results if not r["passed"]],
        "by_runner": _by_runner(results),
        "seconds": round(sum(r["seconds"] for r in results), 2),
    }


def _by_runner(results: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for r in results:
        entry = out.setdefault(r["run"], {"cases": 0, "passed": 0})
        entry["cases"] += 1
        entry["passed"] += int(r["passed"])
    return out


def markdown(summary: dict[str, Any], before: dict[str, Any] | None, command: str,
             load: str, before_note: str | None = None) -> str:
    """The ``malformed.md`` section."""
    def row(name: str, s: dict[str, Any]) -> str:
        frac = f"{100 * s['clear_fraction']:.1f} %" if s["clear_fraction"] is not None else "–"
        return (f"| {name} | {s['cases']} | {s['clear_one_line_errors']}/{s['error_cases']} "
                f"({frac}) | {s['tracebacks']} | {s['skip_count_exact']}/{s['skip_cases']} | "
                f"{s['handled_quirks_ok']}/{s['handled_quirk_cases']} |")

    lines = [
        "## Malformed input (issue 19, part 2)",
        "",
        ("Every case of `tests/data/malformed/cases.yaml` (a small bad file or folder: truncated "
        "JSON, wrong types, missing fields, non-UTF-8 bytes, byte-order marks, very long lines, "
        "HH transcripts without an assistant turn, mismatched chosen/rejected prompts, NaN/inf "
        "scores, empty files, duplicate ids, broken CSV/JSON/parquet files, configs and recipes "
        "with unknown keys, wrong types, out-of-range values, YAML syntax errors, bad stage "
        "references and cycles, broken model folders and fake GGUF files) is read in-process "
        "through the stage's reader or `alignlab.cli.main`. An *error* case passes when the user "
        "sees one line (at most 1000 characters, no traceback) naming the file (or config key) "
        "and the line / field / key; a *skip* case passes when `on_bad_record: skip` skips exactly "
        "the bad records planted and keeps every good one; a *quirk* case passes when the data "
        "loads with the expected records and counted notes."),
        "",
        ("| run | cases | clear one-line errors (goal 100 %) | tracebacks (goal 0) | "
        "skip count exact | quirks handled |"),
        "|---|---|---|---|---|---|",
    ]
    if before is not None:
        lines.append(row("before the fixes", before))
    lines.append(row("now", summary))
    old = (before or {}).get("by_runner", {})
    lines += ["", "| reader / entry point | cases | passed before | passed now |",
              "|---|---|---|---|"]
    lines += [f"| {name} | {v['cases']} | {old.get(name, {}).get('passed', '–')} | {v['passed']} |"
              for name, v in sorted(summary["by_runner"].items())]
    if summary["failed_ids"]:
        lines += ["", "Still failing: " + ", ".join(f"`{i}`" for i in summary["failed_ids"])]
    lines += ["", (f"Command: `{command}` ({summary['seconds']} s of case time; load average at the "
                   f"start: {load}; {platform.python_version()}, {platform.machine()})."), ""]
    if before_note:
        lines[-1:-1] = [f"Before: {before_note}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the corpus and write ``malformed.json`` and ``malformed.md``; exit 1 if a case fails."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--before", type=Path, default=None,
                        help="an earlier malformed.json whose summary is shown as 'before'")
    parser.add_argument("--before-note", default=None,
                        help="how the --before run was made (shown under the table)")
    parser.add_argument("--only", default=None, help="run only the cases whose id starts so")
    args = parser.parse_args(argv)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    cases = load_cases()
    if args.only:
        cases = [c for c in cases if c["id"].startswith(args.only)]
    start = time.perf_counter()
    results = run_corpus(cases)
    summary = summarise(results)
    summary["wall_seconds"] = round(time.perf_counter() - start, 2)
    before = None
    if args.before is not None:
        before = json.loads(args.before.read_text())["summary"]
    command = "python benchmarks/reliability/malformed.py" + (
        f" --before {args.before}" if args.before else "")
    report = {"summary": summary, "before": before, "before_note": args.before_note,
              "load_average_at_start": load, "command": command, "cases": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "malformed.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (args.out / "malformed.md").write_text(markdown(summary, before, command, load,
                                                   args.before_note))
    print(json.dumps({k: v for k, v in summary.items() if k != "by_runner"}, indent=1))
    for r in results:
        if not r["passed"]:
            print(f"FAIL {r['id']}: {'; '.join(r['problems'])}", file=sys.stderr)
    return 0 if not summary["failed_ids"] else 1


if __name__ == "__main__":
    sys.exit(main())
