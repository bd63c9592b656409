"""Outcome and process reward model losses, step-score aggregation and verifier metrics.

Pure functions (tensors or floats in, tensors or floats out).

- Outcome reward model (ORM; Cobbe et al. 2021, "Training Verifiers to Solve Math Word Problems",
  sec. 4): a binary classifier of the final answer's correctness, trained with cross-entropy on the
  whole solution. Cobbe et al. train the verifier's scalar head at *every* token of the solution
  (sec. 4.2, "token-level" verifier) and read it at the last token; :func:`orm_loss` takes one logit
  per scored position, so both the last-token and the every-token variants use it.
- Process reward model (PRM; Lightman et al. 2023, "Let's Verify Step by Step", sec. 2.6): a
  classifier of each step, read at the step's last token, trained with cross-entropy on the step
  labels. :func:`step_targets` turns the stored labels into training targets:

  ================  =========================  ==============================================
  target            head                       labels → target
  ================  =========================  ==============================================
  ``three_class``   3 logits (neg, neu, pos)   ternary −1/0/+1 → class 0/1/2; binary 0/1 → 0/2
  ``binary``        1 logit                    ternary: +1 → 1, −1 → 0, 0 → 0 (or 1 with
                                               ``neutral_as_positive``); soft v → 1 iff v > 0
                                               (Math-Shepherd's hard estimate)
  ``soft``          1 logit                    ternary (v + 1) / 2 (neutral → 1 with
                                               ``neutral_as_positive``); binary and soft as is
  ================  =========================  ==============================================

  A step's score is P(step is right): sigmoid of the single logit, or the softmax probability of
  the positive class (plus the neutral one with ``neutral_as_positive``; Lightman et al. count
  neutral steps as positive when scoring, sec. 2.6 and appendix E).
- Solution score from step scores (:func:`aggregate_step_scores`): ``product`` (Lightman et al.: the
  probability that every step is right, steps treated as independent), ``min`` (Wang et al. 2024,
  Math-Shepherd; the weakest step), ``last`` (the last step's score), ``mean``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

STEP_TARGETS = ("binary", "soft", "three_class")
AGGREGATIONS = ("product", "min", "last", "mean")


def num_labels_for(target: str) -> int:
    """Logits per scored position: 3 for ``three_class``, else 1."""
    if target not in STEP_TARGETS:
        raise ValueError(f"step target must be one of {STEP_TARGETS}, got {target!r}")
    return 3 if target == "three_class" else 1


def step_targets(labels: Sequence[float], label_type: str, target: str,
                 neutral_as_positive: bool = False) -> list[float]:
    """Training targets for stored step ``labels`` (module table): class indices for
    ``three_class`` (as floats), probabilities in [0, 1] otherwise."""
    num_labels_for(target)
    if target == "three_class":
        if label_type == "soft":
            raise ValueError("three_class targets need ternary or binary step labels, not soft ones")
        classes = {-1: 0.0, 0: 1.0, 1: 2.0} if label_type == "ternary" else {0: 0.0, 1: 2.0}
        return [classes[int(v)] for v in labels]
    if label_type == "ternary":
        neutral = 1.0 if neutral_as_positive else (0.0 if target == "binary" else 0.5)
        return [1.0 if v > 0 else (neutral if v == 0 else 0.0) for v in labels]
    if label_type == "soft" and target == "binary":
        return [1.0 if v > 0 else 0.0 for v in labels]
    return [float(v) for v in labels]


def step_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-position cross-entropy ``[S]``.

    ``logits [S, 1]`` (or ``[S]``) with float targets in [0, 1]: binary cross-entropy
    −[y log σ(z) + (1 − y) log σ(−z)]. ``logits [S, 3]`` with class-index targets: softmax
    cross-entropy −log softmax(z)[y]."""
    if logits.dim() == 2 and logits.shape[1] == 3:
        return F.cross_entropy(logits.float(), targets.long(), reduction="none")
    z = logits.float().reshape(-1)
    if z.shape != targets.shape:
        raise ValueError(f"{z.numel()} logits but {targets.numel()} targets")
    if bool(((targets < 0) | (targets > 1)).any()):
        raise ValueError("binary/soft step targets must lie in [0, 1]")
    return F.binary_cross_entropy_with_logits(z, targets.float(), reduction="none")


