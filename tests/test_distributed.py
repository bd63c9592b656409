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
import torch
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
def _tiny_model_dir(tmp_path):
    from test_train_stages import _tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    model_dir = tmp_path / "tiny"
    tok = _tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(cfg).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    return model_dir


def _launch(args, processes):
    """``alignlab <args>`` under ``accelerate launch`` (2 processes) or plainly (1 process)."""
    if processes == 1:
        cmd = [sys.executable, "-m", "alignlab.cli", *args]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
               str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend",
               "no", "--main_process_port", str(_free_port()), "-m", "alignlab.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})


@pytest.mark.slow
def test_preference_stage_two_processes_share_cache_and_match_one(tmp_path):
    """The preference stage under 2 processes: the reference pass is split across them and written
    once to the disk cache (a second run reads it), and training equals a 1-process run."""
    from test_train_stages import _pairs

    model_dir = _tiny_model_dir(tmp_path)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _pairs(16, 1, "good answer", "bad reply")))
    common = [f"model.path={model_dir}", f"data.path={data}", "train.max_steps=3",
              "train.learning_rate=0.003", "train.log_every=1", "train.max_length=64",
              "train.max_prompt_length=32", f"reference_cache={tmp_path / 'cache'}"]
    runs = {}
    for name, processes, batch in [("two", 2, 4), ("again", 2, 4), ("one", 1, 8)]:
        out = tmp_path / name
        proc = _launch(["dpo", *common, f"out={out}", f"train.batch_size={batch}"], processes)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = ((out / "log.txt").read_text(),
                      [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
                       if '"loss"' in line])
    assert "2 process(es)" in runs["two"][0] and "0 cached block(s) reused" in runs["two"][0]
    assert "1 cached block(s) reused" in runs["again"][0]
    assert "1 cached block(s) reused" in runs["one"][0]  # same model and tokens: same key
    losses = {name: [row["loss"] for row in rows] for name, (_, rows) in runs.items()}
    assert losses["two"][0] == pytest.approx(0.693147, abs=1e-5)
    assert losses["two"] == pytest.approx(losses["one"], abs=1e-5)
    assert losses["again"] == pytest.approx(losses["two"], abs=1e-6)


def test_cli_stage_under_accelerate_launch_joins_two_processes(tmp_path):
    """`accelerate launch --num_processes 2 -m alignlab.cli sft` trains as ONE 2-process group on CPU.

    Regression: a plain Accelerator() on a CPU-only machine ran each launched process alone (each
    logged "1 process(es)" and saw the whole dataset).
    """
    model_dir = _tiny_model_dir(tmp_path)
    rows = [{"messages": [{"role": "user", "content": f"q{i}"},
                          {"role": "assistant", "content": f"a{i}"}]} for i in range(16)]
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    proc = _launch(["sft", f"model.path={model_dir}", f"data.path={data}", f"out={out}",
                    "train.max_steps=2", "train.batch_size=4"], processes=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert "sft: 2 process(es)" in log
    assert "global batch 8 on 2 process(es)" in log
