"""Run folders: every stage writes its resolved config, metrics, a readable log and its outputs.

Layout of a run folder::

    config.yaml      the resolved config (every default filled in)
    metrics.jsonl    one JSON object per logged step / evaluation
    log.txt          human-readable log
    checkpoints/     step-N/ folders (safetensors) for resuming
    model/           the trained model, an ordinary Hugging Face folder (training stages)
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from alignlab.config import dump_config


class GateFailed(RuntimeError):
    """A stage finished and wrote its outputs, but a quality gate it was given failed (e.g. the
    red-team attack success rate above ``fail_above``); the command exits with code 1."""


class RunFolder:
    """A stage's output folder; creating one writes the resolved config."""

    def __init__(self, out: str | Path, config: BaseModel | None = None, echo: bool = True):
        self.path = Path(out)
        self.path.mkdir(parents=True, exist_ok=True)
        self.echo = echo
        self._start = time.time()
        self.trackers = None
        if config is not None:
            (self.path / "config.yaml").write_text(dump_config(config))
            self.trackers = start_trackers(config, self.path)

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    def log(self, message: str) -> None:
        """Append a timestamped line to log.txt (and echo it unless quiet)."""
        stamp = f"[{time.time() - self._start:7.1f}s]"
        with open(self.path / "log.txt", "a") as fh:
            fh.write(f"{stamp} {message}\n")
        if self.echo:
            print(f"{stamp} {message}", flush=True)

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Append one JSON line to metrics.jsonl (the source of truth), then tell the trackers."""
        row = {"step": step, "time": round(time.time() - self._start, 3), **metrics}
        with open(self.path / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(row, default=float) + "\n")
        if self.trackers is not None:
            self.trackers.log(metrics, step)

    def close(self) -> None:
        """Finish the trackers (flush their files); metrics.jsonl needs no closing."""
        if self.trackers is not None:
            self.trackers.finish()

    def write_json(self, name: str, payload: Any) -> Path:
        target = self.path / name
        target.write_text(json.dumps(payload, indent=2, default=float))
        return target


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a run's metrics.jsonl."""
    file = Path(path) / "metrics.jsonl" if Path(path).is_dir() else Path(path)
    return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]


def start_trackers(config: BaseModel, path: Path):
    """The trackers of ``config.log.report_to`` (None when the config asks for none)."""
    settings = getattr(config, "log", None)
    if settings is None or not settings.report_to:
        return None
    from alignlab.trackers import Trackers

    return Trackers(list(settings.report_to), settings.project, settings.run_name or path.name, path)
