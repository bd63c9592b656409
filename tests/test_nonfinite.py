"""Non-finite optimiser steps (issue 19 part 3): skipped exactly, counted, and K in a row stop the
run with a one-line error and a checkpoint of the last good state that resumes correctly.

NaNs are injected by wrapping the step's loss function: at chosen steps either the loss itself is
multiplied by NaN, or the loss stays finite and a backward hook turns its gradient into inf (so only
the gradient norm reveals the trouble).

What "skipped" must equal, derived: a skipped step changes no parameter, no AdamW moment or step
count and no scheduler position, and its accumulated gradients are dropped. So training with step j
skipped is AdamW applied, in order, to the batches of every other step, the schedule advancing only
on those: the k-th *applied* update uses the learning rate lr * lr_factor(k). The offline test
computes exactly that with a plain PyTorch loop (no alignlab loop code) and compares parameters.
"""

import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from dist_worker import count_tokens, make_items, pad_items, settings, sft_step, tiny_lm
from test_rl_trainer import _config, _run, prompt_file, reward_fn  # noqa: F401
from test_train_stages import _prompt, _write_jsonl, tiny_model  # noqa: F401

from alignlab.runs import RunFolder, read_metrics
from alignlab.train.forward import TokenLogprobModule
from alignlab.train.loop import train_loop
from alignlab.train.nonfinite import NonFiniteError, StepGuard, describe_nonfinite
from alignlab.train.sampler import StepSampler
from alignlab.train.schedule import lr_factor

WORKER = Path(__file__).with_name("nonfinite_worker.py")


def poisoned(bad: set[int], kind: str = "loss"):
    """``sft_step`` whose k-th call (= optimiser step k with one micro-batch) is made non-finite at
    every k in ``bad``: ``loss`` multiplies the loss by NaN; ``grad`` keeps the loss and makes the
    gradient flowing back from it inf."""
    calls = {"n": 0}

    def step_fn(model, batch):
        k = calls["n"]
        calls["n"] += 1
        total, n, metrics = sft_step(model, batch)
        if k in bad and kind == "loss":
            total = total * float("nan")
        elif k in bad:
            total.register_hook(lambda g: g * float("inf"))
        return total, n, metrics
    return step_fn


def _loop(out, cfg, step_fn=sft_step):
    return train_loop(TokenLogprobModule(tiny_lm()), make_items(), pad_items, step_fn,
                      count_tokens, cfg, RunFolder(out, echo=False), Accelerator(cpu=True))


def _skipping_reference(cfg, skip: set[int]) -> dict:
    """Plain PyTorch: AdamW on every step's batch except those in ``skip``, the schedule advancing
    only on applied updates, gradient clipping as configured (one process, one micro-batch)."""
    items = make_items()
    module = TokenLogprobModule(tiny_lm())
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    plan = StepSampler(len(items), cfg.batch_size, 1, 1, cfg.seed)
    total = plan.total_steps(cfg.epochs, cfg.max_steps)
    applied = 0
    for step in range(total):
        if step in skip:
            continue
        for group in opt.param_groups:
            group["lr"] = cfg.learning_rate * lr_factor(applied, cfg.lr_schedule, 0, total)
        batch = pad_items([items[i] for i in plan.micro_batches(step, 0)[0]])
        loss, n, _ = sft_step(module, batch)
        (loss * (1 / n)).backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        applied += 1
    return module.state_dict()


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_describe_and_guard_count_streaks():
    assert describe_nonfinite(1.5, {"policy": 2.0, "value": 0.1}) is None
    assert describe_nonfinite(math.nan, {"": 1.0}) == "loss = nan"
    assert describe_nonfinite(0.3, {"policy": 1.0, "value": math.inf}) == "value gradient norm = inf"
    guard = StepGuard(max_bad=2)
    outcomes = []
    for step, reason in enumerate([None, "loss = nan", None, "loss = nan", "loss = inf"], 1):
        guard.at = f"step {step}"
        outcomes.append((guard.observe(reason), guard.consecutive, guard.exhausted))
    assert outcomes == [(False, 0, False), (True, 1, False), (False, 0, False), (True, 1, False),
                        (True, 2, True)]
    assert (guard.skipped, guard.skipped_before_streak, guard.streak_from) == (3, 1, "step 4")
    # an fp16 loss-scale overflow is skipped and counted but never ends the run
    assert guard.observe("gradient norm = inf", extends_streak=False) and guard.consecutive == 2


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_one_bad_step_is_skipped_exactly(kind, tmp_path):
    cfg = settings(4, 1, steps=5, lr_schedule="linear", learning_rate=2e-2)
    result = _loop(tmp_path / "run", cfg, poisoned({2}, kind))
    expected = _skipping_reference(cfg, skip={2})
    unskipped = _skipping_reference(cfg, skip=set())
    params = result.model.state_dict()
    assert _max_diff(params, expected) < 1e-6
    assert _max_diff(params, unskipped) > 1e-3  # the skipped batch would have moved the weights
    assert result.skipped_steps == 1
    rows = read_metrics(tmp_path / "run")
    assert [(r["step"], r["skipped_steps"], r["bad_steps"]) for r in rows] == [
        (1, 0, 0), (2, 0, 0), (3, 1, 1), (4, 1, 0), (5, 1, 0)]
    # the schedule held still at the skipped step: step 4 runs at step 3's learning rate
    lrs = [cfg.learning_rate * lr_factor(k, "linear", 0, 5) for k in (0, 1, 2, 2, 3)]
    assert [r["lr"] for r in rows] == pytest.approx(lrs, abs=1e-12)
    assert math.isnan(rows[2]["grad_norm"]) or math.isinf(rows[2]["grad_norm"])
    assert math.isfinite(rows[2]["loss"]) == (kind == "grad")
    log = (tmp_path / "run" / "log.txt").read_text()
    reason = "loss = nan" if kind == "loss" else "gradient norm = "
    assert f"step 3/5: skipped, {reason}" in log
    assert "1 optimiser step(s) skipped as non-finite" in log


