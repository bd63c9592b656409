"""Held-out evaluation during training, for every stage that trains through :func:`train_loop`.

A stage hands the loop a :class:`HeldOut`: held-out items (encoded like the training items), the
stage's own step function (the same ``(loss_sum, count, metric_sums)`` contract as training), and
optionally what to derive from the averages (SFT: perplexity = exp(mean NLL per token)). Every
``train.eval_every`` optimiser steps and after the last one the loop runs the step function on the
whole held-out set without gradients (model in eval mode), split across processes, and logs the
global sums divided by the global count as ``eval/<name>`` rows in ``metrics.jsonl``. So DPO's
held-out ``eval/rewards/accuracy``, ``eval/rewards/margin``, ``eval/rewards/chosen``, ... are the
quantities TRL's DPOTrainer reports on its ``eval_dataset``, aggregated the same way as training.

``train.save_best: {metric: eval/loss, mode: min}`` keeps the model of the best evaluation: the stage's
``save_best`` callback writes it to ``<out>/best_model`` (with ``best.json``: step and value) whenever
an evaluation beats the best so far, and the stage then saves that model as ``<out>/model`` instead of
the last one. A resumed run reads ``best.json`` so an earlier best is not forgotten. The callback
runs on every process (gathering a sharded model is collective) and writes from the main one.

Under FSDP2 and ZeRO-3 every forward pass communicates, so every process must run the same number
of batches: a process whose share of the held-out set runs out early repeats a batch of its last
items and discards the result (:func:`_batch_plan`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator

from alignlab.train.reduce import global_count, global_means, to_device
from alignlab.train.sharding import is_sharded_run, lockstep_batches

BEST_DIR, BEST_FILE = "best_model", "best.json"


@dataclass
class HeldOut:
    """What the loop needs to evaluate a held-out set (see the module docstring)."""

    items: Sequence
    collate: Callable[[list], dict]
    step_fn: Callable
    batch_size: int
    derive: Callable[[dict[str, float]], dict[str, float]] | None = None
    save_best: Callable[[torch.nn.Module], None] | None = None


def evaluate_held_out(acc: Accelerator, model, held_out: HeldOut) -> dict[str, float]:
    """Global ``loss`` and metric averages of ``held_out`` (no gradients, eval mode), prefixed
    ``eval/``; ``eval/count`` is the global number of loss units."""
    loss, count = torch.zeros((), device=acc.device), 0
    sums: dict[str, torch.Tensor] = {}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for chunk, counted in _batch_plan(acc, len(held_out.items), held_out.batch_size):
            batch = to_device(held_out.collate([held_out.items[i] for i in chunk]), acc.device)
            part, n, metrics = held_out.step_fn(model, batch)
            if not counted:
                continue
            loss += part.detach().float()
            count += int(n)
            for name, value in metrics.items():
                sums[name] = sums.get(name, 0.0) + value.detach().float()
    model.train(was_training)
    n_global = global_count(acc, count)
    row = {**global_means(acc, loss, sums, n_global), "count": float(n_global)}
    if held_out.derive is not None:
        row.update(held_out.derive(row))
    return {f"eval/{k}": v for k, v in row.items()}


def _batch_plan(acc: Accelerator, n_items: int, batch_size: int) -> list[tuple[list[int], bool]]:
    """This process's batches ``(item indices, counted)``: items ``rank, rank + W, ...``; under
    FSDP/DeepSpeed padded with uncounted repeats to the largest process's number of batches."""
    mine = list(range(acc.process_index, n_items, acc.num_processes))
    plan = [(mine[i:i + batch_size], True) for i in range(0, len(mine), batch_size)]
    if is_sharded_run(acc) and n_items:
        most = lockstep_batches(n_items, acc.num_processes, batch_size)
        plan += [(mine[-batch_size:] or [0], False)] * (most - len(plan))
    return plan


def perplexity(row: dict[str, float]) -> dict[str, float]:
    """SFT's derived metric: exp of the mean NLL per target token."""
    return {"perplexity": math.exp(min(row["loss"], 700.0))}


class BestTracker:
    """The best value of ``metric`` so far (``mode`` min or max), kept in ``<run>/best.json``."""

    def __init__(self, run_path: Path, metric: str, mode: str):
        self.path, self.metric, self.mode = Path(run_path) / BEST_FILE, metric, mode
        saved = json.loads(self.path.read_text()) if self.path.is_file() else None
        self.value = saved["value"] if saved and saved.get("metric") == metric else None

    def improves(self, row: dict[str, float]) -> bool:
        if self.metric not in row:
            raise ValueError(f"save_best.metric {self.metric!r} is not an evaluation metric; "
                             f"choose one of {sorted(row)}")
        value = row[self.metric]
        if self.value is None:
            return True
        return value < self.value if self.mode == "min" else value > self.value

    def record(self, row: dict[str, float], step: int) -> None:
        from alignlab.runs import write_atomic  # a kill mid-write must not leave a torn best.json

        self.value = row[self.metric]
        write_atomic(self.path, json.dumps({"metric": self.metric, "mode": self.mode,
                                            "value": self.value, "step": step}))


def best_model_dir(run_path: Path) -> Path | None:
    """``<run>/best_model`` when a best model was kept, else None."""
    folder = Path(run_path) / BEST_DIR
    return folder if (Path(run_path) / BEST_FILE).is_file() and folder.is_dir() else None
