"""Resource faults (issue 19, parts 4 and 6): a failing HTTP judge endpoint and a full disk.

The endpoint is the loopback completions server (a tiny Llama with the character tokenizer) with a
scripted :class:`FaultPlan`: 5xx/429 statuses, timeouts, dropped connections, truncated JSON and
replies without ``logprobs``. The disk faults are real where the kernel lets us: a file-size limit
(``RLIMIT_FSIZE`` with SIGXFSZ ignored, so a write past it fails with EFBIG half-way), and ENOSPC
raised from ``os.write`` after half a buffer. Each case checks the one-line error, that nothing
written before is lost or torn, and that the same command then finishes with the outputs of an
uninterrupted run. Results: benchmarks/reliability/faults.md.
"""

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_models_tiny import make_tiny_lm, make_tokenizer, save_tiny_lm
from typer.testing import CliRunner

from alignlab.cli import app
from alignlab.config import JudgeSettings
from alignlab.feedback.http import HTTPJudge, JudgeError
from alignlab.feedback.testing_server import FaultPlan, serve_completions
from alignlab.stages import load_stage_config, run_stage
from alignlab.storage import StorageError, append_text

KEY = "sk-fault-SECRET-9191"
KEY_ENV = "ALIGNLAB_FAULT_TEST_KEY"
TEXTS = ["<user>is the sky blue?\n<assistant>", "<user>2+2?\n<assistant>", "<user>hi\n<assistant>ok",
         "<user>cat?\n<assistant>", "<user>pick one\n<assistant>i pick "]
OPTIONS = ["A", "B"]
VOCAB = 98  # = the char tokenizer's size, so a top-98 map is the whole next-token distribution


# ----------------------------------------------------------------------------- the endpoint


@pytest.fixture(scope="module")
def endpoint():
    """The completions server with a fault plan (reset before each test) and an API key."""
    plan = FaultPlan(delay_s=2.0)
    server, url = serve_completions(make_tiny_lm(vocab_size=VOCAB), make_tokenizer(), api_key=KEY,
                                    model_name="tiny", max_logprobs=VOCAB, faults=plan)
    yield plan, url
    server.shutdown()
    server.server_close()


@pytest.fixture
def plan(endpoint, monkeypatch):
    faults, _ = endpoint
    faults.reset()
    faults.requests, faults.injected, faults.retry_after = 0, [], None
    monkeypatch.setenv(KEY_ENV, KEY)
    return faults


def _judge(url, delays=None, **extra):
    settings = {"kind": "http", "url": url, "model_name": "tiny", "api_key_env": KEY_ENV,
                "top_logprobs": VOCAB, "timeout_s": 1.0, "retry_backoff_s": 0.01, **extra}
    judge = HTTPJudge(JudgeSettings(**settings))
    if delays is not None:
        judge._sleep = delays.append  # record the waits instead of sleeping
    return judge


@pytest.fixture(scope="module")
def clean(endpoint):
    """What the endpoint answers without faults: option probabilities and sampled continuations."""
    _, url = endpoint
    os.environ[KEY_ENV] = KEY
    try:
        judge = _judge(url, batch_size=2)
        return judge.option_probs(TEXTS, OPTIONS), judge.continue_texts(TEXTS[:3], 6, 1.0, seed=3)
    finally:
        del os.environ[KEY_ENV]


@pytest.mark.parametrize("fault", ["500", "502", "503", "504", "429", "drop", "malformed", "timeout"])
def test_a_transient_fault_is_retried_and_the_answer_is_unchanged(endpoint, clean, plan, fault):
    _, url = endpoint
    twice = fault != "timeout"  # a timeout costs timeout_s of real time: once is enough
    plan.reset([fault, fault] if twice else [fault])
    delays = []
    judge = _judge(url, delays, batch_size=16)
    assert judge.option_probs(TEXTS, OPTIONS) == clean[0]  # bit-identical to the fault-free call
    assert plan.injected == ([fault] * 2 if twice else [fault])
    assert plan.requests == len(plan.injected) + 1 and judge.retries == len(plan.injected)
    assert delays == pytest.approx([0.01, 0.02] if twice else [0.01])
    assert 0 < clean[0][0][0] < 1 and judge.missing_options == 0


def test_retry_after_is_honoured_and_capped(endpoint, clean, plan):
    _, url = endpoint
    plan.retry_after = 0.25
    plan.reset(["429", "503"])
    delays = []
    assert _judge(url, delays).option_probs(TEXTS, OPTIONS) == clean[0]
    assert delays == [0.25, 0.25]  # the server's Retry-After, not the 0.01 s backoff
    plan.retry_after = 1000
    plan.reset(["429"])
    delays.clear()
    assert _judge(url, delays).option_probs(TEXTS[:1], OPTIONS) == clean[0][:1]
    assert delays == [30.0]  # capped at MAX_RETRY_AFTER_S


