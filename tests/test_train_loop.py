"""The shared training loop: global token-mean aggregation, sampler, schedules, checkpoints, resume."""


import pytest
from accelerate import Accelerator
from dist_worker import (
    count_tokens,
    first_step_grads,
    make_items,
    pad_items,
    settings,
    sft_step,
    tiny_lm,
)
from safetensors.torch import load_file

from alignlab.losses.sft import nll_sum
from alignlab.runs import RunFolder, read_metrics
from alignlab.train.forward import TokenLogprobModule
from alignlab.train.loop import train_loop
from alignlab.train.sampler import StepSampler
from alignlab.train.schedule import lr_factor


@pytest.fixture
def acc():
    return Accelerator(cpu=True)


def fresh():
    """A new Accelerator per training run (checkpoints hold every model an Accelerator prepared)."""
    return Accelerator(cpu=True)


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_grad_accum_equals_full_batch_and_global_token_mean(acc):
    items = make_items()
    split = first_step_grads(acc, settings(4, 2), items)
    whole = first_step_grads(acc, settings(8, 1), items)
    assert split["loss"] == pytest.approx(whole["loss"], abs=1e-6)
    assert _max_diff(split["grads"], whole["grads"]) < 1e-6
    # direct: sum of NLL over every target token of the 8 examples / their token count
    plan = StepSampler(len(items), 8, 1, 1, seed=3)
    batch = pad_items([items[i] for i in plan.micro_batches(0, 0)[0]])
    module = TokenLogprobModule(tiny_lm())
    total, n = nll_sum(module(batch), batch["loss_mask"][:, 1:])
    (total / n).backward()
    direct = {k: p.grad for k, p in module.named_parameters()}
    assert whole["loss"] == pytest.approx(float(total.detach() / n), abs=1e-6)
    assert _max_diff(whole["grads"], direct) < 1e-6
    # the micro-batches hold different token counts, so a mean of means would differ
    halves = [pad_items([items[i] for i in idx]) for idx in StepSampler(24, 4, 1, 2, 3).micro_batches(0, 0)]
    assert count_tokens(halves[0]) != count_tokens(halves[1])


def test_training_with_accumulation_matches_full_batch(acc, tmp_path):
    runs = {}
    for name, (bs, ga) in {"split": (4, 2), "whole": (8, 1)}.items():
        res = train_loop(TokenLogprobModule(tiny_lm()), make_items(), pad_items, sft_step,
                         count_tokens, settings(bs, ga), RunFolder(tmp_path / name, echo=False), fresh())
        runs[name] = (res.history, res.model.state_dict())
    assert [r["loss"] for r in runs["split"][0]] == pytest.approx(
        [r["loss"] for r in runs["whole"][0]], abs=1e-5)
    assert _max_diff(runs["split"][1], runs["whole"][1]) < 1e-5
    rows = read_metrics(tmp_path / "whole")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert {"loss", "lr", "grad_norm", "count"} <= rows[0].keys()


def test_sampler_step_sets_do_not_depend_on_split():
    whole = StepSampler(20, 8, 1, 1, seed=5)
    split = StepSampler(20, 2, 2, 2, seed=5)
    for step in range(4):
        ref = sorted(whole.micro_batches(step, 0)[0])
        parts = [i for r in range(2) for mb in split.micro_batches(step, r) for i in mb]
        assert sorted(parts) == ref
    # 20 examples, global batch 8: 3 steps per epoch, padded with 4 repeats; all seen each epoch
    epoch0 = [i for s in range(3) for i in whole.micro_batches(s, 0)[0]]
    assert whole.steps_per_epoch == 3 and set(epoch0) == set(range(20))
    assert whole.micro_batches(3, 0) != whole.micro_batches(0, 0)  # epoch 1 reshuffles
    assert whole.micro_batches(3, 0) == StepSampler(20, 8, 1, 1, seed=5).micro_batches(3, 0)
    assert whole.total_steps(epochs=2.0, max_steps=None) == 6
    assert whole.total_steps(epochs=2.0, max_steps=4) == 4


def test_lr_schedules_by_hand():
    # warm-up 2 of 10 steps: factors 1/2, 2/2; then decay over the remaining 8
    assert lr_factor(0, "linear", 2, 10) == 0.5
    assert lr_factor(1, "linear", 2, 10) == 1.0
    assert lr_factor(6, "linear", 2, 10) == pytest.approx(0.5)   # (6-2)/8 = 0.5 decayed
    assert lr_factor(6, "cosine", 2, 10) == pytest.approx(0.5)   # 0.5(1+cos(pi/2))
    assert lr_factor(4, "cosine", 2, 10) == pytest.approx(0.5 * (1 + 2 ** -0.5))  # cos(pi/4)
    assert lr_factor(9, "constant", 2, 10) == 1.0
    with pytest.raises(ValueError, match="lr_schedule"):
        lr_factor(5, "exp", 0, 10)


def _train(acc, out, steps, **extra):
    cfg = settings(4, 1, steps=steps, **extra)
    return train_loop(TokenLogprobModule(tiny_lm()), make_items(), pad_items, sft_step,
                      count_tokens, cfg, RunFolder(out, echo=False), fresh())


def test_resume_continues_where_it_stopped(acc, tmp_path):
    first = _train(acc, tmp_path / "a", 4, save_every=2)
    assert first.resumed_from == 0
    ckpt = tmp_path / "a" / "checkpoints"
    assert sorted(p.name for p in ckpt.iterdir()) == ["step-2", "step-4"]
    assert (ckpt / "step-4" / "model.safetensors").exists()
    assert (ckpt / "step-4" / "COMPLETE").exists()
    resumed = _train(acc, tmp_path / "a", 6, save_every=2)
    straight = _train(acc, tmp_path / "b", 6)
    assert resumed.resumed_from == 4
    assert [r["step"] for r in resumed.history] == [5, 6]
    assert [r["loss"] for r in resumed.history] == pytest.approx(
        [r["loss"] for r in straight.history[4:]], abs=1e-6)
    assert _max_diff(resumed.model.state_dict(), straight.model.state_dict()) < 1e-6
    saved = load_file(str(ckpt / "step-4" / "model.safetensors"))
    assert any(k.endswith("embed_tokens.weight") for k in saved)


def test_resume_with_other_batch_settings_fails_clearly(acc, tmp_path):
    _train(acc, tmp_path, 2, save_every=2)
    cfg = settings(8, 1, steps=4)
    with pytest.raises(ValueError, match="step-2.*global batch 4.*8"):
        train_loop(TokenLogprobModule(tiny_lm()), make_items(), pad_items, sft_step,
                   count_tokens, cfg, RunFolder(tmp_path, echo=False), fresh())
