"""Preference-model pretraining data (Askell et al. 2021, "A General Language Assistant as a
Laboratory for Alignment", §4 and appendix on PMP): vote-scored answers to the same question
become ranked pairs, and ranked pairs become binary GOOD/BAD discrimination pairs.

- :func:`vote_score`: an answer's score is ``round(log2(1 + upvotes))``, plus 1 when the asker
  accepted it; an answer with a negative vote count scores −1 (plus 1 if accepted). The paper states
  the −1 for negative votes alongside the log formula, which is undefined there; we read it as
  replacing the log term.
- :func:`ranked_pairs`: every pair of answers to one question with different scores, as (better,
  worse) indices; equal scores give no pair.
- :func:`binarize`: the paper's binarised PMP — each ranked pair (A better than B) becomes two
  pairs over the same text, ``GOOD:A ≻ BAD:A`` and ``BAD:B ≻ GOOD:B``, so the preference model
  learns to tell good from bad answers rather than to compare two. The label is written in front of
  the answer with ``template`` (default ``"{label}: {text}"``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from alignlab.data.records import Messages, PreferencePair


def vote_score(upvotes: int, accepted: bool = False) -> int:
    """Askell et al.'s answer score (module docstring)."""
    base = -1 if upvotes < 0 else round(math.log2(1 + upvotes))
    return base + (1 if accepted else 0)


def ranked_pairs(scores: Sequence[int]) -> list[tuple[int, int]]:
    """Every (better, worse) index pair with different scores, in index order of the first."""
    return [(i, j) if scores[i] > scores[j] else (j, i)
            for i in range(len(scores)) for j in range(i + 1, len(scores))
            if scores[i] != scores[j]]


def binarize(prompt: Messages, better: str, worse: str, good: str = "GOOD", bad: str = "BAD",
             template: str = "{label}: {text}") -> list[PreferencePair]:
    """``GOOD:better ≻ BAD:better`` and ``BAD:worse ≻ GOOD:worse`` (module docstring)."""
    def label(name: str, text: str) -> str:
        return template.format(label=name, text=text)

    return [PreferencePair(prompt, label(good, better), label(bad, better)),
            PreferencePair(prompt, label(bad, worse), label(good, worse))]
