"""Convert a GGUF checkpoint once into a cached safetensors Hugging Face folder.

``transformers`` can read a ``.gguf`` file directly, but it de-quantises every tensor on every load
(seconds to minutes) and the loaded model cannot be saved again. alignlab converts a GGUF file once:
model and tokenizer are read with ``from_pretrained(folder, gguf_file=..., GgufConfig(dequantize=True))``
and written with ``save_pretrained`` (safetensors) to

    $ALIGNLAB_CACHE/gguf/<key>/        (ALIGNLAB_CACHE defaults to ~/.cache/alignlab)

where ``<key>`` hashes the file's absolute path, size, modification time and the requested dtype, so
editing or replacing the file triggers a new conversion. The folder is written under a temporary name
and renamed into place, so a conversion killed half way never leaves a folder that looks finished.
The weights are the de-quantised GGUF weights: a Q4 file gives a model with Q4-rounded weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

SOURCE_NOTE = "alignlab_gguf_source.json"


def cache_root() -> Path:
    """The alignlab cache folder: ``$ALIGNLAB_CACHE`` or ``~/.cache/alignlab``."""
    return Path(os.environ.get("ALIGNLAB_CACHE", "~/.cache/alignlab")).expanduser()


def gguf_cache_dir(gguf_path: Path, dtype: str) -> Path:
    """Where the converted copy of ``gguf_path`` lives (it may not exist yet)."""
    resolved = gguf_path.expanduser().resolve()
    stat = resolved.stat()
    key = f"{resolved}|{stat.st_size}|{stat.st_mtime_ns}|{dtype}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return cache_root() / "gguf" / digest


def convert_gguf_once(gguf_path: str | Path, dtype: str = "float32") -> Path:
    """Return a safetensors HF folder for ``gguf_path``, converting it the first time only."""
    gguf_path = Path(gguf_path).expanduser()
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file {str(gguf_path)!r} does not exist")
    target = gguf_cache_dir(gguf_path, dtype)
    if (target / SOURCE_NOTE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=target.parent))
    try:
        _write_converted(gguf_path, dtype, staging)
        _publish(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _write_converted(gguf_path: Path, dtype: str, out: Path) -> None:
    """De-quantise model and tokenizer from the GGUF file and save them to ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(gguf_path.parent), gguf_path.name
    torch_dtype = torch.float32 if dtype == "auto" else getattr(torch, dtype)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch_dtype,
        quantization_config=GgufConfig(gguf_file=name, dequantize=True),
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    stat = gguf_path.stat()
    note = {"gguf_file": str(gguf_path.resolve()), "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns, "dtype": dtype}
    (out / SOURCE_NOTE).write_text(json.dumps(note, indent=2))


def _publish(staging: Path, target: Path) -> None:
    """Rename the finished folder into place; if another process won the race, keep theirs."""
    try:
        os.rename(staging, target)
    except OSError:
        if not (target / SOURCE_NOTE).is_file():
            shutil.rmtree(target, ignore_errors=True)
            os.rename(staging, target)
