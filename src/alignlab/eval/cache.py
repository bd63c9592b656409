"""On-disk cache of reference samples, so separate eval stages generate them only once.

The key is a hash of everything the samples depend on: the reference model settings, the identity of
its weights (:func:`alignlab.models.fingerprint.model_identity`: every file of a local folder by size,
mtime and ctime; a hub model's commit; a hub model without a resolvable commit is not cached), the
prompts and the generation settings. The file is a JSON list (one entry per prompt) of lists of samples.
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
from alignlab.models.fingerprint import model_identity


def model_fingerprint(settings: ModelSettings) -> dict[str, Any] | None:
    """Settings plus the identity of the weights; None when they cannot be identified."""
    from alignlab.models.loading import looks_local, resolve_package_path

    path = resolve_package_path(settings.path)
    identity = model_identity(path, settings.revision, looks_local(path))
    if identity is None:
        return None
    return {"settings": settings.model_dump(mode="json"), "weights": identity}


def cache_key(model: ModelSettings, prompts: Sequence[Messages],
              settings: GenerationSettings) -> str | None:
    """A hex digest naming the samples of ``model`` on ``prompts`` under ``settings`` (None: the
    model cannot be identified, so nothing is cached)."""
    fingerprint = model_fingerprint(model)
    if fingerprint is None:
        return None
    payload = {"model": fingerprint, "settings": settings.model_dump(mode="json"),
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
