"""The generation interface every backend implements."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from alignlab.config import GenerationSettings
from alignlab.data.records import Messages


class GenerationBackendError(ValueError):
    """An unknown or unavailable generation backend."""


@dataclass(frozen=True)
class Sample:
    """One completion: its text and the token ids that decode to it.

    ``token_ids`` exclude the prompt, eos and padding, and decode (``skip_special_tokens=True``) to
    exactly ``text``.
    ``stop_reason`` is ``"eos"``, ``"stop"`` (a stop string was cut) or ``"length"``
    (``max_new_tokens`` reached); callers that score the sample may append eos when it is ``"eos"``.
    """

    text: str
    token_ids: list[int]
    stop_reason: str = "length"


class Generator(Protocol):
    """A generation backend: completions for chat prompts."""

    def generate(self, prompts: Sequence[Messages], settings: GenerationSettings,
                 seeds: Sequence[int] | None = None) -> list[list[Sample]]:
        """``settings.num_samples`` samples per prompt, in prompt order. ``seeds`` (optional, one
        per prompt): each prompt's samples depend on its own seed, not on the rest of the batch."""
        ...


def prefix_within(decode: Callable[[list[int]], str], ids: list[int], n_chars: int) -> list[int]:
    """The longest prefix of ``ids`` whose decoded text is at most ``n_chars`` long."""
    keep = 0
    for k in range(1, len(ids) + 1):
        if len(decode(ids[:k])) > n_chars:
            break
        keep = k
    return ids[:keep]


def cut_at_stop(decode: Callable[[list[int]], str], ids: list[int], reason: str,
                stops: Sequence[str], fallback_cut: int | None = None) -> Sample:
    """A Sample cut before the earliest stop string, ids trimmed to decode to exactly the text.

    ``fallback_cut`` is the character position to cut at when the backend reports a stop string
    that the decoded text does not show; without a cut the sample keeps ``reason``."""
    text = decode(ids)
    cut = min((text.find(s) for s in stops if s and s in text), default=-1)
    if cut < 0 and fallback_cut is not None:
        cut = fallback_cut
    if cut < 0:
        return Sample(text, ids, reason)
    ids = prefix_within(decode, ids, cut)
    return Sample(decode(ids), ids, "stop")
