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



@pytest.mark.slow
def test_cli_stage_under_accelerate_launch_joins_two_processes(tmp_path):
    """`accelerate launch --num_processes 2 -m alignlab.cli sft` trains as ONE 2-process group on CPU.

    Regression: a plain Accelerator() on a CPU-only machine ran each launched process alone (each
    logged "1 process(es)" and saw the whole dataset).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    from test_train_stages import _tokenizer

    model_dir = tmp_path / "tiny"
    tok = _tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(cfg).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    rows = [{"messages": [{"role": "user", "content": f"q{i}"},
                          {"role": "assistant", "content": f"a{i}"}]} for i in range(16)]
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "alignlab.cli", "sft",
           f"model.path={model_dir}", f"data.path={data}", f"out={out}", "train.max_steps=2",
           "train.batch_size=4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert "sft: 2 process(es)" in log
    assert "global batch 8 on 2 process(es)" in log
