"""Reference log-probs computed once per (reference model, tokenised data) and cached on disk.

The key is a SHA-256 over two fingerprints:

- the reference model: its resolved source (local folder: the name, size and modification time of
  every weight/config file; hub name: name + revision), its dtype, and whether it is the base of a
  LoRA policy (adapter disabled). Editing the weights in place changes size or mtime, so a stale
  cache is not reused;
- the data: every row's token ids and target mask, in order, so the tokenizer, chat template,
  truncation and data slice are all part of the key.

Values are stored in blocks of ``block_size`` examples under ``<root>/<key>/block-NNNNN.pt``, each
written atomically (temporary file, then rename) by the main process, so a killed reference pass
keeps every finished block and a re-run (or another run on the same model and data, e.g. another
objective in a league table) reads them instead of recomputing.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

from alignlab.config import ModelSettings
from alignlab.models.gguf import cache_root
from alignlab.models.loading import looks_local, resolve_model_source
from alignlab.train.pref_examples import Example

MODEL_FILES = (".safetensors", ".json", ".model", ".gguf")


def model_fingerprint(settings: ModelSettings, adapter_base: bool) -> dict:
    """What identifies the reference model's weights (see the module docstring)."""
    source, extra = resolve_model_source(settings)
    entry: dict = {"dtype": settings.dtype, "adapter_base": adapter_base}
    if looks_local(source):
        folder = Path(source).expanduser().resolve()
        entry["source"] = str(folder)
        entry["files"] = sorted(
            (p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()
            if p.is_file() and p.name.endswith(MODEL_FILES))
    else:
        entry["source"] = source
        entry["revision"] = extra.get("revision")
    return entry


def data_digest(examples: list[Example]) -> str:
    """SHA-256 over every row's token ids and target mask, in order."""
    digest = hashlib.sha256()
    for example in examples:
        for row in example.rows:
            digest.update(len(row.input_ids).to_bytes(4, "little"))
            digest.update(torch.tensor(row.input_ids, dtype=torch.int64).numpy().tobytes())
            digest.update(bytes(row.loss_mask))
    return digest.hexdigest()


def cache_key(model: dict, data: str) -> str:
    payload = json.dumps({"model": model, "data": data}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def resolve_cache_dir(setting: str) -> Path | None:
    """``auto`` → ``$ALIGNLAB_CACHE/reference``; ``none`` → no disk cache; else the given folder."""
    if setting == "none":
        return None
    if setting == "auto":
        return cache_root() / "reference"
    return Path(setting).expanduser()


class ReferenceCache:
    """Blocks of reference values ``[n_block, slots]`` under one key folder (or in memory only)."""

    def __init__(self, root: Path | None, key: str, block_size: int = 1024):
        self.folder = None if root is None else root / key
        self.block_size = block_size

    def block_path(self, index: int) -> Path | None:
        return None if self.folder is None else self.folder / f"block-{index:05d}.pt"

    def load(self, index: int) -> torch.Tensor | None:
        path = self.block_path(index)
        if path is None or not path.is_file():
            return None
        return torch.load(path, weights_only=True)

    def save(self, index: int, values: torch.Tensor, meta: dict) -> None:
        path = self.block_path(index)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        meta_path = path.parent / "meta.json"
        if not meta_path.exists():
            meta_path.write_text(json.dumps(meta, indent=1, default=str))
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(values.clone(), tmp)
        os.replace(tmp, path)


def cached_reference(examples: list[Example], cache: ReferenceCache, meta: dict,
                     compute: Callable[[list[Example]], torch.Tensor], is_main: bool,
                     barrier: Callable[[], None], log: Callable[[str], None]) -> list[Example]:
    """``examples`` with ``ref`` attached, block by block: read a cached block or ``compute`` it
    (``compute(block) -> [len(block), slots]``, called on every process) and save it (main process).
    """
    out: list[Example] = []
    hits = 0
    for index, start in enumerate(range(0, len(examples), cache.block_size)):
        block = examples[start:start + cache.block_size]
        values = cache.load(index)
        if values is None or values.shape[0] != len(block):
            values = compute(block)
            if is_main:
                cache.save(index, values, meta)
            barrier()
        else:
            hits += 1
        out += [ex.with_reference(v.tolist()) for ex, v in zip(block, values)]
    if cache.folder is not None:
        log(f"reference log-probs: {hits} cached block(s) reused, folder {cache.folder}")
    return out
