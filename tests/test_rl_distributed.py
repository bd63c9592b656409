"""Online RL on two CPU processes (gloo) equals one process on the same global batch.

``alignlab online`` under ``accelerate launch --multi_gpu --num_processes 2`` (the CLI itself, see
``rl_dist_worker.py``; ``--cpu`` would run one process, see ``test_distributed.py``) with
``train.batch_size`` 2 per process is compared with one process with ``batch_size`` 4: each
process generates its block of the global batch with per-prompt seeds, keeps each prompt's group
of samples, normalises scores and whitens advantages over both processes, trains on minibatches cut
from one permutation of the global batch, and logs metrics over the global batch.

Tolerances. The samples are the same (per-prompt seeds), so the reward statistics and lengths
are compared exactly, every iteration. Everything the models compute differs only in float32
rounding: each process runs its forwards on half the rows, padded to its own longest row, and gloo
adds the two halves' gradients in another order. From the same weights (iteration 1, the first
optimiser step) that is ~1e-7 relative: the first step's gradients agree to 4e-7 of each tensor's
largest entry (asserted 1e-5), the first iteration's metrics to 1e-7 (asserted rel 1e-5). After
an AdamW step the weights no longer agree to rounding: Adam's g / (|g| + eps) turns the rounding of
gradient entries near eps (near-cancelling sums, e.g. of whitened advantages) into weight
differences of a sizeable fraction of lr, and later gradients inherit them. Measured over three
iterations at lr 1e-3: later metrics within 1e-5 relative, the KL (a sum of differences of nearly
equal log-probs) within 2.3e-5 absolute, weights within 0.12 lr. Asserted: rel 1e-3 / abs 1e-6,
KL abs 1e-4, weights 0.5 lr (a weight moves at most ~lr per step; a flipped sign costs 2 lr). A real
mismatch (local whitening or score normalisation, another minibatch partition, a process-dependent
sample) changes the exact sample statistics or the first step's gradients by far more.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rl_dist_worker import first_step_spy
from safetensors.torch import load_file
from test_rl_trainer import REWARD_MODULE
from test_train_stages import _prompt, _write_jsonl, tiny_model  # noqa: F401

from alignlab.config import build_config
from alignlab.runs import RunFolder, read_metrics

WORKER = Path(__file__).with_name("rl_dist_worker.py")
LR = 1e-3
EXACT = ("reward/mean", "reward/std", "response_length", "truncated_rate")
CLOSE = ("policy/loss", "policy/grad_norm", "policy/ratio_mean", "advantage_abs_mean",
         "value/loss", "value/grad_norm", "value/explained_variance")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A folder with the reward function's module and eight prompts."""
    folder = tmp_path_factory.mktemp("rl_dist")
    (folder / "rl_test_rewards.py").write_text(REWARD_MODULE)
    qs = ["hi", "2+2?", "sky?", "cat?", "dog?", "why?", "ok", "go"]
    _write_jsonl(folder / "p.jsonl", [{"prompt": _prompt(q)} for q in qs])
    return folder


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _config(model, inputs, out, algorithm, batch_size, rl) -> dict:
    return {"algorithm": algorithm, "model": {"path": model},
            "prompts": {"path": str(inputs / "p.jsonl")},
            "reward": [{"kind": "function", "function": "rl_test_rewards:count_a"}],
            "generation": {"num_samples": 2, "max_new_tokens": 6, "temperature": 1.0},
            "train": {"learning_rate": LR, "max_steps": 3, "batch_size": batch_size,
                      "log_every": 1, "lr_schedule": "constant", "max_length": 64,
                      "max_prompt_length": 32},
            "rl": rl, "out": str(out)}


def _one_process(raw: dict, grads: Path, monkeypatch) -> None:
    from alignlab.rl import trainer
    from alignlab.rl.trainer import OnlineConfig, run_online

    monkeypatch.setattr(trainer, "_optimiser_step", first_step_spy(str(grads),
                                                                   trainer._optimiser_step))
    cfg = build_config(OnlineConfig, raw)
    run_online(cfg, RunFolder(cfg.out, cfg, echo=False))


