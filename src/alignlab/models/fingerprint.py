"""What identifies a model's weights, for caches of values computed from them.

A cache of model outputs (reference log-probs, reference samples) may only be reused when the model is
the same. :func:`model_identity` says what "the same" means:

- a **local folder** (or a GGUF file's converted folder): every file under it, subfolders included,
  by relative path. In ``stat`` mode each file contributes its size, modification time *and status
  change time* (``st_ctime``): ``cp -p``, ``rsync -a`` or unpacking an archive can reproduce size and
  mtime, but every write or replacement of a file sets its ctime to now, and ctime cannot be set back
  by ordinary tools. A touched-but-equal file therefore only costs a recompute, never a stale reuse.
  The folder's resolved path is part of the identity. In ``content`` mode each file contributes its
  SHA-256 instead; the path is left out, so a copied or moved folder keeps its cache entries.
  Hashing reads every byte (benchmarks/reference_cache/README.md: about 1.3 s per GB);
- a **hub name**: its commit. A pinned 40-hex ``revision`` is used as is; otherwise the revision (or
  ``main``) is resolved through the local Hugging Face cache, then (unless ``HF_HUB_OFFLINE`` is set)
  through the hub's API. When neither answers, the identity is None and the caller must not cache.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Literal

WeightsCheck = Literal["stat", "content"]
COMMIT = re.compile(r"^[0-9a-f]{40}$")
CHUNK = 8 << 20


def folder_files(root: Path) -> list[Path]:
    """Every regular file under ``root`` (recursively), or ``[root]`` for a file, sorted."""
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file())


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 8 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_entry(path: Path, root: Path, check: WeightsCheck) -> list:
    """``[relative path, size, mtime_ns, ctime_ns]`` (stat) or ``[relative path, size, sha256]``."""
    name = path.name if root.is_file() else path.relative_to(root).as_posix()
    stat = path.stat()
    if check == "content":
        return [name, stat.st_size, file_sha256(path)]
    return [name, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]


def local_identity(path: str | Path, check: WeightsCheck = "stat") -> dict:
    """The identity of a local model folder or file (module docstring)."""
    if check not in ("stat", "content"):
        raise ValueError(f"weights check must be 'stat' or 'content', got {check!r}")
    root = Path(path).expanduser().resolve()
    entry: dict = {"check": check,
                   "files": [file_entry(p, root, check) for p in folder_files(root)]}
    if check == "stat":
        entry["source"] = str(root)
    return entry


def hub_commit(name: str, revision: str | None) -> str | None:
    """The commit a hub ``name`` at ``revision`` (default ``main``) resolves to, or None."""
    if revision and COMMIT.match(revision):
        return revision
    commit = _cached_commit(name, revision or "main")
    if commit is None and not os.environ.get("HF_HUB_OFFLINE"):
        commit = _remote_commit(name, revision)
    return commit


def _cached_commit(name: str, revision: str) -> str | None:
    """The commit the local Hugging Face cache records for ``name``@``revision``."""
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(name, revision=revision, local_files_only=True)
    except Exception:  # noqa: BLE001 - not in the cache, in any of the ways the hub library says so
        return None
    commit = Path(folder).name
    return commit if COMMIT.match(commit) else None


def _remote_commit(name: str, revision: str | None) -> str | None:
    try:
        from huggingface_hub import HfApi

        return HfApi().model_info(name, revision=revision, timeout=10).sha
    except Exception:  # noqa: BLE001 - no network, no such repo, no access: the caller won't cache
        return None


def model_identity(source: str, revision: str | None, is_local: bool,
                   check: WeightsCheck = "stat") -> dict | None:
    """What identifies the weights at ``source`` (module docstring); None when nothing does."""
    if is_local:
        return local_identity(source, check)
    commit = hub_commit(source, revision)
    return None if commit is None else {"hub": source, "commit": commit}
