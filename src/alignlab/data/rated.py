"""Rated single responses: one prompt, one response and a scalar rating (no pairs).

The data of single-trajectory offline methods such as DRO (Richemond et al. 2024, "Offline
Regularised Reinforcement Learning for Large Language Models Alignment", arXiv 2405.19107), where
each example is a (prompt x, response y, rating r) triple. Layouts read by :func:`read_rated`
(``format: rated``, also what ``format: auto`` picks):

- ``{"prompt": text or messages, "response" | "completion": text or assistant message,
  "rating" | "score" | "reward": number}``;
- ``{"messages": [...], "rating" | ...}``: the last message (an assistant turn) is the response, the
  turns before it the prompt.

A missing, non-numeric (booleans included), NaN or infinite rating, an empty (or blank) response and
a malformed prompt are RecordErrors naming file, line and field; ``on_bad_record: skip`` skips and
counts them like every other reader (:func:`alignlab.data.loading.read_items`).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

from alignlab.config import DataSettings
from alignlab.data.errors import Location
from alignlab.data.loading import LoadedData, read_items
from alignlab.data.readers import (
    check_prompt,
    completion_text,
    parse_messages,
    parse_prompt,
    require,
)
from alignlab.data.records import Messages, messages_to_list

RATING_KEYS = ("rating", "score", "reward")
RESPONSE_KEYS = ("response", "completion")


@dataclass(frozen=True)
class RatedResponse:
    """One response to ``prompt`` with its scalar ``rating`` (higher is better)."""

    prompt: Messages
    response: str
    rating: float


class RatedDataSettings(DataSettings):
    """A source of rated single responses (:class:`DataSettings` with the one ``rated`` format)."""

    format: Literal["auto", "rated"] = "auto"  # type: ignore[assignment]


def rated_to_dict(record: RatedResponse) -> dict[str, Any]:
    """The canonical JSON form ``{"prompt": [messages], "response", "rating"}``."""
    return {"prompt": messages_to_list(record.prompt), "response": record.response,
            "rating": record.rating}


def _one_of(row: dict[str, Any], keys: tuple[str, ...], where: Location) -> str:
    """The one key of ``keys`` present in ``row``; none or several is an error on ``keys[0]``."""
    present = [k for k in keys if row.get(k) is not None]
    if len(present) > 1:
        raise where.error(keys[0], f"give only one of {', '.join(keys)}, got {', '.join(present)}")
    if not present:
        raise where.error(keys[0], f"required field is missing (or {' / '.join(keys[1:])})")
    return present[0]


def parse_rating(row: dict[str, Any], where: Location) -> float:
    """The row's finite numeric rating (``rating``, ``score`` or ``reward``)."""
    key = _one_of(row, RATING_KEYS, where)
    value = require(row, key, where, (int, float))
    if not math.isfinite(value):
        raise where.error(key, f"the rating must be a finite number, got {value}")
    return float(value)


def _prompt_and_response(row: dict[str, Any], where: Location) -> tuple[Messages, str, str]:
    if "prompt" not in row and "messages" in row:
        messages = parse_messages(row["messages"], where, "messages")
        if not messages or messages[-1].role != "assistant":
            raise where.error("messages", "the last message must be the rated assistant response")
        check_prompt(messages[:-1], where, "messages")
        return messages[:-1], messages[-1].content, f"messages[{len(messages) - 1}].content"
    prompt = parse_prompt(require(row, "prompt", where, (str, list)), where, "prompt")
    key = _one_of(row, RESPONSE_KEYS, where)
    return prompt, completion_text(row[key], where, key), key


def read_rated(row: dict[str, Any], where: Location, notes: Counter) -> list[RatedResponse]:
    """One :class:`RatedResponse` from a row of any layout in the module docstring."""
    prompt, response, field = _prompt_and_response(row, where)
    if not response.strip():
        raise where.error(field, "the rated response is empty")
    return [RatedResponse(prompt, response, parse_rating(row, where))]


def _detect_rated(row: dict[str, Any], source: str) -> str:
    return "rated"


def load_rated(settings: DataSettings) -> LoadedData:
    """Every rated response of ``settings``' source (``records``: list of :class:`RatedResponse`)."""
    return read_items(settings, lambda item, where, notes: [item], {"rated": read_rated},
                      _detect_rated)
