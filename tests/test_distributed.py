"""Two CPU processes (gloo) give the same loss, gradients and parameters as one process.

Launchers: ``accelerate launch --multi_gpu --num_processes 2`` works on a CPU-only machine (the
script's ``Accelerator(cpu=True)`` then runs MULTI_CPU on gloo). ``accelerate launch --cpu
--num_processes 2`` does NOT: with ``--cpu`` accelerate 1.15 uses its single-process launcher unless an
MPI hostfile is given, so it silently runs one process. ``torchrun --nproc_per_node 2`` also works.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import dist_worker
import pytest
from accelerate import Accelerator
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("dist_worker.py")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


LAUNCHERS = {
    "accelerate": lambda port: [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                                "--num_processes", "2", "--num_machines", "1",
                                "--mixed_precision", "no", "--dynamo_backend", "no",
                                "--main_process_port", str(port)],
    "torchrun": lambda port: [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                              "--master_port", str(port)],
}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One process, batch 8, no accumulation: the same global batch as 2 processes x 2 x 2."""
    out = tmp_path_factory.mktemp("single")
    dist_worker.run(out, batch_size=8, grad_accum=1, acc=Accelerator(cpu=True))
    return out


@pytest.mark.parametrize("launcher", ["accelerate", pytest.param("torchrun", marks=pytest.mark.slow)])
def test_two_processes_match_one(launcher, single, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(WORKER.parent)}
    cmd = LAUNCHERS[launcher](_free_port()) + [str(WORKER), str(tmp_path), "2", "2"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = json.loads((single / "result.json").read_text())
    two = json.loads((tmp_path / "result.json").read_text())
    assert two["world"] == 2 and one["world"] == 1
    assert two["first_loss"] == pytest.approx(one["first_loss"], abs=1e-5)
    assert two["losses"] == pytest.approx(one["losses"], abs=1e-5)
    for name in ("grads", "params"):
        a = load_file(str(single / f"{name}.safetensors"))
        b = load_file(str(tmp_path / f"{name}.safetensors"))
        assert a.keys() == b.keys()
        assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5, name
