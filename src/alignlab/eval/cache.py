"""On-disk cache of reference samples, so separate eval stages generate them only once.

The key is a hash of everything the samples depend on: the reference model settings, the size and
modification time of each file in a local model folder (a retrained model gets a new key), the prompts
and the generation settings. The file is a JSON list (one entry per prompt) of lists of samples.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alignlab.config import GenerationSettings, ModelSettings
from alignlab.data.records import Messages, messages_to_list
from alignlab.generation.base import Sample


def model_fingerprint(settings: ModelSettings) -> dict[str, Any]:
    """Settings plus ``(name, size, mtime)`` of the files of a local model folder or file."""
    from alignlab.models.loading import looks_local

    info: dict[str, Any] = {"settings": settings.model_dump(mode="json")}
    if looks_local(settings.path):
        root = Path(settings.path).expanduser()
        files = [root] if root.is_file() else sorted(p for p in root.glob("*") if p.is_file())
        info["files"] = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return info


def cache_key(model: ModelSettings, prompts: Sequence[Messages], settings: GenerationSettings) -> str:
    """A hex digest naming the samples of ``model`` on ``prompts`` under ``settings``."""
    payload = {"model": model_fingerprint(model), "settings": settings.model_dump(mode="json"),
               "prompts": [messages_to_list(p) for p in prompts]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def load_samples(path: Path) -> list[list[Sample]] | None:
    """Samples saved by :func:`save_samples`, or None when the file is missing or unreadable."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return [[Sample(d["text"], list(d["token_ids"]), d["stop_reason"]) for d in group]
                for group in data]
    except (json.JSONDecodeError, KeyError, TypeError):
        return None


def save_samples(path: Path, samples: Sequence[Sequence[Sample]]) -> Path:
    """Write samples atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = [[{"text": s.text, "token_ids": list(s.token_ids), "stop_reason": s.stop_reason}
             for s in group] for group in samples]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)
    return path
