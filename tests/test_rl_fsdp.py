"""Online RL under FSDP2 on two CPU processes (gloo) equals one process on the same global batch.

``alignlab online`` (the CLI, ``rl_dist_worker.py``) launched with
``recipes/accelerate/fsdp2_cpu.yaml`` shards the policy (and PPO's critic, prepared by its own
``accelerate.prepare`` call) per decoder layer; sampling, scoring and the rollout's no-grad forwards
run inside ``gathered_for_generation``, the update's forwards through the sharded modules. The runs
and tolerances are those of ``test_rl_distributed.py`` (two DDP processes against one): the samples
are the same (per-prompt seeds), so reward statistics and lengths are compared exactly; the first
step's gradients (gathered from their shards) within 1e-5 of each tensor's largest entry, the
first iteration's metrics rel 1e-5, later ones rel 1e-3 / abs 1e-6, the KL abs 1e-4 and the final
weights within 0.5 lr (AdamW turns float32 rounding of near-zero gradient entries into weight
differences of a fraction of lr; see that module's docstring for the measurements).

The RLOO run also moves the reference to the policy after its second iteration (the third
iteration then samples from weights equal to the reference: KL 0, which needs the whole weights
copied out of the shards) and answers held-out prompts at the end (generation inside the gather
again). The PPO run (slow) has a critic, two epochs of two minibatches and one sequence per
micro-batch on two processes: the processes hold different numbers of a minibatch's sequences,
so they pad to the same number of forwards (``trainer.lockstep_chunks``).
"""

from pathlib import Path

import pytest
import yaml
from test_fsdp import accelerate_launch
from test_rl_distributed import (
    WORKER,
    _config,
    _one_process,
    assert_runs_agree,
    inputs,  # noqa: F401
)
from test_train_stages import _prompt, _write_jsonl, tiny_model  # noqa: F401


def _fsdp_processes(raw: dict, grads: Path, inputs: Path, monkeypatch) -> None:  # noqa: F811
    config = Path(raw["out"]).with_suffix(".yaml")
    config.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("PYTHONPATH", str(inputs))  # the reward function's module
    accelerate_launch("fsdp2_cpu.yaml", [str(WORKER), str(config), str(grads)])


def _raws(tiny_model, inputs, tmp_path, algorithm, rl, per_process):  # noqa: F811
    """The one-process and the two-process configs; ``per_process``: rl keys that differ."""
    held = _write_jsonl(tmp_path / "held.jsonl", [{"prompt": _prompt(q)} for q in ("x?", "yy")])
    raws = {}
    for name, batch in (("one", 4), ("two", 2)):
        raw = _config(tiny_model, inputs, tmp_path / name, algorithm, batch,
                      {**rl, **per_process[name]})
        raws[name] = {**raw, "eval_prompts": {"path": held}}
    return raws


def _assert_runs_agree(one: Path, two: Path) -> list[dict]:
    """:func:`assert_runs_agree`, and the held-out evaluation ran once, at the end; returns the
    two-process rows."""
    _, rows_two = assert_runs_agree(one, two)
    evals = [r for r in _rows_with(two, "eval/reward")]
    assert [r["step"] for r in evals] == [3]
    return rows_two


def _rows_with(out: Path, key: str) -> list[dict]:
    from alignlab.runs import read_metrics

    return [r for r in read_metrics(out) if key in r]


def _launched(out: Path, algorithm: str) -> str:
    log = (out / "log.txt").read_text()
    head = next(line for line in log.splitlines() if f"online {algorithm}:" in line)
    assert "2 process(es)" in head and head.endswith(", FSDP")
    return log


def test_rloo_under_fsdp2_matches_one_process(tiny_model, inputs, tmp_path,  # noqa: F811
                                              monkeypatch):
    rl = {"kl_coef": 0.05, "score_norm": "batch", "whiten_advantages": True, "ref_sync_every": 2}
    raws = _raws(tiny_model, inputs, tmp_path, "rloo", rl, {"one": {}, "two": {}})
    monkeypatch.syspath_prepend(str(inputs))
    _one_process(raws["one"], tmp_path / "one.safetensors", monkeypatch)
    _fsdp_processes(raws["two"], tmp_path / "two.safetensors", inputs, monkeypatch)

    log = _launched(tmp_path / "two", "rloo")
    assert "old log-probs come from the update's forward" in log  # the on-policy skip, sharded
    rows = _assert_runs_agree(tmp_path / "one", tmp_path / "two")
    assert rows[0]["kl"] == 0.0 and abs(rows[1]["kl"]) > 1e-4  # moved away from the start
    assert rows[2]["kl"] == pytest.approx(0.0, abs=1e-6)  # the reference was moved to the policy


@pytest.mark.slow
def test_ppo_minibatches_under_fsdp2_match_one_process(tiny_model, inputs, tmp_path,  # noqa: F811
                                                       monkeypatch):
    rl = {"kl_coef": 0.05, "ppo_epochs": 2}
    per_process = {"one": {"minibatch_size": 4, "micro_batch_size": 2},
                   "two": {"minibatch_size": 2, "micro_batch_size": 1}}
    raws = _raws(tiny_model, inputs, tmp_path, "ppo", rl, per_process)
    monkeypatch.syspath_prepend(str(inputs))
    _one_process(raws["one"], tmp_path / "one.safetensors", monkeypatch)
    _fsdp_processes(raws["two"], tmp_path / "two.safetensors", inputs, monkeypatch)

    log = _launched(tmp_path / "two", "ppo")
    assert "old log-probs come from the update's forward" not in log
    rows = _assert_runs_agree(tmp_path / "one", tmp_path / "two")
    assert abs(rows[-1]["kl"]) > 1e-3 and "value/loss" in rows[0]
