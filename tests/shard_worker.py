"""Tiny-model training under a sharded launch (FSDP2, DeepSpeed ZeRO), and the one-process reference.

Run as ``python shard_worker.py OUT MODE`` (MODE ``full`` or ``lora``) under ``accelerate launch
--config_file recipes/accelerate/<config>.yaml --num_processes 2``; the tests call :func:`run` in
their own process with ``Accelerator(cpu=True)`` for the one-process reference. Either way it:

1. trains a tiny Llama (LoRA-wrapped in ``lora`` mode) 4 optimiser steps of global batch 8 with the
   shared loop, checkpointing at steps 2 and 4; before step 2 every process greedily generates from
   its own prompt inside ``gathered_for_generation`` (rank r: prompt r, 3 + 4r new tokens, so the
   processes run different numbers of forward passes), and training then continues;
2. after training generates again, gathers the full parameters and saves ``OUT/model`` (LoRA
   merged) with ``save_gathered``;
3. resumes a fresh model from the step-2 checkpoint in a new run folder and trains to step 4.

Written to OUT (main process): ``result.json`` (losses, grad norms, resumed losses, world size,
sharding kind), ``params.safetensors`` and ``resumed_params.safetensors`` (the gathered state of the
HF/peft model); every process writes ``gen-<rank>.json``. The one-process run generates every
rank's prompts.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from dist_worker import count_tokens, make_items, pad_items, settings, sft_step, tiny_lm
from safetensors.torch import save_file

from alignlab.config import LoraSettings
from alignlab.models.loading import apply_lora
from alignlab.models.sharding import (
    gathered_for_generation,
    gathered_state_dict,
    save_gathered,
    sharding_kind,
)
from alignlab.runs import RunFolder
from alignlab.train.forward import TokenLogprobModule
from alignlab.train.loop import make_accelerator, train_loop

GLOBAL_BATCH, GRAD_ACCUM, STEPS, RANKS = 8, 2, 4, 2
LORA = LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])


def make_model(mode: str) -> torch.nn.Module:
    """The tiny Llama of ``dist_worker`` (seed 0), LoRA-wrapped in ``lora`` mode."""
    model = tiny_lm()
    return apply_lora(model, LORA, "CAUSAL_LM") if mode == "lora" else model


def prompt(rank: int) -> tuple[list[int], int]:
    """Rank ``rank``'s generation prompt (3 + rank tokens) and its number of new tokens."""
    return make_items(4)[rank]["input_ids"][:3 + rank], 3 + 4 * rank


def greedy(model: torch.nn.Module, rank: int) -> list[int]:
    """Greedy continuation of ``prompt(rank)`` (no early stop at eos)."""
    ids, new = prompt(rank)
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model.generate(torch.tensor([ids], device=device),
                             attention_mask=torch.ones(1, len(ids), device=device),
                             max_new_tokens=new, min_new_tokens=new, do_sample=False,
                             pad_token_id=0)
    return out[0, len(ids):].tolist()


def generate_all(acc: Accelerator, model: torch.nn.Module) -> dict[int, list[int]]:
    """Each process's own prompt (every prompt with one process), inside the gather block."""
    ranks = [acc.process_index] if acc.num_processes > 1 else list(range(RANKS))
    was_training = model.training
    model.eval()
    with gathered_for_generation(acc, model) as whole:
        tokens = {r: greedy(whole, r) for r in ranks}
    model.train(was_training)
    return tokens


def train(out: Path, module: TokenLogprobModule, acc: Accelerator, on_step=None):
    """The shared loop on ``module``; returns the loop result."""
    cfg = settings(GLOBAL_BATCH // (GRAD_ACCUM * acc.num_processes), GRAD_ACCUM, steps=STEPS,
                   save_every=2)
    return train_loop(module, make_items(), pad_items, sft_step, count_tokens, cfg,
                      RunFolder(out, echo=False), accelerator=acc, on_step=on_step)


def save_state(acc: Accelerator, model: torch.nn.Module, path: Path) -> None:
    """Gather ``model``'s full state (every process) and write it from the main process."""
    state = gathered_state_dict(model)
    if acc.is_main_process:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path))


def run(out: Path, mode: str, acc: Accelerator | None = None) -> None:
    """Steps 1-3 of the module docstring; results written to ``out``."""
    launched, acc = acc is None, acc or make_accelerator()
    module, mid = TokenLogprobModule(make_model(mode)), {}

    def on_step(step: int, total: int) -> None:
        if step == 2:  # FSDP2 shards in place: module.model is the model being trained
            mid.update(generate_all(acc, module.model))

    result = train(out / "run", module, acc, on_step)
    kind = sharding_kind(result.model.model)
    final = generate_all(acc, result.model.model)
    resharded = sharding_kind(result.model.model) == kind
    try:  # without the accelerator the root-owned (embedding, head) shards cannot be found
        with gathered_for_generation(None, result.model.model):
            refused = False
    except RuntimeError:
        refused = True
    save_state(acc, result.model.model, out / "params.safetensors")
    save_gathered(result.model.model, None, out / "model")
    (out / f"gen-{acc.process_index}.json").write_text(json.dumps(
        {"mid": mid, "final": final, "resharded": resharded, "refused_without_acc": refused}))
    resumed = resume(out, mode, acc, make_accelerator() if launched else Accelerator(cpu=True))
    if acc.is_main_process:
        (out / "result.json").write_text(json.dumps({
            "world": acc.num_processes, "kind": kind,
            "losses": [row["loss"] for row in result.history],
            "grad_norms": [row["grad_norm"] for row in result.history],
            "resumed_from": resumed.resumed_from,
            "resumed_losses": [row["loss"] for row in resumed.history]}))


def resume(out: Path, mode: str, acc: Accelerator, fresh: Accelerator):
    """A fresh model resumed (with the fresh accelerator) from the step-2 checkpoint of ``out/run``
    in ``out/resumed``."""
    if acc.is_main_process:
        shutil.copytree(out / "run" / "checkpoints" / "step-2",
                        out / "resumed" / "checkpoints" / "step-2")
    acc.wait_for_everyone()
    result = train(out / "resumed", TokenLogprobModule(make_model(mode)), fresh)
    save_state(fresh, result.model.model, out / "resumed_params.safetensors")
    return result


if __name__ == "__main__":
    run(Path(sys.argv[1]), sys.argv[2])
