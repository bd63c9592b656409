"""Choosing among N scored samples of one prompt: best-of-N, rejection-sampling fine-tuning sets,
best-vs-worst pairs and RSO's statistical rejection sampling. Pure functions of the scores.

- :func:`scored_indices`: the samples that have a score (the others take part in nothing below).
- :func:`best_index`: inference-time best-of-N (Nakano et al. 2021; Stiennon et al. 2020): the
  highest-scoring sample; ties go to the earliest.
- :func:`top_k_indices`: the rejection-sampling fine-tuning selection — the k best samples, at or
  above an optional score threshold (Touvron et al. 2023, Llama 2: the best of K samples per prompt;
  Dong et al. 2023, RAFT: the top fraction; Bai et al. 2022's RS models).
- :func:`best_worst_pair`: the highest- and lowest-scoring samples as (chosen, rejected); None when
  every score is equal (there is no preference to learn).
- :func:`rso_accept`: Liu et al. 2023, "Statistical Rejection Sampling Improves Preference
  Optimization", Algorithm 1: repeatedly go over the candidates not yet accepted, with r_max the best
  score among them, and accept candidate i with probability exp((r_i - r_max) / beta), until
  ``num`` are accepted or none is left. The accepted samples approximate draws from the optimal policy
  pi*(y|x) ∝ pi_sft(y|x) exp(r(x, y) / beta): beta -> 0 keeps the top-1 first, beta -> inf accepts
  every candidate in the order visited (the SFT distribution). The candidates are visited in a seeded
  random order each pass (the paper's code visits them in stored order; a random order keeps equal
  scores from favouring whichever sample came first).
- :func:`replay_subset`: which of an earlier round's pairs to mix into this round's, with
  probability decaying with the round's age (DNO, Rosset et al. 2024).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence


def scored_indices(scores: Sequence[float | None]) -> list[int]:
    """Indices of the samples that have a score: a judge may leave one unscored (None or NaN, e.g.
    a self-rewarding judge none of whose judgements parsed); such samples are never selected."""
    return [i for i, s in enumerate(scores) if s is not None and not math.isnan(s)]


def best_index(scores: Sequence[float]) -> int:
    """Index of the highest score (the earliest among ties)."""
    if not scores:
        raise ValueError("best-of-N needs at least one sample")
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def top_k_indices(scores: Sequence[float], k: int, threshold: float | None = None) -> list[int]:
    """The ``k`` best indices, best first (earlier first among ties), keeping only scores >=
    ``threshold`` when one is given (possibly fewer than ``k``, possibly none)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept = [i for i in order if threshold is None or scores[i] >= threshold]
    return kept[:k]


def best_worst_pair(scores: Sequence[float]) -> tuple[int, int] | None:
    """(best, worst) indices, or None when all scores are equal."""
    best = best_index(scores)
    worst = min(range(len(scores)), key=lambda i: (scores[i], i))
    return None if scores[best] == scores[worst] else (best, worst)


def rso_accept(scores: Sequence[float], beta: float, num: int,
               uniform: Callable[[], float] | None = None, seed: int = 0) -> list[int]:
    """Accepted indices in acceptance order (Algorithm 1 of Liu et al. 2023, module docstring).

    ``uniform`` draws U(0, 1) (default: a ``random.Random(seed)``, which also shuffles each pass);
    pass one to reproduce a hand-worked example, and the candidates are then visited in index order.
    """
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    rng = random.Random(seed)
    draw = uniform or rng.random
    remaining = list(range(len(scores)))
    accepted: list[int] = []
    while remaining and len(accepted) < num:
        r_max = max(scores[i] for i in remaining)
        visit = remaining if uniform else rng.sample(remaining, len(remaining))
        for i in visit:
            if draw() < math.exp((scores[i] - r_max) / beta):
                accepted.append(i)
                if len(accepted) == num:
                    break
        remaining = [i for i in remaining if i not in accepted]
    return accepted


def rso_pairs(scores: Sequence[float], accepted: Sequence[int],
              ranking: str = "first_round") -> tuple[list[tuple[int, int]], int]:
    """Preference pairs ``(chosen, rejected)`` from RSO-accepted samples (Liu et al. 2023, §3.3),
    labelled by score; returns ``(pairs, ties_skipped)``.

    ``first_round``: consecutive accepted samples are paired, (a1, a2), (a3, a4), ... (an odd last
    one is left out). ``tournament``: a single-elimination tournament in acceptance order — the
    first round's pairs, then the winners paired again, and so on; every match is a pair (an odd one
    out advances unplayed). A match between equal scores gives no pair (skipped, counted) and its
    first player advances.
    """
    if ranking not in ("first_round", "tournament"):
        raise ValueError(f"ranking must be first_round or tournament, got {ranking!r}")
    pairs, ties, players = [], 0, list(accepted)
    while len(players) > 1:
        winners = []
        for a, b in zip(players[0::2], players[1::2]):
            if scores[a] == scores[b]:
                ties += 1
                winners.append(a)
                continue
            win, lose = (a, b) if scores[a] > scores[b] else (b, a)
            pairs.append((win, lose))
            winners.append(win)
        if ranking == "first_round":
            break
        players = winners + ([players[-1]] if len(players) % 2 else [])
    return pairs, ties


def replay_subset(count: int, age: int, decay: float, seed: int) -> list[int]:
    """Indices of the ``count`` pairs of an earlier round, ``age`` rounds old, kept with probability
    ``decay ** age`` each (seeded): earlier iterations' pairs mixed in with decaying weight, as in
    DNO's batched on-policy algorithm (Rosset et al. 2024, §5). ``decay`` 1 keeps everything."""
    if not 0.0 < decay <= 1.0 or age < 1:
        raise ValueError(f"replay: decay must be in (0, 1] and age >= 1, got {decay}, {age}")
    rng = random.Random(f"replay-{seed}-{age}")
    rate = decay ** age
    return [i for i in range(count) if rng.random() < rate]
