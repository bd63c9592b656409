"""What a local model folder is, read without loading its weights: parameter count and head.

- :func:`parameter_count` sums the tensor shapes in the safetensors headers (tied weights are stored
  once, so they count once).
- :func:`check_classifier_head` says whether the folder can serve as a sequence classifier with
  ``num_labels`` outputs: its ``model_type`` must have a sequence-classification class in
  transformers, and a folder that already holds a trained classification head must have that many
  outputs (alignlab does not silently re-initialise a trained head of another size).
"""

from __future__ import annotations

import json
import math
from pathlib import Path


def parameter_count(folder: str | Path) -> int:
    """Parameters stored in ``folder``'s ``*.safetensors`` files (0 when there are none)."""
    from safetensors import safe_open

    total = 0
    for file in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as fh:
            for name in fh.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                total += math.prod(fh.get_slice(name).get_shape())
    return total


def read_config(folder: str | Path) -> dict:
    """``config.json`` of a Hugging Face model folder (empty when absent)."""
    path = Path(folder) / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def classifier_head_problem(config: dict, num_labels: int) -> str | None:
    """Why a model with ``config`` cannot be a ``num_labels``-output sequence classifier, or None."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    )

    model_type = config.get("model_type")
    if model_type is not None and model_type not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        return (f"model type {model_type!r} has no sequence-classification head in transformers "
                "(AutoModelForSequenceClassification cannot load it)")
    architectures = config.get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        stored = len(config.get("id2label") or {}) or config.get("num_labels")
        if stored and stored != num_labels:
            return (f"it already holds a trained classification head with {stored} output(s), "
                    f"but the task needs {num_labels}")
    return None


def check_classifier_head(folder: str | Path, num_labels: int, what: str) -> None:
    """Raise ValueError naming ``what`` when :func:`classifier_head_problem` finds a problem."""
    problem = classifier_head_problem(read_config(folder), num_labels)
    if problem:
        raise ValueError(f"{what} ({folder}) cannot serve this task: {problem}")
