"""Scorers: one interface for everything that turns (prompt, completion) into a scalar reward.

A scorer has ``name`` and ``score(prompts, completions) -> list[float]``. Implementations:

- a reward model: :class:`alignlab.eval.winrate.RewardJudge` (batched by length, no gradients) already
  has this interface;
- :class:`FunctionScorer`: any Python function of one (prompt, completion), e.g. a rule or the gym's
  gold reward (:func:`gym_gold_scorer`);
- :class:`WeightedScorer`: a weighted sum of scorers (``r = sum_k w_k r_k``), reporting each part.

The AI-judge scorer of the RLAIF issue plugs in here with the same method.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from alignlab.data.records import Messages


class Scorer(Protocol):
    """Anything with a ``name`` and a batched ``score``."""

    name: str

    def score(self, prompts: Sequence[Messages], completions: Sequence[str]) -> list[float]:
        ...


def check_lengths(prompts: Sequence, completions: Sequence, name: str) -> None:
    if len(prompts) != len(completions):
        raise ValueError(f"scorer {name!r}: {len(prompts)} prompts but {len(completions)} completions")


@dataclass
class FunctionScorer:
    """Scores each (prompt, completion) with ``fn(prompt, completion) -> float``."""

    fn: Callable[[Messages, str], float]
    name: str = "function"

    def score(self, prompts: Sequence[Messages], completions: Sequence[str]) -> list[float]:
        check_lengths(prompts, completions, self.name)
        return [float(self.fn(p, c)) for p, c in zip(prompts, completions)]


def gym_gold_scorer(gym) -> FunctionScorer:
    """The gym's gold reward (``Gym.score(prompt, response).reward``) as a scorer: the true reward
    the over-optimisation experiments measure against (never a training signal by default)."""
    return FunctionScorer(lambda prompt, completion: gym.score(prompt, completion).reward, "gold")


@dataclass
class WeightedScorer:
    """``sum_k weight_k * scorer_k``; ``last_parts`` keeps each scorer's raw scores for logging."""

    parts: list[tuple[float, Scorer]]
    name: str = "weighted"
    last_parts: dict[str, list[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.parts:
            raise ValueError("a weighted scorer needs at least one scorer")
        names = [scorer.name for _, scorer in self.parts]
        if len(set(names)) != len(names):
            raise ValueError(f"weighted scorer: scorer names must differ, got {names}")

    def score(self, prompts: Sequence[Messages], completions: Sequence[str]) -> list[float]:
        check_lengths(prompts, completions, self.name)
        total = [0.0] * len(completions)
        self.last_parts = {}
        for weight, scorer in self.parts:
            values = scorer.score(prompts, completions)
            self.last_parts[scorer.name] = values
            total = [t + weight * v for t, v in zip(total, values)]
        return total
