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
    """Return a safetensors HF folder for ``gguf_path``, converting it the first time only.

    A file that is not GGUF (:func:`check_gguf_header`) or that the converter cannot read is a
    :class:`GgufError` naming the file, raised before anything is written to the cache."""
    gguf_path = Path(gguf_path).expanduser()
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file {str(gguf_path)!r} does not exist")
    check_gguf_header(gguf_path)
    target = gguf_cache_dir(gguf_path, dtype)
    if (target / SOURCE_NOTE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=target.parent))
    try:
        try:
            _write_converted(gguf_path, dtype, staging)
        except Exception as exc:  # noqa: BLE001  (the gguf reader raises many types on bad files)
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise GgufError(f"{gguf_path}: cannot convert the GGUF file ({type(exc).__name__}: "
                            f"{first})") from None
        _publish(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (1, 2, 3)
GGUF_HEADER_BYTES = 24  # magic, uint32 version, uint64 tensor count, uint64 metadata count


class GgufError(ValueError):
    """A file that is not a GGUF checkpoint alignlab can convert; the message names the file."""


def check_gguf_header(path: Path) -> None:
    """Refuse a file that is not GGUF before the converter sees it: the magic ``GGUF``, a known
    version (1-3) and a complete 24-byte header."""
    with open(path, "rb") as fh:
        head = fh.read(GGUF_HEADER_BYTES)
    if not head:
        raise GgufError(f"{path}: not a GGUF file (the file is empty)")
    if head[:4] != GGUF_MAGIC:
        raise GgufError(f"{path}: not a GGUF file (it starts with {head[:4]!r}, not b'GGUF')")
    if len(head) < GGUF_HEADER_BYTES:
        raise GgufError(f"{path}: truncated GGUF header ({len(head)} of {GGUF_HEADER_BYTES} "
                        "bytes)")
    version = int.from_bytes(head[4:8], "little")
    if version not in GGUF_VERSIONS:
        raise GgufError(f"{path}: unsupported GGUF version {version} (known: "
                        f"{', '.join(map(str, GGUF_VERSIONS))})")


def _write_converted(gguf_path: Path, dtype: str, out: Path) -> None:
    """De-quantise model and tokenizer from the GGUF file and save them to ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(gguf_path.parent), gguf_path.name
    torch_dtype = torch.float32 if dtype == "auto" else getattr(torch, dtype)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch_dtype, trust_remote_code=False,
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
