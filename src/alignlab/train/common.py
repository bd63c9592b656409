"""Pieces every training stage shares: start-up, data reporting, batching, gathering, saving."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed

from alignlab.data.errors import RecordError
from alignlab.models.loading import save_model
from alignlab.models.sharding import (
    gathered_state_dict,
    save_gathered,
    sharding_kind,
    unsharded_copy,
)
from alignlab.runs import RunFolder
from alignlab.train.held_out import BEST_DIR, BEST_FILE, best_model_dir
from alignlab.train.loop import main_log, make_accelerator
from alignlab.train.sharding import lockstep_batches

T = TypeVar("T")
R = TypeVar("R")


def start_stage(name: str, seed: int, run: RunFolder) -> Accelerator:
    """A fresh Accelerator, every RNG seeded (new heads initialise the same on every process)."""
    acc = make_accelerator()
    set_seed(seed)
    main_log(acc, run, f"{name}: {acc.num_processes} process(es), device {acc.device}, "
                       f"{acc.distributed_type.value}")
    return acc


def report_data(acc: Accelerator, run: RunFolder, loaded, what: str) -> None:
    """Log how many records were read and how many bad ones were skipped (to metrics too)."""
    main_log(acc, run, f"{what}: {len(loaded.records)} records from {loaded.source}")
    if acc.is_main_process:
        run.log_metrics({"bad_records_skipped": loaded.bad.skipped, "data": what}, step=0)
        for example in loaded.bad.examples[:5]:
            run.log(f"skipped bad record: {example}")
    if not loaded.records:
        raise ValueError(f"{loaded.source}: no usable {what} records")


def encode_all(records: Sequence[T], encode: Callable[[T], R], source: str) -> list[R]:
    """``encode`` every record; a failure names the source and record number (1-based)."""
    encoded = []
    for number, record in enumerate(records, start=1):
        try:
            encoded.append(encode(record))
        except ValueError as exc:
            raise RecordError(source, number, None, f"cannot tokenise record: {exc}") from None
    return encoded


def batched(items: Sequence[T], size: int) -> Iterator[list[T]]:
    """Consecutive slices of ``items`` of at most ``size``."""
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def sharded_map(acc: Accelerator, items: Sequence[T], fn: Callable[[list[T]], list[R]],
                batch_size: int, lockstep: bool = False) -> list[R]:
    """``fn`` over ``items`` in batches, split across processes; results in the original order.

    ``lockstep``: every process calls ``fn`` equally often (a process that runs out repeats its last
    batch and drops the result), as a model sharded by FSDP2 / ZeRO-3 needs for its forward."""
    mine = list(range(acc.process_index, len(items), acc.num_processes))
    local: list[tuple[int, R]] = []
    for idx in batched(mine, batch_size):
        local += list(zip(idx, fn([items[i] for i in idx])))
    if lockstep and items:
        own = len(list(batched(mine, batch_size)))
        for _ in range(lockstep_batches(len(items), acc.num_processes, batch_size) - own):
            fn([items[i] for i in (mine[-batch_size:] or [0])])
    pairs = gather_object(local) if acc.num_processes > 1 else local
    return [value for _, value in sorted(pairs, key=lambda p: p[0])]


def save_final(acc: Accelerator, run: RunFolder, model, tokenizer, prefer_best: bool = False) -> Path:
    """Save the trained model (LoRA merged) as safetensors in ``run.model_dir`` (main process).

    With ``prefer_best`` and a model kept by ``train.save_best`` (``<out>/best_model``), that model
    becomes ``model/`` instead of the last one. Every process must call this: a model sharded by
    FSDP2 or ZeRO-3 is first gathered (:mod:`alignlab.models.sharding`), so ``model/`` always holds
    ordinary full weights."""
    state = gathered_state_dict(model) if sharding_kind(model) else None
    if acc.is_main_process:
        best = best_model_dir(run.path) if prefer_best else None
        if best is None:
            save_model(model if state is None else unsharded_copy(model, state), tokenizer,
                       run.model_dir)
            run.log(f"saved model to {run.model_dir}")
        else:
            if run.model_dir.exists():
                shutil.rmtree(run.model_dir)
            shutil.copytree(best, run.model_dir)
            run.log(f"saved the best evaluation's model ({(run.path / BEST_FILE).read_text()}) "
                    f"to {run.model_dir}")
    acc.wait_for_everyone()
    return run.model_dir


def keep_best(run: RunFolder, tokenizer, unwrap: Callable[[torch.nn.Module], torch.nn.Module]):
    """The ``save_best`` callback of a :class:`~alignlab.train.held_out.HeldOut`: saves
    ``unwrap(module)`` (the HF model inside the stage's training module) to ``<out>/best_model``.
    Called on every process; the main process writes (a sharded model is gathered first)."""
    return lambda module: save_gathered(unwrap(module), tokenizer, run.path / BEST_DIR)
