"""ROUGE-L between short texts, and the maximum ROUGE-L of a text against a pool of texts.

ROUGE-L (Lin 2004, "ROUGE: A Package for Automatic Evaluation of Summaries", section 3.1) scores two
word sequences X (length m) and Y (length n) by their longest common subsequence (LCS):
``R = LCS/m``, ``P = LCS/n`` and ``F = (1 + beta^2) R P / (R + beta^2 P)``. With ``beta = 1`` (the
symmetric F1 used by Self-Instruct's de-duplication) this is ``F = 2PR/(P+R) = 2 LCS / (m + n)``.

Tokens are the lowercased maximal runs of letters and digits (punctuation and underscores split
words and are dropped). There is no stemming and no stop-word removal (Lin's package offers both as
options; the default here is neither). A text without tokens scores 0 against everything.

:class:`RougePool` answers "how close is this text to anything seen so far" quickly: the pool is
tokenised once, and since ``LCS <= min(m, n)`` a reference of length n can score at most
``2 min(m, n) / (m + n)``. References are visited from the highest such bound down, and the scan stops
as soon as the bound cannot beat the best score found (or, with ``stop_above``, as soon as a score
above that threshold is found).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_WORD = re.compile(r"[^\W_]+")


def rouge_tokens(text: str) -> list[str]:
    """The ROUGE word tokens of ``text``: lowercased runs of letters and digits."""
    return _WORD.findall(text.lower())


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence of ``a`` and ``b`` (O(len a * len b) time, O(len b)
    memory; the classic dynamic programme)."""
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return 0
    previous = [0] * (len(b) + 1)
    for item in a:
        current = [0]
        for j, other in enumerate(b, start=1):
            if item == other:
                current.append(previous[j - 1] + 1)
            else:
                current.append(max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l_tokens(candidate: Sequence[str], reference: Sequence[str]) -> float:
    """ROUGE-L F1 (Lin 2004, beta = 1) of two token sequences: ``2 LCS / (m + n)``; 0 if either is
    empty. Symmetric in its arguments."""
    if not candidate or not reference:
        return 0.0
    return 2.0 * lcs_length(candidate, reference) / (len(candidate) + len(reference))


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 of two texts (see the module docstring for tokenisation)."""
    return rouge_l_tokens(rouge_tokens(candidate), rouge_tokens(reference))


def length_bound(m: int, n: int) -> float:
    """The largest ROUGE-L F1 two sequences of lengths m and n can reach: ``2 min(m,n) / (m+n)``."""
    return 0.0 if m == 0 or n == 0 else 2.0 * min(m, n) / (m + n)


@dataclass(frozen=True)
class Match:
    """The best ROUGE-L found in a pool: its ``score`` and the pool ``index`` (-1 if none > 0)."""

    score: float
    index: int


class RougePool:
    """Texts kept as token lists, queried for the maximum ROUGE-L F1 against a new text.

    ``compared`` and ``skipped`` count the LCS computations done and avoided by the length bound.
    """

    def __init__(self, texts: Iterable[str] = ()):
        self.texts: list[str] = []
        self._tokens: list[list[str]] = []
        self.compared = 0
        self.skipped = 0
        for text in texts:
            self.add(text)

    def __len__(self) -> int:
        return len(self.texts)

    def add(self, text: str) -> None:
        """Append ``text`` to the pool (tokenised once, here)."""
        self.texts.append(text)
        self._tokens.append(rouge_tokens(text))

    def best(self, text: str, stop_above: float | None = None) -> Match:
        """The maximum ROUGE-L F1 of ``text`` against the pool, exactly, with the index of a reference
        reaching it; with ``stop_above``, the scan may stop at the first score ``> stop_above`` (the
        result is then that score, a lower bound on the maximum, but still above the threshold)."""
        query = rouge_tokens(text)
        m = len(query)
        order = sorted(range(len(self._tokens)),
                       key=lambda j: -length_bound(m, len(self._tokens[j])))
        best = Match(0.0, -1)
        for rank, j in enumerate(order):
            if length_bound(m, len(self._tokens[j])) <= best.score:
                self.skipped += len(order) - rank
                break
            self.compared += 1
            score = rouge_l_tokens(query, self._tokens[j])
            if score > best.score:
                best = Match(score, j)
                if stop_above is not None and score > stop_above:
                    self.skipped += len(order) - rank - 1
                    break
        return best
