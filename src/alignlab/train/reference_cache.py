"""Reference log-probs computed once per (reference model, tokenised examples) and cached on disk.

An entry lives in ``<root>/<key>/`` as ``meta.json`` plus blocks ``block-NNNNN.pt`` of
``block_size`` examples each (a ``[n_block, slots]`` float tensor). The key is a SHA-256 over the
entry's metadata, which names everything the values depend on:

- ``version``: :data:`CACHE_VERSION`, raised whenever the log-prob code or the block format changes,
  so a fix never keeps serving values computed by the old code;
- ``model``: the reference weights (:func:`alignlab.models.fingerprint.model_identity`: every file of
  a local folder, subfolders included, by size + mtime + ctime or by content hash; a hub model's
  commit), its dtype, and whether it is the base of a LoRA policy (adapter disabled). A hub model
  whose commit cannot be resolved is not cached at all;
- ``layout``: the objective's data kind, the number of rows per example (slots) and whether the
  rows include KTO-style mismatched completions. Two objectives that read the same file with a
  different grouping of rows into examples (DPO's ``[chosen, rejected]`` pairs, NPO's one-row binary
  examples) therefore never share an entry;
- ``data``: every example's row count, and every row's token ids and target mask, in order (so the
  tokenizer, chat template, truncation and data slice are part of the key). Labels are not: the same
  texts with other labels (soft labels, say) reuse the values, which depend only on the tokens.

On load, ``meta.json`` must equal what the run expects and every block must have exactly the shape
the run expects and finite values; anything else (a missing or different ``meta.json``, a torn or
corrupt file, a wrongly shaped block) is recomputed and rewritten, with a log line. Blocks are written
atomically (temporary file, then rename) by the main process, so a killed reference pass keeps every
finished block and a re-run (or another run on the same model and data, e.g. another objective with
the same layout in a league table) reads them instead of recomputing.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

from alignlab import crashpoint
from alignlab.config import ModelSettings
from alignlab.models.fingerprint import WeightsCheck, model_identity
from alignlab.models.gguf import cache_root
from alignlab.models.loading import looks_local, resolve_model_source
from alignlab.progress import progress
from alignlab.train.pref_examples import Example

CACHE_VERSION = 2  # 1: keyed on model + row digest only (before the layout fix)


def model_fingerprint(settings: ModelSettings, adapter_base: bool,
                      check: WeightsCheck = "stat") -> dict | None:
    """What identifies the reference model (module docstring); None when it cannot be identified."""
    source, extra = resolve_model_source(settings)
    identity = model_identity(source, extra.get("revision"), looks_local(source), check)
    if identity is None:
        return None
    return {"weights": identity, "dtype": settings.dtype, "adapter_base": adapter_base}


def example_layout(kind: str, examples: list[Example], mismatch: bool) -> dict:
    """How rows are grouped into examples: data kind, rows per example, mismatched rows."""
    return {"kind": kind, "slots": len(examples[0].rows) if examples else 0, "mismatch": mismatch}


def data_digest(examples: list[Example]) -> str:
    """SHA-256 over every example's row count and every row's token ids and target mask, in order."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(b"E" + len(example.rows).to_bytes(4, "little"))
        for row in example.rows:
            digest.update(len(row.input_ids).to_bytes(4, "little"))
            digest.update(torch.tensor(row.input_ids, dtype=torch.int64).numpy().tobytes())
            digest.update(bytes(row.loss_mask))
    return digest.hexdigest()


def cache_meta(model: dict | None, layout: dict, examples: list[Example], block_size: int) -> dict:
    """Everything the cached values depend on (module docstring); ``meta.json`` of the entry."""
    return {"version": CACHE_VERSION, "model": model, "layout": layout,
            "data": data_digest(examples), "examples": len(examples), "block_size": block_size}


def cache_key(meta: dict) -> str:
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:24]


