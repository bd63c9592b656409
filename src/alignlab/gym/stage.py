"""The ``gym`` stage: build the alignment gym (world, data files, pretrained tiny base model)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from alignlab.config import StrictModel
from alignlab.gym.build import build_gym


class GymBuildConfig(StrictModel):
    """Build the alignment gym: world, data files and the pretrained tiny base model.

    ``pretrain_steps`` (a step budget: the same base model on every machine) wins over
    ``pretrain_seconds`` (a time budget, used only when no step count is given). ``ladder`` also
    pretrains the model ladder (four sizes, ``ladder_steps`` steps each) into ``out/ladder/``."""

    stage: Literal["gym"] = "gym"
    out: str
    seed: int = 0
    pretrain_seconds: float = Field(75.0, gt=0)
    pretrain_steps: int | None = Field(None, ge=1)
    length_bias: float = 0.0
    ladder: bool = False
    ladder_steps: int = Field(300, ge=1)


def run_gym(cfg: GymBuildConfig) -> Path:
    """Build the gym into ``cfg.out`` (a gym folder, not a run folder: no log or config is added)."""
    return Path(build_gym(cfg.out, seed=cfg.seed, pretrain_seconds=cfg.pretrain_seconds,
                          length_bias=cfg.length_bias, max_steps=cfg.pretrain_steps,
                          ladder=cfg.ladder, ladder_steps=cfg.ladder_steps))