def test_backoff_doubles_and_is_capped_then_one_line_error(endpoint, plan):
    _, url = endpoint
    plan.reset(then="500")
    delays = []
    judge = _judge(url, delays, retry_backoff_s=10.0, max_retries=4)
    with pytest.raises(JudgeError) as info:
        judge.option_probs(TEXTS, OPTIONS)
    assert delays == [10.0, 20.0, 30.0, 30.0] and plan.requests == 5
    message = str(info.value)
    assert message == (f"judge request to {url}/completions failed after 5 attempts: "
                       f"HTTP 500: injected fault 500")
    assert info.value.texts == (0, 5)


@pytest.mark.parametrize("fault, status", [("503", "HTTP 503: injected fault 503"),
                                           ("429", "HTTP 429: injected fault 429"),
                                           ("drop", "no response: "),
                                           ("timeout", "timed out: no reply within timeout_s = 1 s"),
                                           ("malformed", "bad reply: the reply is not JSON: ")])
def test_a_dead_endpoint_fails_in_one_line_naming_it_and_the_texts(endpoint, plan, fault, status):
    _, url = endpoint
    plan.reset([None], then=fault)  # the first request (texts 0-1) works, then every one fails
    retries = 0 if fault == "timeout" else 2
    with pytest.raises(JudgeError) as info:
        _judge(url, [], batch_size=2, max_retries=retries).option_probs(TEXTS, OPTIONS)
    message = str(info.value)
    attempts = f" after {retries + 1} attempts" if retries else ""
    assert message.startswith(f"judge request to {url}/completions failed{attempts}: {status}")
    assert "\n" not in message and KEY not in message
    assert info.value.texts == (2, 4)  # the second request's texts
    assert plan.requests == 1 + retries + 1


def test_a_reply_without_logprobs_fails_at_once(endpoint, plan):
    _, url = endpoint
    plan.reset(["no_logprobs"])
    with pytest.raises(JudgeError, match="no logprobs.top_logprobs") as info:
        _judge(url, [], max_retries=3).option_probs(TEXTS, OPTIONS)
    assert plan.requests == 1 and info.value.texts == (0, 5)  # the same request would fail again


def test_sampled_continuations_survive_faults(endpoint, clean, plan):
    _, url = endpoint
    plan.reset(["500", "drop", "malformed"])
    judge = _judge(url, [], batch_size=3)
    assert judge.continue_texts(TEXTS[:3], 6, 1.0, seed=3) == clean[1]  # per-text seeds: same text
    assert judge.retries == 3 and plan.requests == 6


# ----------------------------------------------------------------------------- the label stage