def resolve_cache_dir(setting: str) -> Path | None:
    """``auto`` → ``$ALIGNLAB_CACHE/reference``; ``none`` → no disk cache; else the given folder."""
    if setting == "none":
        return None
    if setting == "auto":
        return cache_root() / "reference"
    return Path(setting).expanduser()


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` then rename ``tmp`` onto ``path`` (readers never see a half-written file)."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    write(tmp)
    crashpoint.hit("cache_block")
    os.replace(tmp, path)


class ReferenceCache:
    """Blocks of reference values ``[n_block, slots]`` under one key folder (or in memory only).

    ``root`` None, or ``meta["model"]`` None (a model that cannot be identified), keeps nothing on
    disk. Existing blocks are trusted only when the folder's ``meta.json`` equals ``meta``.
    """

    def __init__(self, root: Path | None, meta: dict, log: Callable[[str], None]):
        self.meta, self.log = meta, log
        self.block_size = meta["block_size"]
        self.slots = meta["layout"]["slots"]
        usable = root is not None and meta["model"] is not None
        self.folder = root / cache_key(meta) if usable else None
        # Decided once: blocks written before this run are reused only if meta.json matched at start
        # (a block left by another entry is never trusted because this run rewrote meta.json).
        self.trusted = self.folder is not None and self._meta_matches()
        self.meta_written = self.trusted

    def _meta_matches(self) -> bool:
        path = self.folder / "meta.json"
        if not path.is_file():
            if any(self.folder.glob("block-*.pt")):
                self.log(f"reference cache {self.folder}: blocks without meta.json; recomputing")
            return False
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            self.log(f"reference cache {path}: unreadable ({exc}); recomputing every block")
            return False
        if stored != self.meta:
            differing = sorted(k for k in set(stored) | set(self.meta)
                               if stored.get(k) != self.meta.get(k))
            self.log(f"reference cache {path}: differs from this run in {', '.join(differing)}; "
                     "recomputing every block")
            return False
        return True

    def block_path(self, index: int) -> Path | None:
        return None if self.folder is None else self.folder / f"block-{index:05d}.pt"

    def load(self, index: int, rows: int) -> torch.Tensor | None:
        """Block ``index`` when it is trusted, readable, ``[rows, slots]`` and finite; else None."""
        path = self.block_path(index)
        if not self.trusted or path is None or not path.is_file():
            return None
        try:
            values = torch.load(path, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torn or corrupt file, in whatever way torch says
            self.log(f"reference cache {path}: unreadable ({type(exc).__name__}); recomputing")
            return None
        expected = (rows, self.slots)
        if not isinstance(values, torch.Tensor) or tuple(values.shape) != expected:
            shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
            self.log(f"reference cache {path}: shape {shape}, expected {expected}; recomputing")
            return None
        if not torch.isfinite(values).all():
            self.log(f"reference cache {path}: non-finite values; recomputing")
            return None
        return values

    def save(self, index: int, values: torch.Tensor) -> None:
        path = self.block_path(index)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if not self.meta_written:  # first block of a new or distrusted entry: drop what was there
            for stale in path.parent.glob("block-*.pt"):
                stale.unlink()
            text = json.dumps(self.meta, indent=1, sort_keys=True)
            write_atomic(path.parent / "meta.json", lambda tmp: tmp.write_text(text))
            self.meta_written = True
        write_atomic(path, lambda tmp: torch.save(values.clone(), tmp))


def cached_reference(examples: list[Example], cache: ReferenceCache,
                     compute: Callable[[list[Example]], torch.Tensor], is_main: bool,
                     barrier: Callable[[], None], log: Callable[[str], None]) -> list[Example]:
    """``examples`` with ``ref`` attached, block by block: read a cached block or ``compute`` it
    (``compute(block) -> [len(block), slots]``, called on every process) and save it (main process).
    """
    out: list[Example] = []
    hits = 0
    starts = range(0, len(examples), cache.block_size)
    with progress(len(examples), "reference log-probs") as bar:
        for index, start in enumerate(starts):
            block = examples[start:start + cache.block_size]
            values = cache.load(index, len(block))
            if values is None:
                values = compute(block)
                if is_main:
                    cache.save(index, values)
                barrier()
            else:
                hits += 1
            out += [ex.with_reference(v.tolist()) for ex, v in zip(block, values)]
            bar.advance(len(block))
    if cache.folder is not None:
        log(f"reference log-probs: {hits} cached block(s) reused, folder {cache.folder}")
    return out
