"""The scorer interface: anything that turns (prompt, completion) pairs into scalar scores.

A low layer shared by the judges (:mod:`alignlab.feedback`), the reward-model judge
(:mod:`alignlab.eval.winrate`) and the online trainer's scorers (:mod:`alignlab.rl.scorers`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from alignlab.data.records import Messages


class Scorer(Protocol):
    """Anything with a ``name`` and a batched ``score``."""

    name: str

    def score(self, prompts: Sequence[Messages], completions: Sequence[str]) -> list[float]:
        ...


def check_lengths(prompts: Sequence, completions: Sequence, name: str) -> None:
    """A clear error when a scorer gets a different number of prompts and completions."""
    if len(prompts) != len(completions):
        raise ValueError(f"scorer {name!r}: {len(prompts)} prompts but {len(completions)} completions")
