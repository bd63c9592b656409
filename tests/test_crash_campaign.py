"""Kill -9 at every write window, then resume: crash points, torn lines, metrics rewound to the
resumed step, incomplete checkpoints ignored with a log line, atomic writes, and a subset of the crash
campaign (benchmarks/reliability/crash.py) on SFT and labelling, whose resumed outputs must equal an
uninterrupted run's bit for bit."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from alignlab import crashpoint
from alignlab.feedback.jobs import JsonlJob, append_jsonl, write_jsonl_atomic
from alignlab.runs import RunFolder, read_metrics, write_atomic
from alignlab.train.checkpoint import MARKER, latest_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _die_in_child(env: dict, action) -> int:
    """Fork; the child arms ``env`` and runs ``action`` (pure Python, no torch); returns the signal
    that ended the child (0: it exited normally)."""
    pid = os.fork()
    if pid == 0:
        try:
            os.environ.update(env)
            crashpoint.reset()  # passages the parent (this pytest process) counted do not count
            action()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0


def test_crash_point_kills_at_the_nth_append_and_recovery_keeps_whole_chunks(tmp_path):
    path = tmp_path / "rows.jsonl"
    rows = [{"index": i, "text": f"row {i}"} for i in range(4)]

    def write():
        job = JsonlJob(path)
        job.append(rows[:2])
        job.append(rows[2:])  # the second passage: all but half of row 3 written, then SIGKILL

    assert _die_in_child({crashpoint.ENV_AT: "jsonl_append:2"}, write) == signal.SIGKILL
    first = "".join(json.dumps(r) + "\n" for r in rows[:2])
    second = "".join(json.dumps(r) + "\n" for r in rows[2:])
    last = json.dumps(rows[3]) + "\n"
    assert path.read_text() == first + second[:len(second) - len(last) // 2]  # row 3 torn
    assert (tmp_path / "rows.jsonl.commits").read_text() == "2\n"  # only the first chunk finished
    job = JsonlJob(path)
    # row 2 is whole but its chunk unfinished: cut too, so the chunk is made again as one
    assert job.dropped_torn_line and job.dropped_rows == 1 and job.rows == rows[:2]
    assert path.read_text() == first
    assert job.done_indices() == {0, 1}
    job.append(rows[2:])
    assert JsonlJob(path).rows == rows and job.commits.read_text() == "2\n2\n"


def test_chunk_written_but_not_committed_is_made_again(tmp_path):
    path = tmp_path / "rows.jsonl"
    rows = [{"index": i} for i in range(4)]

    def write():
        job = JsonlJob(path)
        job.append(rows[:2])
        job.append(rows[2:])  # both rows durable, killed before the count is recorded

    assert _die_in_child({crashpoint.ENV_AT: "chunk_commit:2"}, write) == signal.SIGKILL
    job = JsonlJob(path)
    assert job.rows == rows[:2] and job.dropped_rows == 2


def test_job_file_without_commits_keeps_every_complete_line(tmp_path):
    path = tmp_path / "old.jsonl"
    path.write_text('{"index": 0}\n{"index": 1}\n{"index": 2, "te')  # an older job, torn
    job = JsonlJob(path)
    assert job.rows == [{"index": 0}, {"index": 1}] and job.dropped_torn_line
    assert job.commits.read_text() == "2\n"  # tracked from here on


def test_crash_point_counts_passages_and_rejects_a_bad_spec(tmp_path, monkeypatch):
    counts = tmp_path / "points.txt"
    monkeypatch.setenv(crashpoint.ENV_COUNT, str(counts))
    write_jsonl_atomic(tmp_path / "a.jsonl", [{"x": 1}])
    write_atomic(tmp_path / "b.json", "{}")
    append_jsonl(tmp_path / "c.jsonl", [{"x": 1}])
    assert counts.read_text().split() == ["atomic_write", "atomic_write", "jsonl_append"]
    monkeypatch.setenv(crashpoint.ENV_AT, "checkpoint")
    with pytest.raises(ValueError, match="expected point:n"):
        crashpoint.hit("checkpoint")


def test_killed_atomic_writes_leave_the_old_file(tmp_path):
    target, rows_file = tmp_path / "summary.json", tmp_path / "out.jsonl"
    target.write_text("old")
    rows_file.write_text('{"old": 1}\n')
    assert _die_in_child({crashpoint.ENV_AT: "atomic_write:1"},
                         lambda: write_atomic(target, "new")) == signal.SIGKILL
    assert target.read_text() == "old"
    assert _die_in_child({crashpoint.ENV_AT: "atomic_write:1"},
                         lambda: write_jsonl_atomic(rows_file, [{"new": 1}])) == signal.SIGKILL
    assert rows_file.read_text() == '{"old": 1}\n'
    write_atomic(target, "new")  # unarmed: replaced
    assert target.read_text() == "new"


def test_metrics_torn_line_is_dropped_and_rewind_keeps_each_step_once(tmp_path):
    first = RunFolder(tmp_path, echo=False)
    first.log_metrics({"bad_records_skipped": 0, "data": "pair"}, step=0)
    for step in range(1, 6):
        first.log_metrics({"loss": 1.0 / step}, step=step)
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 6, "lo')  # killed in the middle of step 6's row
    again = RunFolder(tmp_path, echo=False)  # the restarted command
    assert again.dropped_torn_metrics
    assert "torn line" in (tmp_path / "log.txt").read_text()
    again.log_metrics({"bad_records_skipped": 0, "data": "pair"}, step=0)  # logged at every start
    again.log_metrics({"reference_seconds": 1.5}, step=0)
    assert again.rewind_metrics(3) == 3  # steps 4 and 5, and the repeated data row
    rows = read_metrics(tmp_path)
    assert [(r["step"], sorted(k for k in r if k not in ("step", "time"))) for r in rows] == [
        (0, ["bad_records_skipped", "data"]), (1, ["loss"]), (2, ["loss"]), (3, ["loss"]),
        (0, ["reference_seconds"])]
    assert [r["loss"] for r in rows if "loss" in r] == [1.0, 0.5, 1.0 / 3]
    assert again.rewind_metrics(3) == 0


def test_incomplete_checkpoint_is_ignored_with_a_log_line(tmp_path):
    for step in (2, 4, 6):
        (tmp_path / f"step-{step}").mkdir()
        (tmp_path / f"step-{step}" / "model.safetensors").write_bytes(b"x")
    (tmp_path / "step-2" / MARKER).touch()
    (tmp_path / "step-4" / MARKER).touch()
    lines = []
    assert latest_checkpoint(tmp_path, lines.append) == tmp_path / "step-4"
    assert len(lines) == 1 and "step-6" in lines[0] and "incomplete" in lines[0]
    (tmp_path / "step-2" / MARKER).unlink()
    (tmp_path / "step-4" / MARKER).unlink()
    lines.clear()
    assert latest_checkpoint(tmp_path, lines.append) is None
    assert len(lines) == 3
    assert latest_checkpoint(tmp_path / "missing", lines.append) is None


def test_campaign_subset_sft_and_label_resume_bitwise(tmp_path):
    """SFT killed before a checkpoint's COMPLETE marker, in the middle of a metrics line and before
    the model folder is swapped in, and at a random moment; labelling killed half-way through a
    JSONL chunk. Every resumed run must equal the uninterrupted one bit for bit."""
    script = f"""
