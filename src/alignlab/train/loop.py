"""The one training loop every stage shares (SFT, reward model, DPO), on Hugging Face accelerate.

A stage supplies a model, a dataset of pre-tokenised items with a collate function, and two
functions: ``count_fn(batch) -> int`` (loss units in a batch: target tokens for SFT, pairs for RM/DPO,
known before the forward pass) and ``step_fn(model, batch) -> (loss_sum, count, metric_sums)``.

Distributed-correct aggregation (the OpenRLHF/TRL "num_items_in_batch" idea). For each optimiser
step the loop first draws all ``grad_accum`` micro-batches, sums their counts, and all-reduces that to
the global count N. Each micro-batch then back-propagates ``loss_sum * world_size / N``; DDP averages
gradients over the W processes, so the accumulated gradient is exactly that of
``global_loss_sum / N`` however the step is split across processes and accumulation steps. The
logged loss is global_loss_sum / N, and each metric is its global sum / N (so ``metric_sums`` must
be sums over loss units, e.g. the number of correctly ranked pairs).

Batching, shuffling and resuming follow :mod:`alignlab.train.sampler` (``batch_size`` is per process).

Non-finite steps (:mod:`alignlab.train.nonfinite`): a step whose global loss or gradient norm is
NaN/inf is skipped (no parameter, optimiser or scheduler change; its gradients dropped) and counted
(``skipped_steps``, ``bad_steps`` in every logged row); ``train.max_bad_steps`` in a row stop the
run with :class:`~alignlab.train.nonfinite.NonFiniteError` after writing ``step-<g>``, the state
after the last good step g (unless that checkpoint exists), which a rerun resumes from (retrying
step g + 1). No periodic checkpoint is written at a skipped step.

FSDP2 and DeepSpeed ZeRO-2/3 run the same loop through accelerate (:mod:`alignlab.train.sharding`):
FSDP2 reduce-scatters instead of all-reducing, which leaves the gradient of global_loss_sum / N
unchanged; under DeepSpeed the engine steps the optimiser inside ``accelerator.backward`` of the last
micro-batch (marked as the accumulation boundary), so ``grad_penalty`` is refused there and under FSDP2
(whose sharded parameters the penalty's saved copies would no longer match).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator

from alignlab.config import TrainSettings
from alignlab.progress import progress as progress_bar
from alignlab.runs import RunFolder
from alignlab.train.checkpoint import Progress, latest_checkpoint, save_checkpoint
from alignlab.train.held_out import BestTracker, HeldOut, evaluate_held_out
from alignlab.train.nonfinite import (
    NonFiniteError,
    StepGuard,
    describe_nonfinite,
    keep_good_state,
    stop_message,
)
from alignlab.train.reduce import global_count, global_means, to_device
from alignlab.train.sampler import StepSampler
from alignlab.train.schedule import make_scheduler
from alignlab.train.sharding import (
    accumulation_boundary,
    enable_cpu_fsdp,
    is_sharded_run,
    prepare_sharding,
    uses_deepspeed,
)

StepFn = Callable[[torch.nn.Module, dict], tuple[torch.Tensor, Any, dict[str, torch.Tensor]]]
CountFn = Callable[[dict], int]


@dataclass
class LoopResult:
    """What the loop hands back: the unwrapped model, the step reached, the logged rows and how many
    optimiser steps were skipped as non-finite (over the whole run, resumes included)."""

    model: torch.nn.Module
    accelerator: Accelerator
    step: int
    resumed_from: int
    history: list[dict[str, float]] = field(default_factory=list)
    skipped_steps: int = 0


def make_accelerator() -> Accelerator:
    """The Accelerator every stage uses (no gradient accumulation inside accelerate: the loop does it).

    Without a GPU, ``cpu=True`` is what makes accelerate join the launched processes into one gloo
    group; a plain ``Accelerator()`` on a CPU-only machine runs each process alone. Launched with an
    FSDP config on such a machine, the group is switched to FSDP2 (:func:`enable_cpu_fsdp`).
    """
    acc = Accelerator(cpu=not torch.cuda.is_available())
    enable_cpu_fsdp(acc)
    return acc


def main_log(accelerator: Accelerator, run: RunFolder, message: str) -> None:
    """``run.log(message)`` on the main process only."""
    if accelerator.is_main_process:
        run.log(message)


def train_loop(model: torch.nn.Module, dataset: Sequence, collate_fn: Callable[[list], dict],
               step_fn: StepFn, count_fn: CountFn, settings: TrainSettings, run: RunFolder,
               accelerator: Accelerator | None = None, held_out: HeldOut | None = None,
               on_step: Callable[[int, int], None] | None = None,
               grad_penalty: Callable[[torch.nn.Module], dict] | None = None) -> LoopResult:
    """Train ``model`` on ``dataset`` with AdamW; resume from the latest checkpoint in ``run``.

    ``accelerator``, when given, must be fresh (no model prepared yet): checkpoints hold every model
    an Accelerator has prepared. ``held_out`` is evaluated every ``settings.eval_every`` steps and
    after the last step (:mod:`alignlab.train.held_out`). ``on_step(step, total)`` is called before
    each optimiser step (0-based ``step``, also after a resume), for losses scheduled over training.
    ``grad_penalty(model)`` adds a penalty's gradient in place after the data loss's gradients are
    accumulated and before clipping (:mod:`alignlab.train.penalties`); its metrics are logged.
    A non-finite step is skipped; ``settings.max_bad_steps`` in a row raise
    :class:`~alignlab.train.nonfinite.NonFiniteError` (see the module doc).
    """
    acc = accelerator or make_accelerator()
    if grad_penalty is not None and is_sharded_run(acc):
        raise ValueError(f"gradient penalties (e.g. sft delta_l1) need plain or DDP training; this "
                         f"run uses {acc.distributed_type.value}")
    sampler = StepSampler(len(dataset), settings.batch_size, acc.num_processes,
                          settings.grad_accum, settings.seed)
    total = sampler.total_steps(settings.epochs, settings.max_steps)
    model, optimizer, scheduler, progress = _prepare(acc, model, settings, total)
    start = _maybe_resume(acc, run, progress, sampler)
    main_log(acc, run, f"training {total} steps ({sampler.steps_per_epoch}/epoch, global batch "
                       f"{sampler.global_batch} on {acc.num_processes} process(es)), from step {start}")
    history = []
    tracker = _best_tracker(run, settings, held_out)
    guard = StepGuard(settings.max_bad_steps, skipped=progress.skipped_steps)
    with progress_bar(total - start, "training") as bar:
        for step in range(start, total):
            if on_step is not None:
                on_step(step, total)
            batches = [to_device(collate_fn([dataset[i] for i in idx]), acc.device)
                       for idx in sampler.micro_batches(step, acc.process_index)]
            guard.at = f"step {step + 1}"
            row = _optimiser_step(acc, model, optimizer, batches, step_fn, count_fn, settings,
                                  grad_penalty, guard)
            row["lr"] = scheduler.get_last_lr()[0]
            row.update(guard.metrics())
            if guard.skipped_last:
                main_log(acc, run, f"step {step + 1}/{total}: skipped, {guard.last_reason} "
                                   f"({guard.consecutive} in a row, at most "
                                   f"{settings.max_bad_steps}; {guard.skipped} skipped in all)")
                if guard.exhausted:
                    history.append(_log_row(acc, run, row, step + 1, total))
                    _stop_on_bad_steps(acc, run, progress, sampler, guard, step)
            else:
                scheduler.step()
            _record_progress(progress, sampler, step + 1)
            progress.skipped_steps = guard.skipped
            if (step + 1) % settings.log_every == 0 or step + 1 == total:
                history.append(_log_row(acc, run, row, step + 1, total))
            if held_out is not None and _eval_due(settings, step + 1, total):
                history.append(_evaluate(acc, run, model, held_out, tracker, step + 1))
            due = settings.save_every and (step + 1) % settings.save_every == 0
            if due and not guard.consecutive:  # never at a skipped step: see the module doc
                save_checkpoint(acc, run.checkpoint_dir, step + 1)
            bar.advance()
    acc.wait_for_everyone()
    if guard.skipped:
        main_log(acc, run, f"{guard.skipped} optimiser step(s) skipped as non-finite "
                           "(skipped_steps in metrics.jsonl)")
    return LoopResult(acc.unwrap_model(model), acc, max(start, total), start, history,
                      guard.skipped)


def _stop_on_bad_steps(acc: Accelerator, run: RunFolder, progress: Progress, sampler: StepSampler,
                       guard: StepGuard, step: int) -> None:
    """Leave the last good state as ``step-<g>`` (g: steps done before the streak; the weights,
    optimiser and scheduler in memory have not moved since) and raise
    :class:`~alignlab.train.nonfinite.NonFiniteError`. Under DeepSpeed the engine has already applied
    the bad updates, so nothing is written and the newest checkpoint (none is written during a
    streak) is named."""
    good = step + 1 - guard.consecutive
    if uses_deepspeed(acc):
        checkpoint = latest_checkpoint(run.checkpoint_dir)
    else:
        _record_progress(progress, sampler, good)
        progress.skipped_steps = guard.skipped_before_streak
        checkpoint = keep_good_state(acc, run.checkpoint_dir, good)
    message = stop_message(guard, checkpoint)
    main_log(acc, run, message)
    raise NonFiniteError(message)


def _eval_due(settings: TrainSettings, step: int, total: int) -> bool:
    return step == total or bool(settings.eval_every and step % settings.eval_every == 0)


def _best_tracker(run: RunFolder, settings: TrainSettings, held_out: HeldOut | None):
    if settings.save_best is None or held_out is None or held_out.save_best is None:
        return None
    return BestTracker(run.path, settings.save_best.metric, settings.save_best.mode)


def _evaluate(acc: Accelerator, run: RunFolder, model, held_out: HeldOut,
              tracker: BestTracker | None, step: int) -> dict:
    """Evaluate the held-out set, log it, and keep the model when it is the best so far."""
    row = evaluate_held_out(acc, model, held_out)
    if acc.is_main_process:
        run.log_metrics(row, step=step)
        run.log(f"eval at step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in row.items()
                                                    if k != "eval/count"))
    if tracker is not None and tracker.improves(row):
        held_out.save_best(acc.unwrap_model(model))  # every process: a sharded model is gathered
        if acc.is_main_process:
            tracker.record(row, step)
            run.log(f"best {tracker.metric} so far ({row[tracker.metric]:.4g}): model kept")
        tracker.value = row[tracker.metric]
        acc.wait_for_everyone()
    return {"step": step, **row}


def _prepare(acc: Accelerator, model: torch.nn.Module, settings: TrainSettings, total: int):
    """AdamW over trainable parameters, the schedule, and the progress object, registered for
    checkpointing. The scheduler is deliberately not ``prepare``d: accelerate would step it once per
    process, while here it steps once per optimiser step. A module with a ``param_groups()`` method
    supplies AdamW's parameter groups (e.g. DRO's value model with its own learning rate); the
    schedule scales every group alike."""
    if settings.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    groups = model.param_groups() if hasattr(model, "param_groups") else params
    optimizer = torch.optim.AdamW(groups, lr=settings.learning_rate,
                                  weight_decay=settings.weight_decay)
    prepare_sharding(acc, model, settings)
    model, optimizer = acc.prepare(model, optimizer)
    scheduler = make_scheduler(optimizer, settings.lr_schedule, settings.warmup_ratio, total)
    progress = Progress()
    acc.register_for_checkpointing(scheduler, progress)
    return model, optimizer, scheduler, progress


def _maybe_resume(acc: Accelerator, run: RunFolder, progress: Progress,
                  sampler: StepSampler) -> int:
    """Load the latest complete checkpoint, if any; returns the step to continue from.

    metrics.jsonl is rewound to that step (rows a killed attempt logged after it are dropped)."""
    latest = latest_checkpoint(run.checkpoint_dir, lambda msg: main_log(acc, run, msg))
    if latest is None:
        rewind_metrics(acc, run, 0)
        return 0
    acc.load_state(str(latest))
    if (progress.num_examples, progress.global_batch) != (sampler.num_examples,
                                                         sampler.global_batch):
        raise ValueError(
            f"{latest}: checkpoint was made with {progress.num_examples} examples and global batch "
            f"{progress.global_batch}, but this run has {sampler.num_examples} and "
            f"{sampler.global_batch}; resume with the same data and batch settings or use a new out")
    main_log(acc, run, f"resumed from {latest} (step {progress.step})")
    rewind_metrics(acc, run, progress.step)
    return progress.step


def rewind_metrics(acc: Accelerator, run: RunFolder, step: int) -> None:
    """Drop the metrics rows a killed attempt logged after ``step`` (main process; see
    :meth:`alignlab.runs.RunFolder.rewind_metrics`)."""
    if acc.is_main_process:
        dropped = run.rewind_metrics(step)
        if dropped:
            run.log(f"metrics.jsonl: {dropped} row(s) of the interrupted attempt after step {step} "
                    f"dropped (they are logged again)")


def _record_progress(progress: Progress, sampler: StepSampler, step: int) -> None:
    progress.step = step
    progress.epoch, progress.step_in_epoch = sampler.position(step)
    progress.num_examples, progress.global_batch = sampler.num_examples, sampler.global_batch


def _optimiser_step(acc: Accelerator, model, optimizer, batches: list[dict], step_fn: StepFn,
                    count_fn: CountFn, settings: TrainSettings,
                    grad_penalty: Callable | None = None,
                    guard: StepGuard | None = None) -> dict[str, float]:
    """One optimiser step over the micro-batches; returns the globally aggregated row.

    The row (global loss) is computed before the update so that ``guard`` can skip a step whose
    loss or gradient norm is non-finite (``guard.skipped_last``); the gradients are dropped either
    way."""
    loss_sum, metric_sums, n_global = accumulate_gradients(acc, model, batches, step_fn, count_fn)
    penalty_metrics = grad_penalty(model) if grad_penalty is not None else {}
    grad_norm = _clip(acc, model, settings.max_grad_norm)
    row = {**_aggregate(acc, loss_sum, metric_sums, n_global, grad_norm), **penalty_metrics}
    if guard is None or _step_allowed(acc, guard, row["loss"], grad_norm):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return row


def _step_allowed(acc: Accelerator, guard: StepGuard, loss: float, grad_norm: float) -> bool:
    """Record the step with ``guard``; whether ``optimizer.step()`` is to be called.

    Both numbers are global (the all-reduced loss, the norm of the synchronised gradients), so
    every process decides alike. Under DeepSpeed only the loss is checked (the engine clipped and
    stepped inside ``backward``; ``optimizer.step()`` is its no-op wrapper). With an fp16 grad
    scaler, a finite loss with a non-finite gradient norm is a loss-scale overflow: the scaler's own
    ``step`` skips the update and lowers the scale, so it is called, and the step is counted as
    skipped without counting towards ``max_bad_steps``."""
    if uses_deepspeed(acc):
        guard.observe(describe_nonfinite(loss, {}))
        return True
    overflow = getattr(acc, "scaler", None) is not None and math.isfinite(loss)
    skipped = guard.observe(describe_nonfinite(loss, {"": grad_norm}), extends_streak=not overflow)
    return not skipped or overflow


def accumulate_gradients(acc: Accelerator, model, batches: list[dict], step_fn: StepFn,
                         count_fn: CountFn) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """Back-propagate every micro-batch so the gradients equal those of global_sum / N.

    Returns this process's loss sum, its metric sums and the global count N. Gradient
    synchronisation runs only on the last micro-batch (``no_sync`` before it); under DeepSpeed the
    last micro-batch is the accumulation boundary, where the engine also steps the optimiser.
    """
    counts = [int(count_fn(b)) for b in batches]
    n_global = global_count(acc, sum(counts))
    scale = acc.num_processes / max(n_global, 1)
    model.train()
    loss_sum = torch.zeros((), device=acc.device)
    metric_sums: dict[str, torch.Tensor] = {}
    for k, batch in enumerate(batches):
        sync = k == len(batches) - 1
        no_sync = contextlib.nullcontext() if sync else acc.no_sync(model)
        with no_sync, accumulation_boundary(acc, sync):
            part, count, metrics = step_fn(model, batch)
            acc.backward(part * scale)
        if int(count) != counts[k]:
            raise RuntimeError(f"step_fn counted {int(count)} loss units but count_fn {counts[k]}")
        loss_sum += part.detach().float()
        for name, value in metrics.items():
            metric_sums[name] = metric_sums.get(name, 0.0) + value.detach().float()
    return loss_sum, metric_sums, n_global


def _clip(acc: Accelerator, model, max_norm: float | None) -> float:
    """Clip the global gradient norm to ``max_norm`` (None: no clipping); returns the norm.

    Under DeepSpeed the engine has already clipped (``gradient_clipping`` in its config, filled from
    ``max_norm``); its norm is returned (NaN when it reports none)."""
    norm = acc.clip_grad_norm_(model.parameters(), max_norm if max_norm else float("inf"))
    return float("nan") if norm is None else float(norm)


def _aggregate(acc: Accelerator, loss_sum: torch.Tensor, metric_sums: dict[str, torch.Tensor],
               n_global: int, grad_norm: float) -> dict[str, float]:
    """All-reduce the loss and metric sums and divide by the global count."""
    means = global_means(acc, loss_sum, metric_sums, n_global)
    return {"loss": means.pop("loss"), "count": n_global, "grad_norm": grad_norm, **means}


def _log_row(acc: Accelerator, run: RunFolder, row: dict, step: int, total: int) -> dict:
    if acc.is_main_process:
        run.log_metrics(row, step=step)
        shown = ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "count")
        run.log(f"step {step}/{total}: {shown}")
    return {"step": step, **row}
