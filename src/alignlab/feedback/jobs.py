"""Resumable JSONL jobs: generation and labelling are paid for once.

A job appends finished rows to a JSONL file and flushes (and fsyncs) after every chunk. When the job
is started again it reads the rows already there, drops a torn last line (a kill in the middle of a
write), and the caller skips the work those rows cover. Rows carry the ``index`` of the input they
belong to, so a restarted job neither repeats nor loses a row.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class JsonlJob:
    """An append-only JSONL output that survives being killed (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.dropped_torn_line = False
        self.rows: list[dict[str, Any]] = self._recover()

    def _recover(self) -> list[dict[str, Any]]:
        """Rows already written; a torn (unterminated) last line is cut off the file. Any other
        unreadable line is a :class:`RecordError` naming the file and line."""
        from alignlab.data.errors import RecordError

        if not self.path.is_file():
            return []
        data = self.path.read_bytes()
        keep = data.rfind(b"\n") + 1
        if keep < len(data):  # a partial last line without its newline
            with open(self.path, "r+b") as fh:
                fh.truncate(keep)
            self.dropped_torn_line = True
        rows = []
        for number, line in enumerate(data[:keep].decode().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise RecordError(str(self.path), number, None,
                                      f"corrupt row ({exc.msg}); delete the file to start the job "
                                      f"again") from None
        return rows

    def done_indices(self) -> set[int]:
        """The ``index`` of every row already written."""
        return {int(r["index"]) for r in self.rows if "index" in r}

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        """Write ``rows`` and make them durable before returning."""
        rows = list(rows)
        append_jsonl(self.path, rows)
        self.rows.extend(rows)

    def sorted_rows(self) -> list[dict[str, Any]]:
        """Every row in input order."""
        return sorted(self.rows, key=lambda r: r.get("index", 0))


def write_jsonl_atomic(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write ``rows`` through a temporary file and a rename, so ``path`` is never half-written."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    os.replace(tmp, path)


def append_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append ``rows`` to ``path`` and make them durable (flush + fsync) before returning."""
    rows = list(rows)
    if not rows:
        return
    with open(path, "a") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        fh.flush()
        os.fsync(fh.fileno())
