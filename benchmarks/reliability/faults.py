"""Resource faults (issue 19, parts 4 and 6): run the fault tests and write faults.json / faults.md.

    OMP_NUM_THREADS=1 python benchmarks/reliability/faults.py

Runs ``tests/test_faults.py`` (about 30-60 s on two quiet cores), reads each test's outcome and time
from pytest's JUnit XML, and writes the catalogue below with them: every fault injected, how it is
injected, what alignlab does about it, and the test that shows it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TESTS = "tests/test_faults.py"

HTTP_HANDLING = ("retried (backoff retry_backoff_s·2^k, at most 30 s), then the same answer as without "
                 "the fault")
CATALOGUE = [
    # part 4: the HTTP judge endpoint
    {"fault": "HTTP 500 / 502 / 503 / 504 (twice)", "area": "http judge",
     "injected": "FaultPlan status reply from the loopback completions server",
     "handling": HTTP_HANDLING,
     "test": [f"test_a_transient_fault_is_retried_and_the_answer_is_unchanged[{c}]"
              for c in (500, 502, 503, 504)]},
    {"fault": "HTTP 429 (twice)", "area": "http judge", "injected": "FaultPlan status 429",
     "handling": HTTP_HANDLING,
     "test": "test_a_transient_fault_is_retried_and_the_answer_is_unchanged[429]"},
    {"fault": "connection dropped without a reply (twice)", "area": "http judge",
     "injected": "FaultPlan 'drop': the server closes the socket", "handling": HTTP_HANDLING,
     "test": "test_a_transient_fault_is_retried_and_the_answer_is_unchanged[drop]"},
    {"fault": "truncated JSON body with status 200 (twice)", "area": "http judge",
     "injected": "FaultPlan 'malformed'", "handling": HTTP_HANDLING,
     "test": "test_a_transient_fault_is_retried_and_the_answer_is_unchanged[malformed]"},
    {"fault": "no reply within timeout_s", "area": "http judge",
     "injected": "FaultPlan 'timeout': the server answers after 2 s, the client waits 1 s",
     "handling": HTTP_HANDLING,
     "test": "test_a_transient_fault_is_retried_and_the_answer_is_unchanged[timeout]"},
    {"fault": "Retry-After on 429 / 503", "area": "http judge",
     "injected": "FaultPlan retry_after=0.25 s, then 1000 s",
     "handling": "waits the server's Retry-After instead of the backoff; capped at 30 s",
     "test": "test_retry_after_is_honoured_and_capped"},
    {"fault": "endpoint down for good (500 on every request)", "area": "http judge",
     "injected": "FaultPlan then='500'",
     "handling": "waits 10, 20, 30, 30 s (retry_backoff_s 10, cap 30) and stops after "
                 "max_retries + 1 attempts with one JudgeError line naming the endpoint",
     "test": "test_backoff_doubles_and_is_capped_then_one_line_error"},
    {"fault": "endpoint dies after one request (503 / 429 / drop / timeout / malformed)",
     "area": "http judge", "injected": "FaultPlan script [ok], then the fault",
     "handling": "one line: endpoint, attempts, cause; never the API key; JudgeError.texts = the "
                 "positions of the failed request's texts",
     "test": "test_a_dead_endpoint_fails_in_one_line_naming_it_and_the_texts"},
    {"fault": "200 reply without logprobs", "area": "http judge", "injected": "FaultPlan 'no_logprobs'",
     "handling": "not retried (the same request would get the same reply): one line at once",
     "test": "test_a_reply_without_logprobs_fails_at_once"},
    {"fault": "500 / drop / malformed during sampled CoT continuations", "area": "http judge",
     "injected": "FaultPlan script on concurrent one-text requests",
     "handling": "each request retried on its own; continuations equal the fault-free ones "
                 "(per-text seeds)",
     "test": "test_sampled_continuations_survive_faults"},
    {"fault": "endpoint dies in the middle of a label job", "area": "label stage",
     "injected": "FaultPlan: chunk 2 gets a 500 and chunk 3 a drop (both retried), chunk 4 gets 503 "
                 "for good",
     "handling": "exit code 2 with one 'error:' line naming the endpoint, the input pairs (6-7) and "
                 "the 6 labels kept in labels.jsonl; rerun labels only pairs 6-9 (2 requests) and "
                 "labels.jsonl equals the uninterrupted run's",
     "test": "test_label_job_stops_on_a_dead_endpoint_keeps_its_labels_and_resumes"},
    # part 2: disk full / unwritable
    {"fault": "ENOSPC half-way through an append", "area": "JSONL jobs, metrics, logs",
     "injected": "os.write writes half the buffer, then raises OSError(ENOSPC)",
     "handling": "the file is cut back to its old length (no torn row) and StorageError says "
                 "'cannot write PATH: disk full ...'; the next append works",
     "test": "test_append_is_all_or_nothing_when_the_disk_fills"},
    {"fault": "file-size limit (EFBIG) while labels.jsonl grows", "area": "label stage",
     "injected": "a child process with RLIMIT_FSIZE and SIGXFSZ ignored: the kernel fails the "
                 "write half-way",
     "handling": "exit code 2, one 'error: cannot write .../labels.jsonl: file too large ...' line, "
                 "no traceback; only whole rows kept; rerun without the limit = uninterrupted output",
     "test": "test_label_job_past_a_file_size_limit_stops_cleanly_and_resumes"},
    {"fault": "file-size limit (EFBIG) while saving a checkpoint", "area": "training loop",
     "injected": "RLIMIT_FSIZE lowered for the step-4 save only (weights fit, torch's optimiser "
                 "file does not)",
     "handling": "StorageError naming checkpoints/step-4; the half-written folder is removed, "
                 "step-2 kept; rerun resumes from step 2 and ends with the uninterrupted weights "
                 "(< 1e-6)",
     "test": "test_checkpoint_past_a_file_size_limit_is_dropped_and_training_resumes"},
    {"fault": "real ENOSPC (a tmpfs too small for the step-4 checkpoint)", "area": "training loop",
     "injected": "mount -t tmpfs -o size=...; remount bigger afterwards (root only; skipped "
                 "elsewhere)",
     "handling": "StorageError 'disk full' naming checkpoints/step-4, folder removed, metrics.jsonl "
                 "whole; once space is back the rerun resumes and matches the uninterrupted run",
     "test": "test_checkpoint_on_a_full_disk_then_space_is_back"},
    {"fault": "real ENOSPC while a label job writes", "area": "label stage",
     "injected": "a 16 KiB tmpfs as the run folder, then remounted at 4 MiB",
     "handling": "exit code 2, one 'error: cannot write ...: disk full' line; whole rows kept; "
                 "rerun finishes with the uninterrupted labels",
     "test": "test_label_job_on_a_full_disk_then_space_is_back"},
    {"fault": "run folder not writable (EPERM / EACCES / EROFS)", "area": "every stage",
     "injected": "out under /sys (mkdir: EPERM even for root)",
     "handling": "one 'error: cannot write ...: not writable ...' line before any model loads",
     "test": "test_an_unwritable_run_folder_is_one_line"},
]

NOTES = [
    "How it works. `alignlab.feedback.http.HTTPJudge._post` retries transport errors, timeouts, 429/5xx "
    "and non-JSON bodies `max_retries` times (default 3) after `retry_backoff_s`·2^k s (default 1 s; "
    "each wait at most 30 s; a numeric `Retry-After` wins, capped at 30 s), then raises one "
    "`JudgeError` line (endpoint, attempts, cause; the key is redacted) tagged with the failed "
    "request's text positions, which the `label` stage turns into input pair indices. Everything a "
    "run appends (labels.jsonl and the other JSONL jobs, metrics.jsonl, log.txt) goes through "
    "`alignlab.storage.append_text`, which cuts a half-written append back off; whole-file writes "
    "(config, JSON outputs, checkpoints, model folders, DONE) run inside `alignlab.storage.writing`, "
    "which turns ENOSPC / EDQUOT / EFBIG / EROFS / EACCES / EPERM - also when only the message says so "
    "(safetensors' Rust writer) or torch's writer says just 'file write failed' (then the free space "
    "and the file-size limit are looked at) - into `StorageError`: 'cannot write PATH: CAUSE; ADVICE "
    "and rerun the same command (finished work is kept)'. The CLI prints it as one `error:` line "
    "(exit code 2). A checkpoint or model folder that failed is removed, which frees its space.",
    "",
    "Not covered: an HTTP-date `Retry-After` (only seconds are read; a date falls back to the backoff); "
    "a full disk while the tokenizer files of a model folder are written is handled like the weights "
    "but not tested separately; trackers (wandb, tensorboard) write on their own and are not wrapped.",
]


def run_tests() -> tuple[dict[str, dict], str, float]:
    """Outcome and seconds of every test in TESTS (by name with its parameters)."""
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        start = time.time()
        done = subprocess.run([sys.executable, "-m", "pytest", TESTS, "-q", "-p", "no:cacheprovider",
                               f"--junitxml={xml}"], cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.time() - start
        results = {}
        for case in ET.parse(xml).getroot().iter("testcase"):
            outcome = "passed"
            for kind in ("failure", "error", "skipped"):
                if case.find(kind) is not None:
                    outcome = "failed" if kind in ("failure", "error") else "skipped"
            results[case.get("name")] = {"outcome": outcome, "seconds": round(float(case.get("time")), 2)}
    return results, done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "", wall


def main() -> None:
    results, summary, wall = run_tests()
    rows = []
    for entry in CATALOGUE:
        wanted = entry["test"] if isinstance(entry["test"], list) else [entry["test"]]
        matched = {name: r for name, r in results.items()
                   if name in wanted or name.split("[")[0] in wanted}
        outcomes = sorted({r["outcome"] for r in matched.values()}) or ["not run"]
        rows.append({**entry, "outcome": "/".join(outcomes),
                     "seconds": round(sum(r["seconds"] for r in matched.values()), 2),
                     "cases": len(matched)})
    load = os.getloadavg()
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "command": "OMP_NUM_THREADS=1 python benchmarks/reliability/faults.py",
              "pytest": summary, "wall_s": round(wall, 1), "load_avg_after": [round(x, 2) for x in load],
              "tests": results, "faults": rows}
    (HERE / "faults.json").write_text(json.dumps(report, indent=1))
    lines = ["## Resource faults (issue 19, parts 4 and 6): catalogue", "",
             f"`{report['command']}` ran `{TESTS}` on {report['date']}: {summary} "
             f"({report['wall_s']} s wall; load average after: {report['load_avg_after']}).", "",
             "| fault | where | injected by | what happens | test | result (s) |", "|---|---|---|---|---|---|"]
    for r in rows:
        names = r["test"] if isinstance(r["test"], list) else [r["test"]]
        lines.append(f"| {r['fault']} | {r['area']} | {r['injected']} | {r['handling']} | "
                     f"{', '.join(f'`{n}`' for n in names)} | {r['outcome']} ({r['seconds']}) |")
    (HERE / "faults.md").write_text("\n".join(lines + ["", *NOTES]) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
