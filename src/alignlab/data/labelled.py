"""Labelled texts for classification tasks, and files of class probabilities (soft labels).

A classification row is ``{"text": "...", "label": 2}`` (a plain text) or ``{"prompt": <string or
message list>, "response": "...", "label": 1}`` (an assistant reply in its conversation, rendered
with each model's own chat template). ``label`` is the class index, an integer in
``[0, num_classes)``. Bad rows raise a :class:`~alignlab.data.errors.RecordError` naming the file,
line and field, or are skipped and counted with ``on_bad_record: skip``.

A probabilities file (a weak supervisor's soft labels, a model's test predictions) holds rows
``{"index": i, "probs": [p_0, ..., p_{C-1}]}`` (written by :class:`alignlab.feedback.jobs.JsonlJob`
style appends); :func:`check_probability_rows` validates them with file:line errors.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from alignlab.config import DataSettings
from alignlab.data.errors import Location, RecordError
from alignlab.data.loading import LoadedData, read_items
from alignlab.data.readers import completion_text, parse_prompt, require
from alignlab.data.records import Messages


@dataclass(frozen=True)
class LabelledText:
    """One classification example: ``text`` alone (``prompt`` None) or an assistant reply ``text``
    to ``prompt``; ``label`` is the gold class index."""

    text: str
    label: int
    prompt: Messages | None = None


def read_labelled_row(row: dict[str, Any], where: Location, num_classes: int) -> LabelledText:
    """One :class:`LabelledText` from a raw row (module docstring), label range checked."""
    label = require(row, "label", where, int)
    if not 0 <= label < num_classes:
        raise where.error("label", f"class index {label} is outside [0, {num_classes}) "
                                   f"for a {num_classes}-class task")
    if "text" in row:
        text = require(row, "text", where, str)
        prompt = None
    else:
        if "prompt" not in row:
            raise where.error("text", "required field is missing (give 'text', or 'prompt' and "
                                      "'response')")
        prompt = parse_prompt(row["prompt"], where, "prompt")
        text = completion_text(require(row, "response", where), where, "response")
    if not text.strip():
        raise where.error("text" if prompt is None else "response", "the text is empty")
    return LabelledText(text, label, prompt)


def load_labelled(settings: DataSettings, num_classes: int) -> LoadedData:
    """Every :class:`LabelledText` of ``settings``' file (``on_bad_record``, ``offset`` and
    ``limit`` apply as for every reader)."""
    if num_classes < 2:
        raise ValueError(f"a classification task needs at least 2 classes, got {num_classes}")

    def reader(row: dict[str, Any], where: Location, notes: Counter) -> list[LabelledText]:
        return [read_labelled_row(row, where, num_classes)]

    return read_items(settings, lambda item, where, notes: [item], readers={"labelled": reader},
                      detect=lambda row, source: "labelled")


def check_probability_rows(source: str, rows: Sequence[dict[str, Any]],
                           num_classes: int) -> dict[int, list[float]]:
    """``{index: probs}`` from rows read back from a probabilities file, in file order (row k is
    line k + 1). A row without an integer ``index``, with ``probs`` not a list of ``num_classes``
    finite non-negative numbers summing to 1 (within 1e-3), or repeating an index, is a
    RecordError naming ``source``, the line and the field."""
    out: dict[int, list[float]] = {}
    for line, row in enumerate(rows, start=1):
        index = row.get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            raise RecordError(source, line, "index", "expected an integer example index")
        if index in out:
            raise RecordError(source, line, "index", f"example {index} appears twice")
        out[index] = _probabilities(source, line, row.get("probs"), num_classes)
    return out


def _probabilities(source: str, line: int, value: Any, num_classes: int) -> list[float]:
    if not isinstance(value, list) or len(value) != num_classes:
        raise RecordError(source, line, "probs", f"expected a list of {num_classes} probabilities")
    if not all(isinstance(p, (int, float)) and not isinstance(p, bool) and math.isfinite(p)
               and p >= 0 for p in value):
        raise RecordError(source, line, "probs", "probabilities must be finite and non-negative")
    if abs(math.fsum(value) - 1.0) > 1e-3:
        raise RecordError(source, line, "probs", f"probabilities sum to {math.fsum(value):.4f}, "
                                                 "not 1")
    return [float(p) for p in value]
