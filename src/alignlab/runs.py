"""Run folders: every stage writes its resolved config, metrics, a readable log and its outputs.

Layout of a run folder::

    config.yaml      the resolved config (every default filled in)
    metrics.jsonl    one JSON object per logged step / evaluation
    log.txt          human-readable log
    checkpoints/     step-N/ folders (safetensors) for resuming
    model/           the trained model, an ordinary Hugging Face folder (training stages)

A run may be killed at any moment and started again with the same command. Whole files (config.yaml,
the json outputs) are written through a temporary file and a rename (:func:`write_atomic`), so they
are either the old or the new version; metrics.jsonl is append-only: a torn last line (a kill in the
middle of a write) is cut off when the folder is opened again, and a training stage that resumes from
step S drops the rows the killed attempt logged after S (:meth:`RunFolder.rewind_metrics`), so the
file ends up with each step once, as an uninterrupted run writes it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from alignlab import crashpoint
from alignlab.config import dump_config
from alignlab.storage import append_text, writing


class GateFailed(RuntimeError):
    """A stage finished and wrote its outputs, but a quality gate it was given failed (e.g. the
    red-team attack success rate above ``fail_above``); the command exits with code 1."""


class RunFolder:
    """A stage's output folder; creating one writes the resolved config."""

    def __init__(self, out: str | Path, config: BaseModel | None = None, echo: bool = True):
        self.path = Path(out)
        with writing(self.path):  # an unwritable or full location: one StorageError line
            self.path.mkdir(parents=True, exist_ok=True)
        self.echo = echo
        self._start = time.time()
        self.trackers = None
        self.dropped_torn_metrics = drop_torn_line(self.path / "metrics.jsonl")
        if config is not None:
            write_atomic(self.path / "config.yaml", dump_config(config))
            self.trackers = start_trackers(config, self.path)
        if self.dropped_torn_metrics:
            self.log("metrics.jsonl ended in a torn line (killed while writing it): line dropped")

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    def log(self, message: str) -> None:
        """Append a timestamped line to log.txt (and echo it unless quiet)."""
        stamp = f"[{time.time() - self._start:7.1f}s]"
        append_text(self.path / "log.txt", f"{stamp} {message}\n")
        if self.echo:
            print(f"{stamp} {message}", flush=True)

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Append one JSON line to metrics.jsonl (the source of truth), then tell the trackers."""
        row = {"step": step, "time": round(time.time() - self._start, 3), **metrics}
        line = json.dumps(row, default=float) + "\n"
        file = self.path / "metrics.jsonl"
        crashpoint.hit("metrics", lambda: append_text(file, line[:len(line) // 2]))
        append_text(file, line)  # all or nothing: no torn line when the disk is full
        if self.trackers is not None:
            self.trackers.log(metrics, step)

    def close(self) -> None:
        """Finish the trackers (flush their files); metrics.jsonl needs no closing."""
        if self.trackers is not None:
            self.trackers.finish()

    def write_json(self, name: str, payload: Any) -> Path:
        """Write ``payload`` as ``<run>/name`` (indented JSON), atomically; returns the path."""
        target = self.path / name
        write_atomic(target, json.dumps(payload, indent=2, default=float))
        return target

    def rewind_metrics(self, step: int) -> int:
        """Make metrics.jsonl what a run that stopped right after ``step`` would have written.

        Called when training resumes from the checkpoint at ``step`` (0: from the start): rows of
        later steps, which the killed attempt logged before it died, are dropped (they are logged
        again as the steps are re-done), and so are rows repeated word for word apart from their
        ``time`` (e.g. the data report every start logs at step 0). Returns the rows dropped."""
        file = self.path / "metrics.jsonl"
        if not file.is_file():
            return 0
        rows = read_metrics(file)
        kept, seen = [], set()
        for row in rows:
            later = isinstance(row.get("step"), (int, float)) and row["step"] > step
            key = json.dumps({k: v for k, v in row.items() if k != "time"}, sort_keys=True,
                             default=float)
            if later or key in seen:
                continue
            seen.add(key)
            kept.append(row)
        if len(kept) < len(rows):
            write_atomic(file, "".join(json.dumps(r, default=float) + "\n" for r in kept))
        return len(rows) - len(kept)


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file + fsync + rename: a reader (or a resumed run)
    sees the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: several may write
    with writing(path):  # disk full / not writable: one StorageError line, no .tmp left behind
        try:
            with open(tmp, "w") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    crashpoint.hit("atomic_write")
    os.replace(tmp, path)


def drop_torn_line(path: str | Path) -> bool:
    """Cut an unterminated last line (a write killed half-way) off the JSONL file ``path``;
    returns whether there was one."""
    path = Path(path)
    if not path.is_file():
        return False
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    if keep == len(data):
        return False
    with open(path, "r+b") as fh:
        fh.truncate(keep)
    return True


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
