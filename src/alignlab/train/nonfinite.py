"""Non-finite optimiser steps: detect them before the update, skip them, count them, and stop after
too many in a row with a checkpoint of the last good state.

Every optimiser loop (the offline loop, :mod:`alignlab.train.loop`; the online trainer,
:mod:`alignlab.rl.trainer`) checks each step's global loss and the global gradient norm(s) that
clipping already computes, after the gradients are accumulated and before ``optimizer.step()``. A
step where either is NaN or ±inf is *skipped*: no parameter, optimiser-state or scheduler change,
and the accumulated gradients are dropped (``zero_grad``). Both numbers are already the same on
every process (the loss is all-reduced for logging, the norm is that of the all-reduced or sharded
gradients), so every process takes the same decision without another collective call.

After ``train.max_bad_steps`` consecutive skipped steps the run stops with :class:`NonFiniteError`
(one line: the steps, what was non-finite, the checkpoint to resume from). While a streak of bad
steps is open no periodic checkpoint is written, so the newest checkpoint always holds a good state;
the loop writes one of the state before the streak when none is there yet (:func:`keep_good_state`).
The parameters, optimiser and scheduler did not move during the streak, so the state in memory at
the stop *is* the last good state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from accelerate import Accelerator

from alignlab.train.checkpoint import MARKER, save_checkpoint


class NonFiniteError(RuntimeError):
    """Training stopped after ``train.max_bad_steps`` consecutive non-finite steps. A user error:
    the one-line message names the steps, what was non-finite and the checkpoint to resume from
    (e.g. with a lower ``train.learning_rate``)."""


def describe_nonfinite(loss: float | None, grad_norms: dict[str, float]) -> str | None:
    """What is non-finite in one step, or None when nothing is: the loss first, then each named
    gradient norm (``{"": norm}`` for a loop with one model)."""
    found = []
    if loss is not None and not math.isfinite(loss):
        found.append(f"loss = {loss}")
    for name, norm in grad_norms.items():
        if not math.isfinite(norm):
            found.append(f"{name + ' ' if name else ''}gradient norm = {norm}")
    return ", ".join(found) or None


@dataclass
class StepGuard:
    """Counts skipped steps and the current streak of consecutive ones (``max_bad`` None: the
    streak never ends the run).

    ``skipped``: every skipped step of the run (restored on resume); ``consecutive``: the open
    streak; ``skipped_before_streak``: ``skipped`` when the streak began (what a checkpoint of the
    state before the streak records); ``last_reason``: what the latest bad step had non-finite;
    ``skipped_last``: whether the latest step observed was skipped. ``at`` is set by the loop to
    the coming step's name as its log shows it (``"step 7"``); ``streak_from`` keeps the name of
    the streak's first step."""

    max_bad: int | None
    skipped: int = 0
    consecutive: int = 0
    skipped_before_streak: int = 0
    last_reason: str = ""
    skipped_last: bool = False
    at: str = ""
    streak_from: str = ""

    def observe(self, reason: str | None, extends_streak: bool = True) -> bool:
        """Record one step (``reason`` from :func:`describe_nonfinite`); True when it is skipped.

        ``extends_streak`` False: a step that is skipped and counted but cannot end the run (an
        fp16 loss-scale overflow, which the grad scaler handles by lowering its scale)."""
        self.skipped_last = reason is not None
        if reason is None:
            self.consecutive = 0
            return False
        if self.consecutive == 0:
            self.skipped_before_streak = self.skipped
            self.streak_from = self.at
        self.skipped += 1
        self.last_reason = reason
        if extends_streak:
            self.consecutive += 1
        return True

    @property
    def exhausted(self) -> bool:
        """True when the open streak has reached ``max_bad``: the run must stop."""
        return self.max_bad is not None and self.consecutive >= self.max_bad

    def metrics(self) -> dict[str, int]:
        """``skipped_steps`` (all so far) and ``bad_steps`` (the open streak) for a logged row."""
        return {"skipped_steps": self.skipped, "bad_steps": self.consecutive}


def keep_good_state(acc: Accelerator, checkpoint_dir: Path, step: int) -> Path:
    """``checkpoint_dir/step-<step>``: written now unless a complete one is already there (every
    process must call this). Used when a run stops on bad steps: the state in memory equals the
    last good one, and an existing complete checkpoint of that step is kept as it is."""
    target = checkpoint_dir / f"step-{step}"
    if (target / MARKER).exists():
        return target
    return save_checkpoint(acc, checkpoint_dir, step)


def stop_message(guard: StepGuard, checkpoint: Path | None,
                 steps: str = "non-finite optimiser steps",
                 setting: str = "train.max_bad_steps") -> str:
    """The one-line :class:`NonFiniteError` message: the streak's first and last step (as the log
    names them; ``steps`` says what they are), what the last one had non-finite, and where to
    resume from."""
    span = guard.at if guard.streak_from == guard.at else f"{guard.streak_from} to {guard.at}"
    where = (f"the last good state is checkpoint {checkpoint}; resume from it (same out) with e.g. "
             "a lower train.learning_rate" if checkpoint is not None else
             "no checkpoint of a good state was written")
    return (f"{guard.consecutive} consecutive {steps} ({span}; last: "
            f"{guard.last_reason}) reached {setting}={guard.max_bad}, so training stopped; {where}")
