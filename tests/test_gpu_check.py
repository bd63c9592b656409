"""The CPU-safe parts of the GPU check (benchmarks/gpu): the shell script's syntax and dry run, the
token counter of timed_cli.py, and the report's rates and MFU on hand-made timings."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

GPU = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"gpu_{name}", GPU / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reward_peaks_at_the_target_length():
    check = load("gpu_check")
    n = check.TARGET_WORDS
    assert check.reward([], " ".join(["w"] * n)) == 1.0
    assert check.reward([], " ".join(["w"] * (n // 2))) == pytest.approx(0.5)
    assert check.reward([], "") == 0.0 and check.reward([], " ".join(["w"] * (3 * n))) == 0.0


def test_steady_rates_leave_out_the_first_step():
    check = load("gpu_check")
    timing = {"step_end_times_s": [10.0, 12.0, 16.0],
              "steps": [{"rows": 99, "real": 9999, "target": 1, "padded": 9999},
                        {"rows": 4, "real": 300, "target": 100, "padded": 400},
                        {"rows": 4, "real": 500, "target": 100, "padded": 600}]}
    rate = check.steady(timing)
    assert rate["tokens_per_s"] == pytest.approx(800 / 6)
    assert rate["mean_row_tokens"] == pytest.approx(100)
    assert rate["target_share"] == pytest.approx(200 / 800)
    assert rate["padding_share"] == pytest.approx(1 - 800 / 1000)
    # 6e9 FLOPs per token at 800/6 tokens/s against a 1 TFLOP/s peak
    assert check.mfu(6e9, rate["tokens_per_s"], 1.0) == pytest.approx(0.8)
    assert check.mfu(None, 1.0, 1.0) is None


def test_online_rates_from_rollout_tokens_and_metric_timings():
    check = load("gpu_check")
    timing = {"step_end_times_s": [1.0, 2.0, 3.0],
              "steps": [{"rows": 8, "real": 1, "target": 1, "padded": 1},
                        {"rows": 8, "real": 1000, "target": 400, "padded": 1200},
                        {"rows": 8, "real": 1000, "target": 400, "padded": 1200}]}
    rows = [{"time/iteration": 9.0, "time/generate": 9.0, "time/update": 9.0},
            {"time/iteration": 3.0, "time/generate": 2.0, "time/update": 0.5},
            {"time/iteration": 3.0, "time/generate": 2.0, "time/update": 0.5}]
    out = check.online_rates(rows, timing, {"train_flops_per_token": 3e9,
                                            "forward_flops_per_token": 1e9}, peak=1.0)
    assert out["generated_tokens_per_s"] == pytest.approx(200)
    assert out["update_tokens_per_s"] == pytest.approx(2000)
    assert out["update_mfu"] == pytest.approx(6.0)  # 3e9 * 2000 / 1e12
    assert out["generate_mfu_approx"] == pytest.approx(0.5)


def test_timed_cli_counts_real_target_and_padded_tokens_per_step():
    timed = load("timed_cli")
    from alignlab.data.collate import pad_encoded
    from alignlab.data.tokenize import Encoded

    counter = timed.Counter()
    counter.add(pad_encoded([Encoded([1, 2, 3], [0, 1, 1]), Encoded([4], [0])], pad_id=0))
    counter.step_ended()
    counter.add(pad_encoded([Encoded([5, 6], [0, 1])], pad_id=0))
    counter.step_ended()
    assert counter.steps == [{"rows": 2, "real": 4, "target": 2, "padded": 6},
                             {"rows": 1, "real": 2, "target": 1, "padded": 2}]
    assert len(counter.stamps) == 2 and counter.stamps[0] <= counter.stamps[1]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_check_script_parses_and_dry_run_prints_the_fsdp_launch(tmp_path):
    script = GPU / "check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    env = {**os.environ, "PYTHON": sys.executable, "WORK": str(tmp_path / "work"),
           "OUT": str(tmp_path / "out")}
    done = subprocess.run(["bash", str(script), "--dry-run", "--stages", "dpo"], env=env,
                          check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "accelerate.commands.launch --config_file" in done.stderr
    assert "recipes/accelerate/fsdp2.yaml --num_processes 1 --mixed_precision bf16" in done.stderr
    assert "dry run: nothing was executed" in done.stderr
    status = json.loads((tmp_path / "work" / "status.json").read_text())
    assert status["done"] is True and status["vllm"] == "unused"
