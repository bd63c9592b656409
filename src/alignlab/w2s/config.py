"""Configuration of the ``w2s`` stage (weak-to-strong generalisation, Burns et al. 2023).

Validated when read, before any model loads: model names are unique and usable as folder names;
``pairwise`` tasks have two classes; a model that is a local Hugging Face folder is checked for a
head that can serve the task (an error otherwise, :mod:`alignlab.models.facts`) and for its size —
a model listed as stronger (later) that has fewer parameters than an earlier one is a *warning*
(Burns et al.'s setting has the student larger, but a reversed pair is a legitimate control).
Models given as hub names or GGUF files are checked the same way once resolved, when the stage runs.
"""

from __future__ import annotations

import warnings
from itertools import pairwise
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from alignlab.config import DataSettings, ModelSettings, StageConfig, StrictModel, TrainSettings
from alignlab.models.facts import check_classifier_head, parameter_count
from alignlab.w2s.tasks import head_outputs

TransferLoss = Literal["ce", "aux_conf", "product", "window"]


class W2STask(StrictModel):
    """The labelled data and what kind of task it is.

    ``classify``: rows of :mod:`alignlab.data.labelled` with ``num_classes`` classes. ``pairwise``:
    preference pairs in any pair format, the gold preference being ``chosen`` (a soft label below
    0.5 flips it; exactly 0.5 is skipped and counted). The test set is ``test_data`` or a seeded
    ``test_fraction`` of ``data``; the rest is split in two halves (``split_seed``)."""

    kind: Literal["classify", "pairwise"]
    data: DataSettings
    num_classes: int = Field(2, ge=2)
    test_data: DataSettings | None = None
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    split_seed: int = 0

    @model_validator(mode="after")
    def _pairwise_is_binary(self):
        if self.kind == "pairwise" and self.num_classes != 2:
            raise ValueError("a pairwise task has two classes (A or B preferred); drop num_classes")
        return self


class W2SModel(StrictModel):
    """One rung of the ladder: a name (a folder name in the run), the model and its training."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    model: ModelSettings
    train: TrainSettings = Field(default_factory=TrainSettings)


class W2SConfig(StageConfig):
    """Weak-to-strong experiment (see :mod:`alignlab.w2s.pipeline`).

    ``models``: weakest first. ``pairs``: which (weak, strong) pairs get students — ``all`` (every
    i < j), ``from_weakest`` (model 0 supervises each other model) or ``extremes`` (first and last
    only). ``losses``: transfer losses for the students (:func:`alignlab.losses.w2s.transfer_loss`).
    ``bootstrap``: also run the chain model 0 -> 1 -> ... -> last with each loss. ``seeds``: each
    seed retrains every model (its ``train.seed`` is replaced); the data split stays fixed."""

    stage: Literal["w2s"] = "w2s"
    task: W2STask
    models: list[W2SModel] = Field(min_length=2)
    losses: list[TransferLoss] = Field(default_factory=lambda: ["ce", "aux_conf"], min_length=1)
    pairs: Literal["all", "from_weakest", "extremes"] = "all"
    bootstrap: bool = False
    aux_alpha: float = Field(0.75, ge=0.0, le=1.0)
    aux_warmup_frac: float = Field(0.2, ge=0.0, le=1.0)
    window_radius: float = Field(0.15, gt=0.0, le=0.5)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    resamples: int = Field(1000, ge=100)
    keep_checkpoints: bool = False

    @model_validator(mode="after")
    def _check_models(self):
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        if len(set(self.losses)) != len(self.losses):
            raise ValueError(f"losses are listed twice: {self.losses}")
        if "window" in self.losses and self.task.num_classes != 2:
            raise ValueError("the confidence-window loss is defined for two classes")
        check_ladder(self, resolved={})
        return self

    def head_outputs(self) -> int:
        return head_outputs(self.task.kind, self.task.num_classes)


def check_ladder(cfg: W2SConfig, resolved: dict[str, str]) -> list[int | None]:
    """Head check (error) and size order (warning) for every model whose folder is known: local
    folders, plus ``resolved`` ``{name: folder}``. Returns each model's parameter count (None when
    unknown)."""
    counts: list[int | None] = []
    for member in cfg.models:
        folder = resolved.get(member.name) or _local_folder(member.model.path)
        if folder is None:
            counts.append(None)
            continue
        check_classifier_head(folder, cfg.head_outputs(), f"model {member.name!r}")
        counts.append(parameter_count(folder) or None)
    _warn_size_order(cfg, counts)
    return counts


def _local_folder(path: str) -> Path | None:
    folder = Path(path).expanduser()
    return folder if (folder / "config.json").is_file() else None


def _warn_size_order(cfg: W2SConfig, counts: list[int | None]) -> None:
    known = [(m.name, n) for m, n in zip(cfg.models, counts) if n]
    for (weak, n_weak), (strong, n_strong) in pairwise(known):
        if n_strong < n_weak:
            warnings.warn(f"w2s: model {strong!r} ({n_strong:,} parameters) is listed as stronger "
                          f"than {weak!r} ({n_weak:,}) but is smaller; models go weakest first",
                          UserWarning, stacklevel=2)
