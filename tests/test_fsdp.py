"""FSDP2 through accelerate on two CPU processes (gloo) equals one plain process.

The launches use ``recipes/accelerate/fsdp2_cpu.yaml``; accelerate 1.16 does not turn FSDP on for
CPU by itself, so alignlab switches the gloo group to FSDP2 (``alignlab.train.sharding``) and from
there on it is accelerate's own FSDP2 path: ``fully_shard`` per decoder layer plus the root,
reduce-scattered gradients, sharded ``save_state``/``load_state`` checkpoints.

Tolerance. Two processes sum the gradient in a different order than one process (each rank sums its
micro-batches, then the reduce-scatter adds the ranks), so float32 gradients differ in the last bits
(relative ~1e-7). Losses are forward values of identical weights at step 1 and stay within 1e-6; we
allow 1e-5. AdamW divides by sqrt(v), which magnifies those bits for entries whose gradient is near
zero: after 4 steps at lr 1e-2 the largest parameter difference measured is 5.1e-6 (full fine-tuning,
layer 0 q_proj) and 5e-8 (LoRA), exactly the same as DDP on two processes (FSDP2 and DDP agreed
bit for bit in our measurement); we allow 2e-5, still 500x smaller than one step's update (lr).
"""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import shard_worker
import torch
import yaml
from accelerate import Accelerator
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "recipes" / "accelerate"
WORKER = Path(__file__).with_name("shard_worker.py")
LOSS_TOL, PARAM_TOL = 1e-5, 2e-5


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accelerate_launch(config: str, args: list[str], processes: int = 2, timeout: int = 300):
    """``accelerate launch --config_file recipes/accelerate/<config> <args>`` on CPU."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(CONFIGS / config), "--num_processes", str(processes),
           "--main_process_port", str(_free_port()), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(WORKER.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.fixture(scope="module", params=["full", pytest.param("lora", marks=pytest.mark.slow)])
def runs(request, tmp_path_factory):
    """The worker under FSDP2 on 2 processes and as one plain process, for one mode."""
    mode = request.param
    one, two = tmp_path_factory.mktemp(f"one-{mode}"), tmp_path_factory.mktemp(f"two-{mode}")
    shard_worker.run(one, mode, Accelerator(cpu=True))
    accelerate_launch("fsdp2_cpu.yaml", [str(WORKER), str(two), mode])
    return mode, one, two


def _result(folder: Path) -> dict:
    return json.loads((folder / "result.json").read_text())


def test_two_fsdp_processes_match_one_process(runs):
    """Losses, gradient norms (clipping ran on DTensor gradients) and final parameters."""
    mode, one, two = runs
    a, b = _result(one), _result(two)
    assert (a["world"], a["kind"]) == (1, None) and (b["world"], b["kind"]) == (2, "fsdp2")
    assert b["losses"] == pytest.approx(a["losses"], abs=LOSS_TOL)
    assert b["grad_norms"] == pytest.approx(a["grad_norms"], rel=1e-5)
    params_one = load_file(str(one / "params.safetensors"))
    params_two = load_file(str(two / "params.safetensors"))
    assert _max_diff(params_one, params_two) < PARAM_TOL
    start = dict(shard_worker.make_model(mode).named_parameters())
    moved = max(float((params_two[k] - start[k].detach()).abs().max()) for k in params_two
                if start[k].requires_grad)
    assert moved > 1e-3  # the comparison is between trained weights, not two copies of the start


def test_fsdp_resume_from_sharded_checkpoint_equals_uninterrupted(runs):
    _, _, two = runs
    result = _result(two)
    checkpoint = two / "run" / "checkpoints" / "step-2"
    assert (checkpoint / "COMPLETE").exists()
    assert sorted(p.name for p in (checkpoint / "pytorch_model_fsdp_0").glob("*.distcp")) == [
        "__0_0.distcp", "__1_0.distcp"]  # one shard per process: really sharded
    assert result["resumed_from"] == 2
    assert result["resumed_losses"] == pytest.approx(result["losses"][2:], abs=1e-6)
    straight = load_file(str(two / "params.safetensors"))
    resumed = load_file(str(two / "resumed_params.safetensors"))
    assert _max_diff(straight, resumed) < 1e-6


def test_fsdp_final_model_is_full_safetensors_loadable_by_transformers(runs):
    """``model/`` holds gathered (LoRA: merged) weights, equal to the one-process model's."""
    from transformers import AutoModelForCausalLM

    mode, one, two = runs
    loaded = AutoModelForCausalLM.from_pretrained(two / "model")
    reference = AutoModelForCausalLM.from_pretrained(one / "model")
    assert type(loaded).__name__ == "LlamaForCausalLM"
    assert not any("lora" in name for name in loaded.state_dict())
    assert _max_diff(loaded.state_dict(), reference.state_dict()) < PARAM_TOL
    if mode == "full":
        gathered = load_file(str(two / "params.safetensors"))
        assert _max_diff(loaded.state_dict(), gathered) == 0.0


