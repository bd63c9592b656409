"""Bradley–Terry reward-model loss and its calibration metric.

The preference model assigns a scalar reward r to each (prompt, completion); under Bradley–Terry,

    P(chosen > rejected) = sigma(r_c - r_r)

and the reward model minimises the negative log-likelihood of the labels (Ouyang et al. 2022,
"Training language models to follow instructions with human feedback", eq. 1; Bai et al. 2022,
"Training a Helpful and Harmless Assistant with RLHF", sec. 3). With a soft label y = P(chosen
preferred) in [0, 1] (annotator vote fractions, AI-feedback probabilities) the per-pair loss is the
binary cross-entropy

    l = -[ y log sigma(r_c - r_r) + (1 - y) log sigma(r_r - r_c) ]

which is the paper's loss for y = 1. Ouyang et al. average over all K-choose-2 comparisons of a
prompt in one batch element; here every pair is its own example.
"""

from __future__ import annotations

import torch

from alignlab.losses.common import default_labels, pairwise_accuracy, soft_label_logistic


def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                       labels: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-pair Bradley–Terry losses [B] and per-pair metrics.

    ``labels`` (optional, [B]) is the probability that chosen is preferred; None means 1.0.
    Metrics (each [B]): ``accuracy`` (1 when r_c > r_r agrees with the label's side, 0.5 on ties),
    ``margin`` (r_c - r_r). The caller sums or averages them.
    """
    margin = chosen_rewards - rejected_rewards
    labels = default_labels(margin, labels)
    losses = soft_label_logistic(margin, labels)
    metrics = {"accuracy": pairwise_accuracy(margin.detach(), labels),
               "margin": margin.detach()}
    return losses, metrics


def calibration_bins(probs: torch.Tensor, labels: torch.Tensor, bins: int = 10) -> list[dict]:
    """The non-empty equal-width bins of predicted P(chosen preferred) on [0, 1]: ``bin``, ``count``,
    mean prediction ``predicted`` and mean label ``observed`` (the points of a reliability diagram)."""
    probs = probs.detach().double().flatten()
    labels = labels.detach().double().flatten()
    which = torch.clamp((probs * bins).long(), max=bins - 1)
    out = []
    for b in range(bins):
        in_bin = which == b
        if bool(in_bin.any()):
            out.append({"bin": b, "count": int(in_bin.sum()), "predicted": float(probs[in_bin].mean()),
                        "observed": float(labels[in_bin].mean())})
    return out


def calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 10) -> float:
    """Expected calibration error (Naeini et al. 2015; Guo et al. 2017) of predicted preferences.

    ``probs``: predicted P(chosen preferred) = sigma(r_c - r_r); ``labels``: observed preference,
    hard (0/1) or soft (the empirical preference frequency). Predictions go into ``bins`` equal-width
    bins on [0, 1] (:func:`calibration_bins`); ECE = sum_b (n_b / n) * |mean(probs in b) - mean(labels
    in b)|. Returns 0.0 for no pairs. A well-calibrated model's 70%-confident predictions are right 70%
    of the time.
    """
    n = probs.numel()
    return sum(b["count"] / n * abs(b["predicted"] - b["observed"])
               for b in calibration_bins(probs, labels, bins)) if n else 0.0