def test_consecutive_bad_steps_stop_with_a_good_checkpoint_that_resumes(tmp_path):
    out = tmp_path / "run"
    cfg = settings(4, 1, steps=6, save_every=2, max_bad_steps=2)
    with pytest.raises(NonFiniteError) as caught:
        _loop(out, cfg, poisoned({3, 4}))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("2 consecutive non-finite optimiser steps (step 4 to step 5; last: "
                              "loss = nan, gradient norm = nan) reached train.max_bad_steps=2, so "
                              "training stopped; the last good state is checkpoint ")
    assert message.endswith("step-3; resume from it (same out) with e.g. a lower "
                            "train.learning_rate")
    # step-2: periodic; step-4 (due at a skipped step) never written; step-3: the last good state
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2", "step-3"]
    resumed = _loop(out, cfg)
    straight = _loop(tmp_path / "straight", cfg)
    assert resumed.resumed_from == 3 and resumed.skipped_steps == 0
    assert [r["step"] for r in resumed.history] == [4, 5, 6]
    assert [r["loss"] for r in resumed.history] == pytest.approx(
        [r["loss"] for r in straight.history[3:]], abs=1e-6)
    assert _max_diff(resumed.model.state_dict(), straight.model.state_dict()) < 1e-6


def test_the_command_line_reports_the_stop_in_one_line(tiny_model, tmp_path, monkeypatch):  # noqa: F811
    from typer.testing import CliRunner

    from alignlab import cli
    from alignlab.train import sft

    rows = [{"messages": _prompt(q) + [{"role": "assistant", "content": a}]}
            for q, a in [("hi", "hello"), ("2+2?", "4"), ("sky?", "blue"), ("cat?", "meow")]]
    data = _write_jsonl(tmp_path / "sft.jsonl", rows)
    real = sft.sft_step

    def nan_step(module, batch):
        loss, n, metrics = real(module, batch)
        return loss * float("nan"), n, metrics
    monkeypatch.setattr(sft, "sft_step", nan_step)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli.app, ["sft", f"model.path={tiny_model}", f"data.path={data}",
                                          "data.format=alignlab", f"out={out}",
                                          "train.max_steps=3", "train.batch_size=2",
                                          "train.max_bad_steps=1"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    expected = ("error: 1 consecutive non-finite optimiser steps (step 1; last: loss = nan, "
                "gradient norm = nan) reached train.max_bad_steps=1, so training stopped; the last good state is "
                f"checkpoint {out / 'checkpoints' / 'step-0'}; resume from it (same out) with "
                "e.g. a lower train.learning_rate")
    assert lines == [expected]
    assert "Traceback" not in result.output


# ----------------------------------------------------------------------------- online trainer


def _online(model, prompts, reward, out, bad_iterations: set[int], max_bad: int, monkeypatch):
    """A 4-iteration PPO run (critic; one minibatch update per iteration; checkpoint every
    iteration) whose minibatch loss is made NaN in ``bad_iterations`` (0-based)."""
    from alignlab.rl import trainer

    real = trainer.chunk_loss

    def chunk_loss(learner, *args, **kwargs):
        loss = real(learner, *args, **kwargs)
        return loss * float("nan") if learner.position[0] in bad_iterations else loss
    monkeypatch.setattr(trainer, "chunk_loss", chunk_loss)
    return _run(_config(model, prompts, reward, out, "ppo",
                        train={"max_steps": 4, "save_every": 1, "max_bad_steps": max_bad}))


def _same_training_state(a: Path, b: Path) -> None:
    """Policy and critic weights, both AdamW states and both schedulers of two checkpoints are
    identical (custom objects 0 and 1 are the critic's and the policy's schedulers)."""
    from safetensors.torch import load_file

    for name in ("model.safetensors", "model_1.safetensors"):
        x, y = load_file(str(a / name)), load_file(str(b / name))
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name
    for name in ("optimizer.bin", "optimizer_1.bin"):
        x, y = (torch.load(str(c / name), weights_only=True) for c in (a, b))
        assert x["param_groups"] == y["param_groups"], name  # learning rates included
        assert x["state"].keys() == y["state"].keys()
        assert all(torch.equal(x["state"][i][k], y["state"][i][k])
                   for i in x["state"] for k in x["state"][i]), name
    for name in ("custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl"):
        x, y = (torch.load(str(c / name), weights_only=False) for c in (a, b))
        assert x == y and x["last_epoch"] == 1, name  # one scheduler step: iteration 1's update


def test_online_bad_iterations_skip_then_stop_and_resume(tiny_model, prompt_file, reward_fn,  # noqa: F811
                                                         tmp_path, monkeypatch):
    from safetensors.torch import load_file

    run = (tiny_model, prompt_file, reward_fn)
    # two bad iterations in a row with max_bad_steps 2 stop the run after the second ...
    out = tmp_path / "stopped"
    with pytest.raises(NonFiniteError, match=r"^2 consecutive iterations with every update "
                       r"non-finite \(iteration 2 to iteration 3; last: loss = nan, policy "
                       r"gradient norm = nan, value gradient norm = nan\) reached "
                       r"train.max_bad_steps=2, so training stopped; the last good state is "
                       r"checkpoint .*step-3; resume"):
        _online(*run, out, {1, 2}, 2, monkeypatch)
    # ... leaving step-3, whose trainable state is exactly step-1's: the skipped updates changed
    # no weight, no AdamW moment or step count and no schedule (no periodic save in the streak)
    ckpt = out / "checkpoints"
    assert sorted(p.name for p in ckpt.iterdir()) == ["step-1", "step-3"]
    _same_training_state(ckpt / "step-1", ckpt / "step-3")
    # resumed without the fault: the same run as one that skipped those iterations and went on
    resumed_dir, resumed = _online(*run, out, set(), 2, monkeypatch)
    skipping_dir, skipping = _online(*run, tmp_path / "skipping", {1, 2}, 3, monkeypatch)
    assert [(r["step"], r["skipped_steps"], r["bad_steps"]) for r in skipping] == [
        (1, 0, 0), (2, 1, 1), (3, 2, 2), (4, 2, 0)]
    assert [(r["step"], r["skipped_steps"], r["bad_steps"]) for r in resumed] == [
        (1, 0, 0), (2, 1, 1), (3, 2, 2), (4, 2, 0)]
    keys = ["reward/mean", "policy/loss", "value/loss"]
    assert [resumed[3][k] for k in keys] == pytest.approx([skipping[3][k] for k in keys], abs=1e-6)
    a = load_file(str(Path(skipping_dir) / "model.safetensors"))
    b = load_file(str(Path(resumed_dir) / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    log = (out / "log.txt").read_text()
    assert "iteration 2/4: 1 of 1 update(s) skipped, last loss = nan, policy gradient" in log


# ----------------------------------------------------------------------------- two processes


@pytest.mark.slow
def test_two_processes_take_the_same_decision(tmp_path):
    """A NaN on one rank only: both ranks skip the same step (their parameters equal one process
    skipping it), and a stop on one rank's NaN stops both with the same message (no hang)."""
    from test_distributed import LAUNCHERS, _free_port

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(WORKER.parent)}
    cmd = LAUNCHERS["accelerate"](_free_port()) + [str(WORKER), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    single = settings(4, 1, steps=4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers: the reference's float32 sums in the same order
    try:
        expected = _skipping_reference(single, skip={1})
    finally:
        torch.set_num_threads(threads)
    from safetensors.torch import load_file

    for rank in ranks:
        assert rank["skipped_steps"] == 1
        assert rank["stop"].startswith("1 consecutive non-finite optimiser steps (step 3; last: "
                                       "loss = nan, gradient norm = nan) reached")
    assert ranks[0]["stop"] == ranks[1]["stop"]
    params = load_file(str(tmp_path / "params.safetensors"))
    assert _max_diff(params, expected) < 1e-5  # float32 all-reduce order (test_distributed: 1e-5)
    assert sorted(p.name for p in (tmp_path / "stop" / "checkpoints").iterdir()) == ["step-2"]