def _two_processes(raw: dict, grads: Path, inputs: Path) -> None:
    config = Path(raw["out"]).with_suffix(".yaml")
    config.write_text(yaml.safe_dump(raw))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), str(WORKER), str(config), str(grads)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(inputs), str(WORKER.parent)])}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _rows(out: Path) -> list[dict]:
    return [r for r in read_metrics(out) if "reward/mean" in r]


@pytest.mark.parametrize("algorithm, rl, reused", [
    # one step per rollout (old log-probs from the update's forward); KL in the reward; scores
    # normalised and advantages whitened over the global batch
    ("rloo", {"kl_coef": 0.05, "score_norm": "batch", "whiten_advantages": True}, True),
    # critic, whitened GAE, 2 epochs x 2 minibatches cut from the global batch (sizes per process)
    pytest.param("ppo", {"kl_coef": 0.05, "ppo_epochs": 2}, False,
                 marks=pytest.mark.slow),
    # one step per rollout with a critic: old log-probs and old values from the update's forward
    pytest.param("ppo", {"kl_coef": 0.05}, True, marks=pytest.mark.slow),
], ids=["rloo-one-step", "ppo-2x2-minibatches", "ppo-one-step"])
def test_two_processes_match_one(tiny_model, inputs, tmp_path, monkeypatch,  # noqa: F811
                                 algorithm, rl, reused):
    one, two = tmp_path / "one", tmp_path / "two"
    sizes = {"one": (4, 4), "two": (2, 2)}  # (batch_size, minibatch_size) per process
    raws = {}
    for name, out in (("one", one), ("two", two)):
        batch, minibatch = sizes[name]
        raws[name] = _config(tiny_model, inputs, out, algorithm, batch,
                             {**rl, "minibatch_size": minibatch} if "ppo_epochs" in rl else rl)
    monkeypatch.syspath_prepend(str(inputs))
    _one_process(raws["one"], tmp_path / "one.safetensors", monkeypatch)
    _two_processes(raws["two"], tmp_path / "two.safetensors", inputs)

    log = (two / "log.txt").read_text()
    assert f"online {algorithm}: 2 process(es)" in log
    assert ("old log-probs come from the update's forward" in log) is reused
    rows_one, _ = assert_runs_agree(one, two)
    assert rows_one[0]["kl"] == 0.0 and abs(rows_one[-1]["kl"]) > 1e-3


def assert_runs_agree(one: Path, two: Path) -> tuple[list[dict], list[dict]]:
    """One- and two-process runs (output folders ``one``/``two``, first-step gradients saved beside
    them as ``<folder>.safetensors``) agree within the module docstring's tolerances: the same
    samples, metrics, whole first-step gradients and full final weights. Returns both runs' rows."""
    rows_one, rows_two = _rows(one), _rows(two)
    assert len(rows_one) == len(rows_two) == 3
    for i, (a, b) in enumerate(zip(rows_one, rows_two)):
        assert [a[k] for k in EXACT] == [b[k] for k in EXACT]  # the same samples
        assert b["kl"] == pytest.approx(a["kl"], abs=1e-4)
        for key in (k for k in CLOSE if k in a):
            tolerance = {"rel": 1e-5, "abs": 1e-7} if i == 0 else {"rel": 1e-3, "abs": 1e-6}
            assert b[key] == pytest.approx(a[key], **tolerance), (i, key)
    g1, g2 = (load_file(str(out.with_suffix(".safetensors"))) for out in (one, two))
    assert g1.keys() == g2.keys()
    for name in g1:
        assert g1[name].shape == g2[name].shape, name  # whole gradients, not shards
        scale = float(g1[name].abs().max()) or 1.0
        assert float((g1[name] - g2[name]).abs().max()) <= 1e-5 * scale, name
    w1, w2 = (load_file(str(out / "model" / "model.safetensors")) for out in (one, two))
    assert w1.keys() == w2.keys()
    assert all(w1[k].shape == w2[k].shape for k in w1)  # full weights
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 0.5 * LR
    return rows_one, rows_two
