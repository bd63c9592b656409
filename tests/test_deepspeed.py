"""DeepSpeed ZeRO-2/3 through accelerate (GPU only; skipped without deepspeed and CUDA).

The same worker as the FSDP tests (``shard_worker.py``) under ``accelerate launch --config_file
recipes/accelerate/deepspeed_zero{2,3}.yaml --mixed_precision no`` on up to two GPUs: 4 optimiser
steps with 2 micro-batches each (DeepSpeed's accumulation boundary set by the loop), generation inside
``gathered_for_generation`` (ZeRO-3: DeepSpeed's own ``unwrap_model_for_generation``), the final
gathered ``model/`` and a resume from DeepSpeed's step-2 checkpoint.

Tolerance: the reference is the plain one-process run on the CPU; float32 cuBLAS and CPU kernels
differ in the last bits like a different summation order (see test_fsdp.py, measured 5e-6 after
Adam there), so parameters get 1e-4 and losses 1e-4. Generated tokens are compared on the same GPU
with the saved ``model/`` reloaded as a plain model, where the arithmetic is the same.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

deepspeed = pytest.importorskip("deepspeed")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="DeepSpeed needs CUDA")

import shard_worker
from accelerate import Accelerator
from safetensors.torch import load_file
from test_fsdp import CONFIGS, WORKER, _free_port, _max_diff

TOL = 1e-4


def _launch(config: str, out: Path) -> None:
    processes = min(2, torch.cuda.device_count())
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config),
           "--num_processes", str(processes), "--mixed_precision", "no",
           "--main_process_port", str(_free_port()), str(WORKER), str(out), "full"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(WORKER.parent),
                                                         os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    shard_worker.run(out, "full", Accelerator(cpu=True))
    return out


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_matches_one_process(stage, reference, tmp_path):
    from transformers import AutoModelForCausalLM

    _launch(f"deepspeed_zero{stage}.yaml", tmp_path)
    one = json.loads((reference / "result.json").read_text())
    got = json.loads((tmp_path / "result.json").read_text())
    assert got["kind"] == ("zero3" if stage == 3 else None)
    assert got["losses"] == pytest.approx(one["losses"], abs=TOL)
    assert got["grad_norms"] == pytest.approx(one["grad_norms"], rel=1e-3)
    params = load_file(str(tmp_path / "params.safetensors"))
    assert _max_diff(params, load_file(str(reference / "params.safetensors"))) < TOL
    # resume from DeepSpeed's own checkpoint format
    assert got["resumed_from"] == 2
    assert got["resumed_losses"] == pytest.approx(got["losses"][2:], abs=1e-6)
    assert _max_diff(params, load_file(str(tmp_path / "resumed_params.safetensors"))) < 1e-6
    # gathered final model: ordinary safetensors equal to the gathered parameters
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert _max_diff(plain.state_dict(), params) == 0.0
    plain = plain.cuda()
    for rank in range(min(2, torch.cuda.device_count())):
        gen = json.loads((tmp_path / f"gen-{rank}.json").read_text())
        assert gen["resharded"] is True and gen["refused_without_acc"] is (stage == 3)
        assert gen["final"][str(rank)] == shard_worker.greedy(plain, rank)