def _pairs_file(path, n, pad=0):
    rows = [{"prompt": [{"role": "user", "content": f"question {i}?"}],
             "chosen": f"yes {i} " + "y" * pad, "rejected": "no " + "n" * pad, "label": 1.0}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rows(folder):
    return [json.loads(line) for line in (Path(folder) / "labels.jsonl").read_text().splitlines()]


def _http_label_args(url, data, out):
    return ["label", "judge.kind=http", f"judge.url={url}", "judge.model_name=tiny",
            f"judge.api_key_env={KEY_ENV}", f"judge.top_logprobs={VOCAB}", "judge.max_retries=2",
            "judge.retry_backoff_s=0.001", "judge.timeout_s=10", f"data.path={data}", f"out={out}",
            "constitution=gym", "flush_every=2"]


def test_label_job_stops_on_a_dead_endpoint_keeps_its_labels_and_resumes(endpoint, plan, tmp_path):
    _, url = endpoint
    data = _pairs_file(tmp_path / "pairs.jsonl", 10)
    straight, faulty = tmp_path / "straight", tmp_path / "faulty"
    run_stage(load_stage_config("label", None, _http_label_args(url, data, straight)[1:]))
    assert plan.requests == 5  # one request (2 pairs x 2 orders) per chunk
    expected = _rows(straight)
    assert [r["index"] for r in expected] == list(range(10)) and len({r["label"] for r in expected}) > 1

    plan.reset([None, "500", None, "drop", None], then="503")  # chunks 1-3 (after 2 retries), then dead
    plan.requests = 0
    result = CliRunner().invoke(app, _http_label_args(url, data, faulty))
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and KEY not in result.output
    assert errors[0] == (f"error: judge request to {url}/completions failed after 3 attempts: "
                         f"HTTP 503: injected fault 503 (labelling input pair 6-7 of {data}, 0-based; "
                         f"the 6 pairs labelled so far are kept in {faulty / 'labels.jsonl'}: rerun "
                         f"the same command to label the rest)")
    assert _rows(faulty) == expected[:6]

    plan.reset()  # the endpoint is back
    plan.requests = 0
    run_stage(load_stage_config("label", None, _http_label_args(url, data, faulty)[1:]))
    assert plan.requests == 2  # pairs 6-9 only: nothing finished is labelled again
    assert _rows(faulty) == expected
    stats = json.loads((faulty / "label_stats.json").read_text())
    assert stats["pairs"] == 10 and stats["http_missing_options"] == 0


# ----------------------------------------------------------------------------- a full disk


def test_append_is_all_or_nothing_when_the_disk_fills(tmp_path, monkeypatch):
    target = tmp_path / "rows.jsonl"
    target.write_text('{"index": 0}\n')
    real_write, calls = os.write, []

    def half_then_enospc(fd, data):
        if os.path.realpath(f"/proc/self/fd/{fd}") != str(target.resolve()):
            return real_write(fd, data)
        calls.append(len(data))
        if len(calls) == 1:  # the first call writes half, the next one finds the disk full
            return real_write(fd, bytes(data[:len(data) // 2]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_enospc)
    with pytest.raises(StorageError) as info:
        append_text(target, '{"index": 1}\n{"index": 2}\n')
    assert str(info.value) == (f"cannot write {target}: disk full (no space left on device, ENOSPC); "
                               f"free some space and rerun the same command (finished work is kept)")
    assert info.value.errno == 28
    assert len(calls) == 2  # half written, then ENOSPC
    assert target.read_text() == '{"index": 0}\n'  # the half-written rows were cut back off
    monkeypatch.setattr(os, "write", real_write)
    append_text(target, '{"index": 1}\n')
    assert target.read_text() == '{"index": 0}\n{"index": 1}\n'


@pytest.fixture(scope="module")
def judge_folder(tmp_path_factory):
    return str(save_tiny_lm(tmp_path_factory.mktemp("judge"), vocab_size=VOCAB))


def _local_label_args(folder, data, out):
    return [f"judge.model.path={folder}", f"data.path={data}", f"out={out}", "constitution=gym",
            "flush_every=2"]


LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
from alignlab.cli import app
app(sys.argv[2:], prog_name="alignlab")
"""


def test_label_job_past_a_file_size_limit_stops_cleanly_and_resumes(tmp_path, judge_folder):
    data = _pairs_file(tmp_path / "pairs.jsonl", 12, pad=120)
    straight, limited = tmp_path / "straight", tmp_path / "limited"
    run_stage(load_stage_config("label", None, _local_label_args(judge_folder, data, straight)))
    expected = _rows(straight)
    sizes = {p.name: p.stat().st_size for p in straight.iterdir()}
    limit = max(size for name, size in sizes.items() if name != "labels.jsonl") + 100
    assert sizes["labels.jsonl"] > 2 * limit  # the limit bites labels.jsonl half-way, nothing else

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", LIMITED, str(limit), "label",
                           *_local_label_args(judge_folder, data, limited)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: cannot write {limited / 'labels.jsonl'}: file too large for the "
                      f"file-size limit (EFBIG; see `ulimit -f`); raise the file-size limit and "
                      f"rerun the same command (finished work is kept)"]
    raw = (limited / "labels.jsonl").read_bytes()
    assert raw.endswith(b"\n") and len(raw) <= limit  # whole rows only: the torn chunk was cut back
    kept = _rows(limited)
    assert 0 < len(kept) < len(expected) and kept == expected[:len(kept)]

    run_stage(load_stage_config("label", None, _local_label_args(judge_folder, data, limited)))
    assert _rows(limited) == expected  # the same labels as the uninterrupted run


def test_checkpoint_past_a_file_size_limit_is_dropped_and_training_resumes(tmp_path, monkeypatch):
    from safetensors.torch import load_file
    from test_train_stages import _sft_config

    import alignlab.train.loop as loop
    from alignlab.runs import RunFolder
    from alignlab.train.sft import run_sft

    folder = _tiny_sft_model(tmp_path / "tiny")
    straight = _sft_config(folder, tmp_path, tmp_path / "straight", max_steps=6)
    run_sft(straight, RunFolder(straight.out, straight, echo=False))

    real_save = loop.save_checkpoint

    def full_at_step_4(acc, checkpoint_dir, step):
        if step != 4:
            return real_save(acc, checkpoint_dir, step)
        old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (120_000, hard))  # weights fit, the optimiser not
        try:
            return real_save(acc, checkpoint_dir, step)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            signal.signal(signal.SIGXFSZ, old_handler)

    cfg = _sft_config(folder, tmp_path, tmp_path / "run", max_steps=6, save_every=2)
    monkeypatch.setattr(loop, "save_checkpoint", full_at_step_4)
    with pytest.raises(StorageError) as info:
        run_sft(cfg, RunFolder(cfg.out, cfg, echo=False))
    step4 = tmp_path / "run" / "checkpoints" / "step-4"
    assert str(info.value).startswith(f"cannot write {step4}: file too large for the file-size limit")
    assert not step4.exists()  # the half-written checkpoint was removed (its space freed)
    assert (tmp_path / "run" / "checkpoints" / "step-2" / "COMPLETE").exists()
    assert not (tmp_path / "run" / "model").exists()

    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    run_sft(cfg, RunFolder(cfg.out, cfg, echo=False))
    assert "resumed from" in (tmp_path / "run" / "log.txt").read_text()
    a = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6


def _tiny_sft_model(folder):
    """test_train_stages' tiny Llama (2 layers, hidden 32) and char tokenizer, saved to ``folder``."""
    from test_train_stages import save_tiny_char_model

    return save_tiny_char_model(folder)


# ----------------------------------------------------------------------------- a real full disk


@pytest.fixture
def small_disk(tmp_path):
    """``(folder, resize)``: a real tmpfs mounted at ``folder`` (needs root with CAP_SYS_ADMIN, as
    in the development container; skipped elsewhere); ``resize(kib)`` changes its size in place."""
    folder = tmp_path / "disk"
    folder.mkdir()

    def mount(*options):
        return subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(folder)],
                              capture_output=True, text=True)

    if os.geteuid() != 0 or mount("size=4m").returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root or no CAP_SYS_ADMIN)")

    def resize(kib):
        subprocess.run(["mount", "-o", f"remount,size={kib}k", str(folder)], check=True,
                       capture_output=True)

    yield folder, resize
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _folder_kib(folder):
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) // 1024


