"""Checkpoints under ``run.checkpoint_dir/step-N/`` and finding the one to resume from.

A checkpoint is ``accelerator.save_state``'s folder (model weights as safetensors, optimiser, the
registered scheduler and progress objects, every process's RNG state) plus an empty ``COMPLETE``
marker written last, so a job killed while saving never resumes from a half-written folder. Under
FSDP2 the model and optimiser are sharded ``torch.distributed.checkpoint`` folders
(``pytorch_model_fsdp_0/``, ``optimizer_0/``, one file per process) and under DeepSpeed the engine's
own checkpoint; resume those with the same number of processes.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from accelerate import Accelerator

MARKER = "COMPLETE"
_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class Progress:
    """What the loop needs to continue: the optimiser step reached and the data plan it followed.

    Registered with ``accelerator.register_for_checkpointing`` (hence state_dict/load_state_dict).
    """

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    num_examples: int = 0
    global_batch: int = 0

    def state_dict(self) -> dict[str, int]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, int]) -> None:
        for key, value in state.items():
            setattr(self, key, int(value))


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The complete ``step-N`` folder with the largest N, or None."""
    if not checkpoint_dir.is_dir():
        return None
    found = []
    for child in checkpoint_dir.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (child / MARKER).exists():
            found.append((int(match.group(1)), child))
    return max(found)[1] if found else None


def save_checkpoint(accelerator: Accelerator, checkpoint_dir: Path, step: int) -> Path:
    """Save the full training state at ``step``; every process must call this."""
    target = checkpoint_dir / f"step-{step}"
    accelerator.save_state(str(target), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (target / MARKER).touch()
    accelerator.wait_for_everyone()
    return target