def orm_loss(logits: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """Per-position ORM loss ``[S]``: binary cross-entropy of the outcome label (1 = the final
    answer is right) at every scored position (Cobbe et al. 2021, sec. 4)."""
    return step_loss(logits, correct.float())


def step_probabilities(logits: torch.Tensor, neutral_as_positive: bool = False) -> torch.Tensor:
    """P(step is right) ``[S]`` from ``[S, 1]`` (sigmoid) or ``[S, 3]`` (softmax: positive, plus
    neutral with ``neutral_as_positive``) logits."""
    if logits.dim() == 2 and logits.shape[1] == 3:
        probs = torch.softmax(logits.float(), dim=-1)
        return probs[:, 2] + (probs[:, 1] if neutral_as_positive else 0.0)
    return torch.sigmoid(logits.float().reshape(-1))


def aggregate_step_scores(scores: Sequence[float], method: str = "product") -> float:
    """One solution score from its step scores P(step right): ``product`` (Lightman et al. 2023),
    ``min`` (Math-Shepherd), ``last`` or ``mean``. A solution with no scored step gets 0.0."""
    if method not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {method!r}")
    values = [float(s) for s in scores]
    if not values:
        return 0.0
    if method == "product":
        return math.prod(values)
    if method == "min":
        return min(values)
    if method == "last":
        return values[-1]
    return math.fsum(values) / len(values)


# ----------------------------------------------------------------------------- metrics


def binary_auroc(scores: Sequence[float], labels: Sequence[float]) -> float | None:
    """Area under the ROC curve: P(score of a random positive > score of a random negative), ties
    counting ½ (the Mann–Whitney U statistic over n_pos · n_neg). None when a class is absent."""
    pairs = sorted(zip((float(s) for s in scores), (bool(y) for y in labels)))
    n_pos = sum(1 for _, y in pairs if y)
    n_neg = len(pairs) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    wins, below, i = 0.0, 0, 0
    while i < len(pairs):
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        pos = sum(1 for _, y in pairs[i:j] if y)
        wins += pos * below + 0.5 * pos * ((j - i) - pos)
        below += (j - i) - pos
        i = j
    return wins / (n_pos * n_neg)


def predicted_first_error(scores: Sequence[float], threshold: float = 0.5) -> int | None:
    """Index of the first step whose score is below ``threshold`` (None: every step passes)."""
    return next((i for i, s in enumerate(scores) if s < threshold), None)


def first_error_metrics(step_scores: Sequence[Sequence[float]], true_first: Sequence[int | None],
                        threshold: float = 0.5) -> dict[str, float]:
    """How well step scores locate the first wrong step (Lightman et al. 2023's process labels stop
    there). ``exact``: among solutions with an error, the share whose predicted first error
    (:func:`predicted_first_error`) is exactly the true one; ``early`` / ``late`` / ``missed``: flagged
    before it, after it, or not at all; ``clean_passed``: among solutions without an error, the share
    with no flagged step. Keys are left out when no solution of that kind exists."""
    flawed = [(predicted_first_error(s, threshold), t) for s, t in zip(step_scores, true_first)
              if t is not None]
    clean = [predicted_first_error(s, threshold) for s, t in zip(step_scores, true_first)
             if t is None]
    out: dict[str, float] = {}
    if flawed:
        n = len(flawed)
        out["exact"] = sum(p == t for p, t in flawed) / n
        out["early"] = sum(p is not None and p < t for p, t in flawed) / n
        out["late"] = sum(p is not None and p > t for p, t in flawed) / n
        out["missed"] = sum(p is None for p, _ in flawed) / n
    if clean:
        out["clean_passed"] = sum(p is None for p in clean) / len(clean)
    return out
