"""Resumable JSONL jobs: generation and labelling are paid for once.

A job appends finished rows to a JSONL file and flushes (and fsyncs) after every chunk. When the job
is started again it reads the rows already there, drops a torn last line (a kill in the middle of a
write), and the caller skips the work those rows cover. Rows carry the ``index`` of the input they
belong to, so a restarted job neither repeats nor loses a row.

Chunks are all or nothing. A chunk's rows are often made together (one batched, seeded generation
call for ``flush_every`` prompts), so a row's text can depend on which rows shared its chunk; a kill
that left half a chunk behind would make the restarted job regenerate the rest in a different
chunk and write rows an uninterrupted run would not have written. After each chunk is durable its
row count is appended to ``<file>.commits``; a restarted job keeps only the rows those counts cover
and cuts the rest (a torn line and any whole rows of an unfinished chunk) off the file, so the
chunk is made again exactly as before. A file without ``.commits`` (written by an older version, or
by hand) keeps every complete line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from alignlab import crashpoint
from alignlab.runs import write_atomic
from alignlab.storage import append_text


class JsonlJob:
    """An append-only JSONL output that survives being killed (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.commits = self.path.with_name(self.path.name + ".commits")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.dropped_torn_line = False  # any bytes cut off: a torn line or an unfinished chunk
        self.dropped_rows = 0  # whole rows of an unfinished chunk cut off
        self.rows: list[dict[str, Any]] = self._recover()

    def _recover(self) -> list[dict[str, Any]]:
        """Rows already written, up to the last finished chunk (module docstring); what follows is
        cut off the file. Any other unreadable line is a :class:`RecordError` naming the file and
        line."""
        from alignlab.data.errors import RecordError

        data = self.path.read_bytes() if self.path.is_file() else b""
        if not data:
            self.commits.write_text("")  # a fresh job: count its chunks from here
            return []
        keep = data.rfind(b"\n") + 1
        lines = data[:keep].split(b"\n")[:-1]
        if self.commits.is_file():
            committed = self._committed()
            if committed < len(lines):
                self.dropped_rows = len(lines) - committed
                lines = lines[:committed]
                keep = sum(len(line) + 1 for line in lines)
        else:  # an older job file: every complete line counts; track chunks from here on
            self.commits.write_text(f"{len(lines)}\n")
        if keep < len(data):
            with open(self.path, "r+b") as fh:
                fh.truncate(keep)
            self.dropped_torn_line = True
        rows = []
        for number, line in enumerate(lines, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise RecordError(str(self.path), number, None,
                                      f"corrupt row ({exc.msg}); delete the file to start the job "
                                      f"again") from None
        return rows

    def _committed(self) -> int:
        """Rows covered by the finished chunks recorded in ``.commits`` (a torn count is cut off)."""
        text = self.commits.read_text()
        keep = text.rfind("\n") + 1
        if keep < len(text):
            with open(self.commits, "r+") as fh:
                fh.truncate(keep)
        return sum(int(n) for n in text[:keep].split())

    def done_indices(self) -> set[int]:
        """The ``index`` of every row already written."""
        return {int(r["index"]) for r in self.rows if "index" in r}

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        """Write ``rows`` and make them durable before returning."""
        rows = list(rows)
        if not rows:
            return
        append_jsonl(self.path, rows)
        crashpoint.hit("chunk_commit")
        append_text(self.commits, f"{len(rows)}\n", sync=True)  # the chunk is finished
        self.rows.extend(rows)

    def sorted_rows(self) -> list[dict[str, Any]]:
        """Every row in input order."""
        return sorted(self.rows, key=lambda r: r.get("index", 0))


def write_jsonl_atomic(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write ``rows`` through a temporary file, fsync and a rename (:func:`alignlab.runs.write_atomic`),
    so ``path`` is never half-written."""
    write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def append_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append ``rows`` to ``path`` and make them durable (flush + fsync) before returning."""
    rows = list(rows)
    if not rows:
        return
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in rows]
    text = "".join(lines)
    torn = len(text) - len(lines[-1]) // 2  # a crash here leaves the chunk's last row half written
    crashpoint.hit("jsonl_append", lambda: append_text(path, text[:torn]))
    # all or nothing: a write that fails part-way (disk full) is cut back, then StorageError
    append_text(path, text, sync=True)
