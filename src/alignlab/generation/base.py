"""The generation interface every backend implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from alignlab.config import GenerationSettings
from alignlab.data.records import Messages


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

    def generate(self, prompts: Sequence[Messages],
                 settings: GenerationSettings) -> list[list[Sample]]:
        """``settings.num_samples`` samples per prompt, in prompt order."""
        ...
