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
  counting 1/2, with its standard error; ``score_ties`` counts the tied scores, ``label_ties`` the
  pairs left out;
- ``ece``: expected calibration error of P(chosen preferred) = sigma(r_c - r_r) against the label,
  on both orientations of each pair (as the reward-model stage reports it), with the reliability
  bins for a plot (:func:`reliability_plot`);
- accuracy by length: by quartile of the pair's mean response length (words), and split by whether
  the chosen response is longer, shorter or equally long, which exposes a length bias.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from alignlab.eval.stats import mean_se

TIE = 1e-6


def correctness(margin: float, label: float) -> float:
    """1 when the margin's sign agrees with the label's side, 0 when it disagrees, 1/2 for a tie."""
    if abs(margin) <= TIE:
        return 0.5
    return 1.0 if (margin > 0) == (label > 0.5) else 0.0


def reliability_bins(probs: Sequence[float], labels: Sequence[float], bins: int = 10) -> list[dict]:
    """Equal-width bins of predicted P(preferred) on both orientations: count, mean prediction,
    mean label (the points of a reliability diagram)."""
    p = [x for x in probs] + [1.0 - x for x in probs]
    y = [x for x in labels] + [1.0 - x for x in labels]
    out = []
    for b in range(bins):
        members = [i for i, x in enumerate(p) if min(int(x * bins), bins - 1) == b]
        if members:
            out.append({"bin": b, "count": len(members),
                        "predicted": sum(p[i] for i in members) / len(members),
                        "observed": sum(y[i] for i in members) / len(members)})
    return out


def expected_calibration_error(bins: list[dict]) -> float:
    """ECE = sum_b (n_b / n) |mean prediction_b - mean label_b| over :func:`reliability_bins`."""
    total = sum(b["count"] for b in bins)
    return sum(b["count"] / total * abs(b["predicted"] - b["observed"]) for b in bins) if total else 0.0


def quartile_edges(values: Sequence[float]) -> list[float]:
    """The 25th, 50th and 75th percentiles (nearest rank) of ``values``."""
    ordered = sorted(values)
    return [ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] for q in (0.25, 0.5, 0.75)]


def pair_metrics(chosen: Sequence[float], rejected: Sequence[float], labels: Sequence[float],
                 chosen_words: Sequence[int], rejected_words: Sequence[int]) -> dict:
    """Every number of the module docstring; see there."""
    keep = [i for i, y in enumerate(labels) if y != 0.5]
    margins = [chosen[i] - rejected[i] for i in keep]
    right = [correctness(m, labels[i]) for m, i in zip(margins, keep)]
    probs = [1.0 / (1.0 + math.exp(-max(min(m, 700.0), -700.0))) for m in margins]
    bins = reliability_bins(probs, [labels[i] for i in keep])
    mean_len = [(chosen_words[i] + rejected_words[i]) / 2 for i in keep]
    out = {"accuracy": mean_se(right).to_dict(), "pairs": len(keep),
           "label_ties": len(labels) - len(keep), "score_ties": sum(r == 0.5 for r in right),
           "ece": expected_calibration_error(bins), "reliability": bins,
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
