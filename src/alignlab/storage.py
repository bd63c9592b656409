"""Writes that fail because the disk is full or the run folder is not writable.

A stage that runs out of disk (``ENOSPC``, a quota ``EDQUOT``, a file-size limit ``EFBIG``) or finds
its folder read-only (``EROFS``, ``EACCES``, ``EPERM``) stops with one :class:`StorageError` line that
names the path and the cause, instead of a traceback; and what it had finished stays readable:

* :func:`append_text` appends to a log or a JSONL job through one file descriptor and, when the
  write fails part-way, cuts the file back to its old length, so no torn line is left behind
  (a resumable job then restarts exactly after its last complete row);
* :func:`writing` wraps any other write (a checkpoint, a model folder, a JSON report) and turns the
  low-level failure into :class:`StorageError`; writers outside Python (safetensors' Rust writer)
  report the OS error only in their message (``"No space left on device (os error 28)"``), which is
  recognised too, and torch's C++ writer only says ``"file write failed"``: then the cause is found
  by looking (no free space left on the path's file system, or a file-size limit in force).

Nothing here imports the rest of alignlab.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CAUSES = {
    errno.ENOSPC: "disk full (no space left on device, ENOSPC)",
    errno.EDQUOT: "disk quota exceeded (EDQUOT)",
    errno.EFBIG: "file too large for the file-size limit (EFBIG; see `ulimit -f`)",
    errno.EROFS: "not writable: read-only file system (EROFS)",
    errno.EACCES: "not writable: permission denied (EACCES)",
    errno.EPERM: "not writable: operation not permitted (EPERM)",
}
# How non-Python writers (Rust's std::io in safetensors/tokenizers, C++ in torch) spell the same.
_MESSAGES = (
    ("no space left on device", errno.ENOSPC), ("storagefull", errno.ENOSPC),
    ("os error 28", errno.ENOSPC), ("disk quota exceeded", errno.EDQUOT),
    ("os error 122", errno.EDQUOT), ("file too large", errno.EFBIG),
    ("filetoolarge", errno.EFBIG), ("os error 27", errno.EFBIG),
    ("read-only file system", errno.EROFS), ("os error 30", errno.EROFS),
    ("permission denied", errno.EACCES), ("os error 13", errno.EACCES),
)

_UNSPECIFIED = re.compile(r"file write failed|failed writing file|unexpected pos")


class StorageError(OSError):
    """A write under ``path`` failed for lack of space or permission; the message is one line."""

    def __init__(self, path: str | os.PathLike, code: int):
        self.path, self.code = str(path), code
        self.message = (f"cannot write {self.path}: {CAUSES.get(code, os.strerror(code))}; "
                        f"{_advice(code)} and rerun the same command (finished work is kept)")
        super().__init__(self.message)
        self.errno = code

    def __str__(self) -> str:
        return self.message


def _advice(code: int) -> str:
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "free some space"
    if code == errno.EFBIG:
        return "raise the file-size limit"
    return "make the folder writable (or choose another 'out')"


def write_errno(exc: BaseException) -> int | None:
    """The storage errno behind ``exc`` (an :class:`OSError` or a writer's error message), else None."""
    for current in (exc, exc.__cause__, exc.__context__):
        if isinstance(current, OSError) and current.errno in CAUSES:
            return current.errno
    text = str(exc).lower()
    for needle, code in _MESSAGES:
        if needle in text:
            return code
    return None


def probe_cause(path: str | os.PathLike) -> int | None:
    """Why a writer that gave no errno (torch's ``"file write failed"``) failed under ``path``:
    ENOSPC when its file system has under 1 MiB free, EFBIG when a file-size limit is set, else None."""
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        if shutil.disk_usage(folder).free < 2**20:
            return errno.ENOSPC
    except OSError:
        pass
    try:
        import resource

        if resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY:
            return errno.EFBIG
    except (ImportError, ValueError, OSError):
        pass
    return None


@contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Run a write of ``path``; a full disk or an unwritable folder becomes :class:`StorageError`."""
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:  # re-raised unchanged unless it is a storage failure
        code = write_errno(exc)
        if code is None and _UNSPECIFIED.search(str(exc).lower()):
            code = probe_cause(path)
        if code is None:
            raise
        raise StorageError(path, code) from exc


def append_text(path: str | os.PathLike, text: str, sync: bool = False) -> None:
    """Append ``text`` to ``path`` (created if missing), all of it or nothing.

    When a write fails part-way (disk full, file-size limit, an interrupt) the file is truncated
    back to its length before the call and the error is raised (as :class:`StorageError` for
    storage failures). ``sync``: fsync before returning (durable rows of a resumable job).
    """
    data = memoryview(text.encode("utf-8"))
    with writing(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            start = os.lseek(fd, 0, os.SEEK_END)
            try:
                while data:
                    data = data[os.write(fd, data):]
                if sync:
                    os.fsync(fd)
            except BaseException:
                _cut_back(fd, start)
                raise
        finally:
            os.close(fd)


def _cut_back(fd: int, length: int) -> None:
    """Truncate to ``length`` (freeing what a failed write added); best effort."""
    try:
        os.ftruncate(fd, length)
    except OSError:
        pass
