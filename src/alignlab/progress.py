"""Progress with an ETA on a terminal, silence elsewhere.

:func:`progress` gives a rich progress bar (description, bar, done/total, elapsed, remaining) when
standard output is a terminal, and a do-nothing tracker otherwise: in CI and in files the stages'
own periodic log lines (``step N/M: ...``, block and chunk counts) are the progress report, so no
bar characters end up in logs. ``ALIGNLAB_PROGRESS=0`` switches bars off, ``=1`` forces them on.
Only the main process of a launched job shows a bar.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


class _Silent:
    def advance(self, n: int = 1) -> None:
        pass


class _Bar:
    def __init__(self, progress, task):
        self.progress, self.task = progress, task

    def advance(self, n: int = 1) -> None:
        self.progress.advance(self.task, n)


def bars_enabled() -> bool:
    """Whether :func:`progress` draws bars here (see the module docstring)."""
    forced = os.environ.get("ALIGNLAB_PROGRESS")
    if forced is not None:
        return forced not in ("0", "", "false", "no")
    return int(os.environ.get("RANK", "0")) == 0 and sys.stdout.isatty()


@contextmanager
def progress(total: int, description: str) -> Iterator[_Bar | _Silent]:
    """``with progress(n, "training") as bar: ... bar.advance()`` (module docstring)."""
    if not bars_enabled() or total <= 0:
        yield _Silent()
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, transient=True) as bar:
        yield _Bar(bar, bar.add_task(description, total=total))