def test_generation_gather_under_fsdp_matches_plain_model(runs):
    """Inside ``gathered_for_generation`` each rank generates its own prompt with a different number
    of forward passes (no lock-step), mid-training and after; the tokens equal the one-process run,
    the FSDP modules are sharded again afterwards, and training continued correctly (previous test)."""
    from transformers import AutoModelForCausalLM

    _, one, two = runs
    reference = json.loads((one / "gen-0.json").read_text())
    plain = AutoModelForCausalLM.from_pretrained(two / "model")
    for rank in (0, 1):
        got = json.loads((two / f"gen-{rank}.json").read_text())
        assert got["resharded"] is True and got["refused_without_acc"] is True
        assert got["mid"] == {str(rank): reference["mid"][str(rank)]}
        assert got["final"] == {str(rank): reference["final"][str(rank)]}
        assert got["final"][str(rank)] == shard_worker.greedy(plain, rank)
        assert len(got["final"][str(rank)]) == shard_worker.prompt(rank)[1]


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _tiny_hf_folder(folder: Path) -> str:
    """A 2-layer Llama with the char tokenizer of test_train_stages, as an HF folder."""
    from test_train_stages import _tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def _run_in_process(args: list[str]) -> None:
    """``alignlab <stage> key=value ...`` in this (single) process, as the CLI runs it."""
    from alignlab.stages import load_stage_config, run_stage

    run_stage(load_stage_config(args[0], None, args[1:]))


def _ran_under_fsdp(out: Path, stage: str) -> bool:
    """The stage's start-up line says 2 processes under FSDP."""
    log = (out / "log.txt").read_text()
    return re.search(rf"{stage}[^:]*: 2 process\(es\), device cpu\S*, FSDP", log) is not None


def _loss_rows(out: Path, key: str) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
            if f'"{key}"' in line]


def test_sft_cli_under_fsdp_launch_matches_one_process(tmp_path):
    """``accelerate launch --config_file recipes/accelerate/fsdp2_cpu.yaml -m alignlab.cli sft`` (the
    real stage: data, tokenisation, held-out evaluation, save_best, final save) equals ``alignlab sft``
    in one process. The 9 held-out conversations split 5/4 over the ranks (2 and 1 batches of 4), so
    the ranks' forward counts differ unless evaluation runs in lock-step."""
    model_dir = _tiny_hf_folder(tmp_path / "tiny")
    rows = [{"messages": [{"role": "user", "content": f"q{i}"},
                          {"role": "assistant", "content": f"answer {i}"}]} for i in range(16)]
    data = _write_jsonl(tmp_path / "sft.jsonl", rows)
    held = _write_jsonl(tmp_path / "held.jsonl", rows[:9])
    common = ["sft", f"model.path={model_dir}", f"data.path={data}", f"eval_data.path={held}",
              "train.max_steps=3", "train.eval_every=2", "train.learning_rate=0.01",
              "train.lr_schedule=constant", "train.log_every=1", "train.max_length=32",
              "train.save_best.metric=eval/loss"]
    accelerate_launch("fsdp2_cpu.yaml", ["-m", "alignlab.cli", *common, f"out={tmp_path / 'two'}",
                                         "train.batch_size=4"])
    _run_in_process(common + [f"out={tmp_path / 'one'}", "train.batch_size=8"])
    assert _ran_under_fsdp(tmp_path / "two", "sft")
    for key in ("loss", "eval/loss"):
        two, one = _loss_rows(tmp_path / "two", key), _loss_rows(tmp_path / "one", key)
        assert [r["step"] for r in two] == [r["step"] for r in one] and two
        assert [r[key] for r in two] == pytest.approx([r[key] for r in one], abs=LOSS_TOL)
    assert _loss_rows(tmp_path / "two", "eval/count")[0]["eval/count"] == pytest.approx(
        _loss_rows(tmp_path / "one", "eval/count")[0]["eval/count"])
    assert (tmp_path / "two" / "best.json").is_file()
    a = load_file(str(tmp_path / "one" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "model" / "model.safetensors"))
    assert _max_diff(a, b) < PARAM_TOL
    c = load_file(str(tmp_path / "two" / "best_model" / "model.safetensors"))
    assert _max_diff(b, c) == 0.0  # model/ is the kept best model (gathered on save)


