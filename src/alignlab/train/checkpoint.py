"""Checkpoints under ``run.checkpoint_dir/step-N/`` and finding the one to resume from.

A checkpoint is ``accelerator.save_state``'s folder (model weights as safetensors, optimiser, the
registered scheduler and progress objects, every process's RNG state) plus an empty ``COMPLETE``
marker written last, so a job killed while saving never resumes from a half-written folder: such a
folder is passed over with a log line, and removed before the same step is saved again. Under
FSDP2 the model and optimiser are sharded ``torch.distributed.checkpoint`` folders
(``pytorch_model_fsdp_0/``, ``optimizer_0/``, one file per process) and under DeepSpeed the engine's
own checkpoint; resume those with the same number of processes.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from accelerate import Accelerator

from alignlab import crashpoint
from alignlab.storage import StorageError, writing

MARKER = "COMPLETE"
_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class Progress:
    """What the loop needs to continue: the optimiser step reached and the data plan it followed.

    Registered with ``accelerator.register_for_checkpointing`` (hence state_dict/load_state_dict).
    ``skipped_steps``: optimiser steps skipped as non-finite so far (:mod:`alignlab.train.nonfinite`;
    0 in a checkpoint written before the field existed).
    """

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    num_examples: int = 0
    global_batch: int = 0
    skipped_steps: int = 0

    def state_dict(self) -> dict[str, int]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, int]) -> None:
        for key, value in state.items():
            setattr(self, key, int(value))


def latest_checkpoint(checkpoint_dir: Path, log: Callable[[str], None] | None = None) -> Path | None:
    """The complete ``step-N`` folder with the largest N, or None.

    A ``step-N`` folder without the COMPLETE marker (a save killed half-way) is never chosen; when it
    is newer than the one chosen, ``log`` (if given) says that it was ignored."""
    if not checkpoint_dir.is_dir():
        return None
    found, partial = [], []
    for child in checkpoint_dir.iterdir():
        match = _STEP_DIR.match(child.name)
        if match:
            (found if (child / MARKER).exists() else partial).append((int(match.group(1)), child))
    chosen = max(found) if found else None
    if log is not None:
        for step, folder in sorted(partial):
            if chosen is None or step > chosen[0]:
                log(f"ignoring incomplete checkpoint {folder} (no {MARKER} marker: the run was "
                    f"killed while saving it)")
    return chosen[1] if chosen else None


def save_checkpoint(accelerator: Accelerator, checkpoint_dir: Path, step: int) -> Path:
    """Save the full training state at ``step``; every process must call this.

    A leftover incomplete folder of the same step (from a killed save) is removed first, so no stale
    file of it survives into the new checkpoint. COMPLETE is written last (see the module doc)."""
    target = checkpoint_dir / f"step-{step}"
    if accelerator.is_main_process and target.exists() and not (target / MARKER).exists():
        shutil.rmtree(target)
    accelerator.wait_for_everyone()
    try:
        with writing(target):  # disk full / not writable: one StorageError line naming the folder
            accelerator.save_state(str(target), safe_serialization=True)
    except StorageError:
        shutil.rmtree(target, ignore_errors=True)  # free the space; earlier checkpoints stay
        raise
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        crashpoint.hit("checkpoint")
        (target / MARKER).touch()
    accelerator.wait_for_everyone()
    return target
