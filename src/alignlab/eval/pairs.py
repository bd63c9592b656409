"""Evaluation on preference pairs: does a scorer rank the chosen response above the rejected one?

The RewardBench-style check (Lambert et al. 2024, "RewardBench") users run before trusting a reward
model, for two kinds of scorer:

- a reward model: ``r(x, y)`` from its score head (:class:`alignlab.eval.winrate.RewardJudge`);
- a policy as an implicit reward model (Rafailov et al. 2023, DPO, eq. 5):
  ``r(x, y) = beta * (log pi(y|x) - log pi_ref(y|x))`` with a reference, or, for reference-free
  objectives, ``beta * log pi(y|x)`` summed over the completion's tokens (``average``: the per-token
  mean, SimPO's reward, Meng et al. 2024 eq. 4).

Reported (:func:`pair_metrics`), over pairs whose label is not a tie (label 0.5):

- ``accuracy``: the share ranked as the label says (label > 0.5: chosen above rejected), a tied score
  counting 1/2 (:func:`alignlab.losses.common.pairwise_accuracy`), with its standard error; ``score_ties`` counts the tied scores, ``label_ties`` the
  pairs left out;
- ``ece``: expected calibration error of P(chosen preferred) = sigma(r_c - r_r) against the label,
  on both orientations of each pair, with the reliability bins for a plot — the reward-model stage's
  own :func:`alignlab.losses.reward.calibration_error` and :func:`~alignlab.losses.reward.calibration_bins`;
- accuracy by length: by quartile of the pair's mean response length (words), and split by whether
  the chosen response is longer, shorter or equally long, which exposes a length bias.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from alignlab.eval.stats import mean_se
from alignlab.losses.common import pairwise_accuracy
from alignlab.losses.reward import calibration_bins, calibration_error


def both_orientations(probs: Sequence[float], labels: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(p, y) of every pair followed by (1 - p, 1 - y): P(A preferred over B) with A/B in random order,
    as the reward-model stage measures calibration."""
    p = torch.tensor(list(probs), dtype=torch.float64)
    y = torch.tensor(list(labels), dtype=torch.float64)
    return torch.cat([p, 1 - p]), torch.cat([y, 1 - y])


def quartile_edges(values: Sequence[float]) -> list[float]:
    """The 25th, 50th and 75th percentiles (nearest rank) of ``values``."""
    ordered = sorted(values)
    return [ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] for q in (0.25, 0.5, 0.75)]


def pair_metrics(chosen: Sequence[float], rejected: Sequence[float], labels: Sequence[float],
                 chosen_words: Sequence[int], rejected_words: Sequence[int]) -> dict:
    """Every number of the module docstring; see there."""
    keep = [i for i, y in enumerate(labels) if y != 0.5]
    margins = [chosen[i] - rejected[i] for i in keep]
    kept_labels = torch.tensor([labels[i] for i in keep], dtype=torch.float64)
    margin_t = torch.tensor(margins, dtype=torch.float64)
    right = pairwise_accuracy(margin_t, kept_labels).tolist()
    probs, oriented_labels = both_orientations(torch.sigmoid(margin_t).tolist(), kept_labels.tolist())
    mean_len = [(chosen_words[i] + rejected_words[i]) / 2 for i in keep]
    out = {"accuracy": mean_se(right).to_dict(), "pairs": len(keep),
           "label_ties": len(labels) - len(keep), "score_ties": sum(m == 0 for m in margins),
           "ece": calibration_error(probs, oriented_labels),
           "reliability": calibration_bins(probs, oriented_labels),
           "margin": mean_se(margins).to_dict()}
    if keep:
        edges = quartile_edges(mean_len)
        bucket = [sum(length > e for e in edges) for length in mean_len]
        out["accuracy_by_length_quartile"] = {
            f"q{q + 1}": mean_se([r for r, b in zip(right, bucket) if b == q]).to_dict()
            for q in range(4)}
        out["length_quartile_edges_words"] = edges
        side = ["longer" if chosen_words[i] > rejected_words[i] else
                "shorter" if chosen_words[i] < rejected_words[i] else "equal" for i in keep]
        out["accuracy_by_chosen_length"] = {
            name: mean_se([r for r, s in zip(right, side) if s == name]).to_dict()
            for name in ("longer", "shorter", "equal")}
    return out


def reliability_plot(bins: list[dict], path: Path, title: str) -> Path:
    """The reliability diagram: observed vs predicted preference per bin (marker area ∝ count)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="calibrated")
    if bins:
        total = sum(b["count"] for b in bins)
        ax.scatter([b["predicted"] for b in bins], [b["observed"] for b in bins],
                   s=[20 + 600 * b["count"] / total for b in bins], alpha=0.7, label="bins")
        ax.plot([b["predicted"] for b in bins], [b["observed"] for b in bins], linewidth=1)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted P(preferred)", ylabel="observed frequency",
           title=title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@torch.no_grad()
def implicit_rewards(policy, reference, tokenizer, prompts, completions, beta: float,
                     average: bool, max_length: int, max_prompt_length: int,
                     batch_size: int) -> list[float]:
    """``beta * (log pi - log pi_ref)`` of each completion (``reference`` None: ``beta * log pi``;
    ``average``: per-token means instead of sums), batched by length."""
    from alignlab.data.collate import pad_encoded
    from alignlab.data.tokenize import encode_completion
    from alignlab.models.reference import model_device

    encoded = [encode_completion(tokenizer, p, c, max_length, max_prompt_length)
               for p, c in zip(prompts, completions)]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    values = [0.0] * len(encoded)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        batch = pad_encoded([encoded[i] for i in chunk], tokenizer.pad_token_id)
        scores = _logps(policy, batch, average, model_device(policy))
        if reference is not None:
            scores = scores - _logps(reference, batch, average, model_device(reference))
        for i, value in zip(chunk, (beta * scores).tolist()):
            values[i] = value
    return values


def _logps(model, batch: dict, average: bool, device) -> torch.Tensor:
    from alignlab.models.logprobs import sequence_logprobs

    moved = {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)}
    return sequence_logprobs(model, moved, average).float().cpu()