import json, sys
sys.path.insert(0, {str(ROOT / 'benchmarks' / 'reliability')!r})
import crash
plans = {{"sft": [{{"kind": "point", "point": "checkpoint", "n": 2}},
                  {{"kind": "point", "point": "metrics", "n": 9}},
                  {{"kind": "point", "point": "model_save", "n": 1}}],
          "label": [{{"kind": "point", "point": "jsonl_append", "n": 2}}]}}
from pathlib import Path
report = crash.run_campaign(Path({str(tmp_path)!r}), ["sft", "label"], 0, plans=plans,
                            log=lambda m: None)
print(json.dumps(report, default=float))
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          timeout=600, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    sft, label = report["stages"]["sft"], report["stages"]["label"]
    assert sft["crash_points"]["checkpoint"] == 4  # steps 3, 6, 9, 12
    assert sft["kills_landed"] == sft["resumes_matched"] == 3, sft["mismatches"]
    assert sft["bitwise_model"] is True
    ckpt, metrics, model = sft["trials"]
    # killed before step-6's COMPLETE: resumed from step 3 and logged that step 6 was ignored
    assert ckpt["checkpoint_ignored"] and ckpt["resumed_from_step"] == 3
    assert ckpt["steps_redone"] == 3
    # metrics hit 9 = step 8's row (hit 1 is the data report): torn, dropped; steps 7 re-done
    assert metrics["torn_line_dropped"] and metrics["resumed_from_step"] == 6
    assert metrics["steps_redone"] == 1
    # killed after training, before model/ was swapped in: resumes from step 12, trains nothing
    assert model["resumed_from_step"] == 12 and model["steps_redone"] == 0
    assert sft["leftover_temporaries"] == []  # no model.partial / model.old / *.tmp left behind
    assert label["kills_landed"] == label["resumes_matched"] == 1, label["mismatches"]
    trial = label["trials"][0]
    # the first chunk of 2 pairs and the first row of the second; its second row torn
    assert trial["torn_at_kill"] and trial["rows_at_kill"] == 3


def _crash_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "crash_campaign", ROOT / "benchmarks" / "reliability" / "crash.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_campaign_comparison_flags_duplicated_steps_changed_weights_and_rows(tmp_path):
    import torch
    from safetensors.torch import save_file

    crash = _crash_module()
    base, out = tmp_path / "base", tmp_path / "out"
    for folder, bump, steps in ((base, 0.0, [1, 2, 3]), (out, 1e-7, [1, 2, 2, 3])):
        (folder / "model").mkdir(parents=True)
        save_file({"w": torch.ones(3) + bump}, str(folder / "model" / "model.safetensors"))
        (folder / "metrics.jsonl").write_text("".join(
            json.dumps({"step": s, "time": 0.1 * s, "loss": 1.0 / s}) + "\n" for s in steps))
        (folder / "DONE").write_text("ok\n")
    problems = crash.compare_run("sft", base, out)["problems"]
    assert any("not bitwise equal" in p for p in problems)
    assert any("duplicated steps [1, 2, 2, 3]" in p for p in problems)
    (out / "metrics.jsonl").write_text((base / "metrics.jsonl").read_text())
    save_file({"w": torch.ones(3)}, str(out / "model" / "model.safetensors"))
    assert crash.compare_run("sft", base, out)["problems"] == []  # time is a wall-clock field
    rows = [{"index": i, "samples": [f"s{i}"], "seconds": i} for i in range(3)]
    (base / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2] + rows[1:2]))
    problems = crash.compare_run("sample", base, out)["problems"]
    assert problems == ["samples.jsonl: an index written twice",
                        "samples.jsonl: row 3 differs from the baseline"]
