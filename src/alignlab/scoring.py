"""The scorer interface: anything that turns (prompt, completion) pairs into scalar scores.

A low layer shared by the judges (:mod:`alignlab.feedback`), the reward-model judge
(:mod:`alignlab.eval.winrate`) and the online trainer's scorers (:mod:`alignlab.rl.scorers`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
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


def import_function(spec: str) -> Callable:
    """``"package.module:callable"`` -> the callable (a clear error when either is missing)."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"reward function {spec!r}: cannot import {module_name!r}: {exc}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"reward function {spec!r}: {module_name} has no callable {attr!r}")
    return fn
