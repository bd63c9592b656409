"""Named crash points: where a write can be interrupted, and a way to kill the process exactly there.

Every place that makes an output durable (a checkpoint's COMPLETE marker, an appended JSONL chunk, a
metrics line, a temporary file about to be renamed, a model folder about to be swapped in) calls
:func:`hit` with the point's name. Normally that costs one dictionary lookup. Two environment
variables make it useful to the crash campaign (``benchmarks/reliability/crash.py``):

- ``ALIGNLAB_CRASH_AT=point:n`` sends SIGKILL to this process the ``n``-th time (1-based) ``point``
  is reached; ``before_kill`` (when given) runs first, e.g. to leave half a JSONL line behind, as a
  kill in the middle of ``write`` would;
- ``ALIGNLAB_CRASH_COUNT=file`` appends each point's name to ``file`` when it is reached, so a run
  tells the campaign how many moments of each kind it has.

The points are: ``checkpoint`` (state saved, COMPLETE not yet written), ``jsonl_append`` (a chunk of
rows half written: its last row torn), ``chunk_commit`` (a job's chunk written, its count not yet
appended to ``.commits``), ``metrics`` (a metrics.jsonl line half written), ``atomic_write`` (a temporary
file written, not yet renamed), ``model_save`` (a model folder written to its temporary name, not
yet swapped in), ``cache_block`` (a reference-cache block written, not yet renamed) and
``teacher_shard`` (a distillation teacher shard written, not yet renamed).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

ENV_AT = "ALIGNLAB_CRASH_AT"
ENV_COUNT = "ALIGNLAB_CRASH_COUNT"

_seen: dict[str, int] = {}


def _target() -> tuple[str, int] | None:
    spec = os.environ.get(ENV_AT)
    if not spec:
        return None
    point, _, n = spec.rpartition(":")
    if not point or not n.isdigit():
        raise ValueError(f"{ENV_AT}={spec!r}: expected point:n, e.g. checkpoint:2")
    return point, int(n)


def reset() -> None:
    """Forget the passages counted so far (a forked child that starts a fresh count)."""
    _seen.clear()


def hit(point: str, before_kill: Callable[[], None] | None = None) -> None:
    """Count one arrival at ``point``; SIGKILL this process when it is the armed one (module doc)."""
    if ENV_AT not in os.environ and ENV_COUNT not in os.environ:
        return
    _seen[point] = _seen.get(point, 0) + 1
    count_file = os.environ.get(ENV_COUNT)
    if count_file:
        with open(count_file, "a") as fh:
            fh.write(point + "\n")
    if _target() == (point, _seen[point]):
        if before_kill is not None:
            before_kill()
        os.kill(os.getpid(), signal.SIGKILL)