@pytest.mark.slow
def test_dpo_lora_cli_under_fsdp_launch_matches_one_process(tmp_path):
    """The preference stage with LoRA (reference = adapter-disabled policy, computed inside the
    FSDP root's forward) under FSDP2 equals one process; model/ is the merged model."""
    from test_train_stages import _pairs

    model_dir = _tiny_hf_folder(tmp_path / "tiny")
    data = _write_jsonl(tmp_path / "pairs.jsonl", _pairs(16, 1, "good answer", "bad reply"))
    common = ["dpo", f"model.path={model_dir}", f"data.path={data}", "train.max_steps=3",
              "train.learning_rate=0.01", "train.log_every=1", "train.max_length=64",
              "train.max_prompt_length=32", "reference_cache=none", "model.lora.r=4",
              "model.lora.alpha=8", "model.lora.dropout=0.0"]
    accelerate_launch("fsdp2_cpu.yaml", ["-m", "alignlab.cli", *common, f"out={tmp_path / 'two'}",
                                         "train.batch_size=4"])
    _run_in_process(common + [f"out={tmp_path / 'one'}", "train.batch_size=8"])
    assert _ran_under_fsdp(tmp_path / "two", "preference")
    two, one = _loss_rows(tmp_path / "two", "loss"), _loss_rows(tmp_path / "one", "loss")
    assert two[0]["loss"] == pytest.approx(0.693147, abs=1e-5)
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], abs=LOSS_TOL)
    assert two[-1]["loss"] < two[0]["loss"]
    a = load_file(str(tmp_path / "one" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "model" / "model.safetensors"))
    assert not any("lora" in k for k in b) and _max_diff(a, b) < PARAM_TOL


@pytest.mark.slow
def test_rm_lora_cli_under_fsdp_launch_matches_one_process(tmp_path):
    """The reward-model stage with LoRA (peft trains the new score head in full) under FSDP2: the 9
    held-out pairs split 5/4 (2 and 1 batches) for both the in-training evaluation and the final
    ``eval.json`` scoring; model/ is an ordinary merged sequence classifier."""
    from test_train_stages import _pairs
    from transformers import AutoModelForSequenceClassification

    model_dir = _tiny_hf_folder(tmp_path / "tiny")
    data = _write_jsonl(tmp_path / "pairs.jsonl", _pairs(36, 0, "yes, gladly.", "no!"))
    common = ["rm", f"model.path={model_dir}", f"data.path={data}", "eval_fraction=0.25",
              "train.max_steps=3", "train.eval_every=2", "train.learning_rate=0.003",
              "train.log_every=1", "train.max_length=64", "model.lora.r=4", "model.lora.alpha=8"]
    accelerate_launch("fsdp2_cpu.yaml", ["-m", "alignlab.cli", *common, f"out={tmp_path / 'two'}",
                                         "train.batch_size=4"])
    _run_in_process(common + [f"out={tmp_path / 'one'}", "train.batch_size=8"])
    assert _ran_under_fsdp(tmp_path / "two", "rm")
    for key in ("loss", "eval/loss"):
        two, one = _loss_rows(tmp_path / "two", key), _loss_rows(tmp_path / "one", key)
        assert [r[key] for r in two] == pytest.approx([r[key] for r in one], abs=LOSS_TOL) and two
    scores = [json.loads((tmp_path / n / "eval.json").read_text()) for n in ("one", "two")]
    assert scores[1]["n"] == scores[0]["n"] == 9
    assert scores[1]["loss"] == pytest.approx(scores[0]["loss"], abs=LOSS_TOL)
    one, two = (AutoModelForSequenceClassification.from_pretrained(tmp_path / n / "model")
                for n in ("one", "two"))
    assert type(two).__name__ == "LlamaForSequenceClassification"
    assert _max_diff(one.state_dict(), two.state_dict()) < PARAM_TOL


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_accelerate_configs_parse_as_accelerate_cluster_configs(name):
    """Every shipped launcher config is read by accelerate's own config loader (unknown or misspelled
    keys raise there), and the FSDP ones ask for FSDP2."""
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(CONFIGS / name))
    raw = yaml.safe_load((CONFIGS / name).read_text())
    assert config.distributed_type.value == raw["distributed_type"]
    if raw["distributed_type"] == "FSDP":
        assert config.fsdp_config["fsdp_version"] == 2
    if raw["distributed_type"] == "DEEPSPEED":
        assert "gradient_accumulation_steps" not in config.deepspeed_config
