"""Experiment trackers (TensorBoard, Weights & Biases, Trackio, MLflow) behind accelerate's tracker API.

``metrics.jsonl`` stays the source of truth: a stage's :class:`~alignlab.runs.RunFolder` writes every
row there first and then forwards its numeric values to the trackers named in the config's
``log.report_to`` (main process only). Tracker packages are imported only when asked for; an
uninstalled one is refused when the config is read (:class:`alignlab.config.LogSettings`).

Where each writes: ``tensorboard`` event files under ``<out>/tensorboard/<run_name>``; ``wandb`` its
usual ``wandb/`` folder (with no ``WANDB_API_KEY`` and no ``WANDB_MODE`` in the environment it runs in
offline mode, so a machine without network or key still works; ``wandb sync`` uploads later);
``mlflow`` the tracking URI of ``MLFLOW_TRACKING_URI`` (default ``./mlruns``); ``trackio`` its local
project store. Secrets (API keys) are read by the tracker libraries from the environment and never
written by alignlab.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def is_main_process() -> bool:
    """Rank 0 of a launched job (``RANK`` as set by ``accelerate launch``/torchrun), or a plain run."""
    return int(os.environ.get("RANK", "0")) == 0


def make_tracker(name: str, project: str, run_name: str, out: Path):
    """One started accelerate tracker."""
    from accelerate import tracking

    if name == "tensorboard":
        tracker = tracking.TensorBoardTracker(run_name, out / "tensorboard")
    elif name == "wandb":
        if "WANDB_MODE" not in os.environ and "WANDB_API_KEY" not in os.environ:
            os.environ["WANDB_MODE"] = "offline"
        tracker = tracking.WandBTracker(project, name=run_name, dir=str(out))
    elif name == "mlflow":
        tracker = tracking.MLflowTracker(experiment_name=project, run_name=run_name)
    elif name == "trackio":
        tracker = tracking.TrackioTracker(project, name=run_name)
    else:
        raise ValueError(f"unknown tracker {name!r}")
    tracker.start()
    return tracker


def numeric(values: Mapping[str, Any]) -> dict[str, float]:
    """The int/float entries of a metrics row (bools and strings are not scalars to plot)."""
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "time")}


class Trackers:
    """The trackers of one run folder (empty when ``report_to`` is empty or not the main process)."""

    def __init__(self, report_to: list[str], project: str, run_name: str, out: Path):
        self.trackers = ([make_tracker(name, project, run_name, out) for name in report_to]
                         if is_main_process() else [])

    def log(self, values: Mapping[str, Any], step: int | None) -> None:
        scalars = numeric(values)
        if not scalars:
            return
        for tracker in self.trackers:
            tracker.log(scalars, step=step if step is not None else 0)

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []
