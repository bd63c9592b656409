"""Tiny-model training used by the loop tests, and the script the two-process test launches.

Run as ``python dist_worker.py OUT BATCH_SIZE GRAD_ACCUM`` under ``accelerate launch`` or
``torchrun``: trains a tiny Llama a few steps on sequences of uneven length and writes, from the main
process, the first step's synchronised gradients, the logged losses and the final parameters to OUT.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

from alignlab.config import TrainSettings
from alignlab.losses.sft import nll_sum
from alignlab.runs import RunFolder
from alignlab.train.forward import TokenLogprobModule
from alignlab.train.loop import accumulate_gradients, train_loop
from alignlab.train.sampler import StepSampler

VOCAB = 64


def tiny_lm(seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer Llama with hidden size 32, identical for a given seed."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(cfg)


def make_items(n: int = 24, seed: int = 0) -> list[dict]:
    """Sequences of 5..30 tokens; the first 1..4 tokens are prompt (not targets)."""
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        length, prompt = rng.randint(5, 30), rng.randint(1, 4)
        ids = [rng.randrange(3, VOCAB) for _ in range(length)]
        items.append({"input_ids": ids, "loss_mask": [0] * prompt + [1] * (length - prompt)})
    return items


def pad_items(items: list[dict]) -> dict:
    """Right-pad to the longest item (a local stand-in for data.collate.pad_encoded)."""
    width = max(len(it["input_ids"]) for it in items)
    def pad(key, value):
        return torch.tensor([it[key] + [value] * (width - len(it[key])) for it in items])
    ids, mask = pad("input_ids", 0), pad("loss_mask", 0)
    attn = torch.tensor([[1] * len(it["input_ids"]) + [0] * (width - len(it["input_ids"]))
                         for it in items])
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": mask}


def count_tokens(batch: dict) -> int:
    return int(batch["loss_mask"][:, 1:].sum())


def sft_step(model, batch: dict):
    logps = model(batch)
    total, n = nll_sum(logps, batch["loss_mask"][:, 1:])
    return total, n, {}


def settings(batch_size: int, grad_accum: int, steps: int = 3, **extra) -> TrainSettings:
    base = {"learning_rate": 1e-2, "max_steps": steps, "batch_size": batch_size,
            "grad_accum": grad_accum, "lr_schedule": "constant", "log_every": 1,
            "max_grad_norm": 1.0, "seed": 3}
    return TrainSettings(**{**base, **extra})


def first_step_grads(acc: Accelerator, cfg: TrainSettings, items: list[dict]) -> dict:
    """Synchronised gradients and loss of optimiser step 0 (no update)."""
    module = acc.prepare(TokenLogprobModule(tiny_lm()))
    plan = StepSampler(len(items), cfg.batch_size, acc.num_processes, cfg.grad_accum, cfg.seed)
    batches = [pad_items([items[i] for i in idx])
               for idx in plan.micro_batches(0, acc.process_index)]
    loss_sum, _, n = accumulate_gradients(acc, module, batches, sft_step, count_tokens)
    loss = float(acc.reduce(loss_sum, "sum")) / n
    grads = {k: p.grad.detach().clone() for k, p in acc.unwrap_model(module).named_parameters()}
    return {"loss": loss, "grads": grads}


def run(out: Path, batch_size: int, grad_accum: int, acc: Accelerator | None = None) -> None:
    """Gradients of step 0, then a 3-step training run; results written to ``out``."""
    acc = acc or Accelerator(cpu=True)
    items, cfg = make_items(), settings(batch_size, grad_accum)
    first = first_step_grads(Accelerator(cpu=True), cfg, items)
    result = train_loop(TokenLogprobModule(tiny_lm()), items, pad_items, sft_step, count_tokens,
                        cfg, RunFolder(out / "run", echo=False), accelerator=acc)
    if acc.is_main_process:
        save_file({k: v.contiguous() for k, v in first["grads"].items()}, str(out / "grads.safetensors"))
        params = {k: v.detach().contiguous() for k, v in result.model.state_dict().items()}
        save_file(params, str(out / "params.safetensors"))
        losses = [row["loss"] for row in result.history]
        (out / "result.json").write_text(json.dumps(
            {"first_loss": first["loss"], "losses": losses, "world": acc.num_processes}))


if __name__ == "__main__":
    run(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