def test_checkpoint_on_a_full_disk_then_space_is_back(tmp_path, small_disk):
    from safetensors.torch import load_file
    from test_train_stages import _sft_config

    from alignlab.runs import RunFolder
    from alignlab.train.sft import run_sft

    disk, resize = small_disk
    folder = _tiny_sft_model(tmp_path / "tiny")
    straight = _sft_config(folder, tmp_path, tmp_path / "straight", max_steps=6, save_every=2)
    run_sft(straight, RunFolder(straight.out, straight, echo=False))
    checkpoint = _folder_kib(tmp_path / "straight" / "checkpoints" / "step-2")
    resize(checkpoint * 3 // 2 + 32)  # room for step-2 and the logs; step-4 runs out half-way

    cfg = _sft_config(folder, tmp_path, disk / "run", max_steps=6, save_every=2)
    with pytest.raises(StorageError) as info:
        run_sft(cfg, RunFolder(cfg.out, cfg, echo=False))
    step4 = disk / "run" / "checkpoints" / "step-4"
    assert str(info.value).startswith(f"cannot write {step4}: disk full (no space left on device, "
                                      f"ENOSPC); free some space and rerun the same command")
    assert not step4.exists() and (disk / "run" / "checkpoints" / "step-2" / "COMPLETE").exists()
    rows = [json.loads(line) for line in (disk / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]  # whole lines, none torn

    resize(4096)  # space is back
    run_sft(cfg, RunFolder(cfg.out, cfg, echo=False))
    assert "resumed from" in (disk / "run" / "log.txt").read_text()
    a = load_file(str(disk / "run" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6


def test_label_job_on_a_full_disk_then_space_is_back(tmp_path, judge_folder, small_disk):
    disk, resize = small_disk
    data = _pairs_file(tmp_path / "pairs.jsonl", 12, pad=120)
    straight = tmp_path / "straight"
    run_stage(load_stage_config("label", None, _local_label_args(judge_folder, data, straight)))
    expected = _rows(straight)
    resize(16)  # 4 pages: config, log and metrics take one each, labels.jsonl fills the rest
    out = disk / "run"
    result = CliRunner().invoke(app, ["label", *_local_label_args(judge_folder, data, out)])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(
        f"error: cannot write {out}/") and "disk full (no space left on device, ENOSPC)" in errors[0]
    kept = _rows(out)
    assert (out / "labels.jsonl").read_bytes().endswith(b"\n")
    assert 0 < len(kept) < len(expected) and kept == expected[:len(kept)]

    resize(4096)
    run_stage(load_stage_config("label", None, _local_label_args(judge_folder, data, out)))
    assert _rows(out) == expected


def test_an_unwritable_run_folder_is_one_line(tmp_path):
    out = "/sys/alignlab-fault-test/run"  # mkdir fails with EPERM there, even for root
    if os.path.exists("/sys/alignlab-fault-test") or not os.path.isdir("/sys/kernel"):
        pytest.skip("no read-only /sys here")
    data = _pairs_file(tmp_path / "pairs.jsonl", 2)
    result = CliRunner().invoke(app, ["label", "judge.model.path=unused", f"data.path={data}",
                                      f"out={out}"])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        f"error: cannot write {out}: not writable: operation not permitted (EPERM); make the folder "
        f"writable (or choose another 'out') and rerun the same command (finished work is kept)"]
