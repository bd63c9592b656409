"""Listwise objectives: each example is a list of K responses to one prompt with label scores.

Every loss reads ``ListInputs``: ``seqs`` fields [B, K], ``scores`` [B, K] (higher is better) and
``valid`` [B, K] (False on padding slots of lists shorter than K). Conventions shared here:

- padding slots contribute nothing, whatever numbers they hold (NaN log-probs and zero lengths
  included): they are replaced before any arithmetic so no NaN reaches the loss or its gradient;
- a pair (i, j) is ordered when both are valid and ``scores[i] > scores[j]``; tied scores give no pair;
- every list needs at least one valid response (ValueError otherwise).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from alignlab.losses.inputs import ListInputs, LossResult, SeqStats
from alignlab.losses.registry import LossParams, objective

Tensor = torch.Tensor


def _valid_mask(inputs: ListInputs) -> Tensor:
    """``valid`` as bool [B, K]; raises when shapes differ or a list has no valid response."""
    valid = inputs.valid.to(torch.bool)
    shape = inputs.seqs.logps.shape
    if valid.shape != shape or inputs.scores.shape != shape or len(shape) != 2:
        raise ValueError(f"ranked inputs need logps, scores and valid of one shape [B, K]; got "
                         f"{tuple(shape)}, {tuple(inputs.scores.shape)}, {tuple(valid.shape)}")
    if not bool(valid.any(-1).all()):
        raise ValueError("every ranked list needs at least one valid response (valid is all False)")
    return valid


def masked_mean_logps(seqs: SeqStats, valid: Tensor) -> Tensor:
    """Length-normalised log-probs [B, K] with padding slots set to 0 (NaN- and gradient-safe)."""
    logps = torch.where(valid, seqs.logps, torch.zeros_like(seqs.logps))
    lengths = torch.where(valid, seqs.lengths, torch.ones_like(seqs.lengths))
    return logps / lengths


def ordered_pairs(scores: Tensor, valid: Tensor) -> Tensor:
    """``better[b, i, j]`` [B, K, K]: both valid and ``scores[b, i] > scores[b, j]`` (ties: False)."""
    both = valid.unsqueeze(-1) & valid.unsqueeze(-2)
    return both & (scores.unsqueeze(-1) > scores.unsqueeze(-2))


def pair_differences(values: Tensor) -> Tensor:
    """``d[b, i, j] = values[b, i] - values[b, j]`` [B, K, K]."""
    return values.unsqueeze(-1) - values.unsqueeze(-2)


def ranking_accuracy(model_scores: Tensor, better: Tensor) -> Tensor:
    """Per list: fraction of ordered pairs the model orders the same way (ties count 1/2), detached.

    A list without ordered pairs scores 1/2.
    """
    diff = pair_differences(model_scores.detach())
    agree = (torch.sign(diff) + 1) / 2
    pairs = better.to(diff.dtype)
    n = pairs.sum((-1, -2))
    return torch.where(n > 0, (agree * pairs).sum((-1, -2)) / n.clamp(min=1), torch.full_like(n, 0.5))


def best_nll(mean_logps: Tensor, scores: Tensor, valid: Tensor) -> Tensor:
    """Per-token NLL of the best-scored valid response [B]; tied best responses are averaged."""
    masked = torch.where(valid, scores, torch.full_like(scores, -torch.inf))
    best = valid & (masked == masked.max(-1, keepdim=True).values)
    weights = best.to(mean_logps.dtype)
    return -(mean_logps * weights).sum(-1) / weights.sum(-1)


def _masked_sum(values: Tensor, mask: Tensor) -> Tensor:
    """Sum of ``values`` [B, K, K] over the last two axes where ``mask``; NaN-safe."""
    return torch.where(mask, values, torch.zeros_like(values)).sum((-1, -2))


# -------------------------------------------------------------------------------------------- RRHF

class RRHFParams(LossParams):
    sft_weight: float = Field(1.0, ge=0.0, description="lambda, weight of the best response's NLL")


@objective("rrhf", params=RRHFParams, data_kind="ranked", reference="none",
           paper="Yuan et al. 2023, RRHF (eq. 2-4)",
           summary="hinge ranking loss on length-normalised log-probs plus NLL of the best")
def rrhf(inputs: ListInputs, params: RRHFParams) -> LossResult:
    """RRHF (Yuan et al. 2023, "RRHF: Rank Responses to Align Language Models with Human Feedback
    without tears", eq. 2-4). With ``p_i = logps_i / lengths_i`` (length-normalised log-prob):

        L_rank = sum_{s_i < s_j} max(0, p_i - p_j)
        L_ft   = -p_best            (best = highest score)
        L      = L_rank + sft_weight * L_ft

    Conventions: the rank loss is summed over ordered pairs (not averaged), tied scores give no pair,
    tied best responses share L_ft equally. Departure: the paper's eq. 3 writes L_ft as the token
    sum of the best response's NLL; here it is the per-token mean, which keeps it on the scale of
    ``p`` whatever the response length.
    """
    valid = _valid_mask(inputs)
    p = masked_mean_logps(inputs.seqs, valid)
    better = ordered_pairs(inputs.scores, valid)
    # better[b, i, j] (i above j): the hinge is max(0, p_j - p_i) = relu(-(p_i - p_j))
    rank = _masked_sum(F.relu(-pair_differences(p)), better)
    sft = best_nll(p, inputs.scores, valid)
    losses = rank + params.sft_weight * sft
    metrics = {"rank_loss": rank.detach(), "sft_nll": sft.detach(),
               "accuracy": ranking_accuracy(p, better)}
    return losses, metrics


# --------------------------------------------------------------------------------------------- PRO

class PROParams(LossParams):
    sft_weight: float = Field(1.0, ge=0.0, description="beta, weight of the best response's NLL")
    temperature: float = Field(1.0, gt=0.0, description="divides the length-normalised log-probs")
    score_temperature: bool = Field(
        False, description="the paper's dynamic temperature from label-score differences")


def _pro_logits(p: Tensor, scores: Tensor, valid: Tensor, params: PROParams) -> tuple[Tensor, Tensor]:
    """``(logits[b, k, i], include[b, k, i])``: the terms of the k-th Plackett-Luce step.

    Step k compares item k with itself and every valid item scored strictly below it. Plain:
    ``logits = p_i / T``. With ``score_temperature``: for i below k the logit is
    ``p_i / T * (s_k - s_i)`` and the self term is ``p_k / T * max_{i below k}(s_k - s_i)``.
    """
    z = p / params.temperature
    below = ordered_pairs(scores, valid)
    eye = torch.eye(p.shape[-1], dtype=torch.bool, device=p.device)
    include = below | eye  # a padding row then holds only itself and contributes log 1 = 0
    logits = z.unsqueeze(-2).expand_as(below)
    if params.score_temperature:
        gaps = torch.where(below, pair_differences(scores), torch.zeros_like(below, dtype=p.dtype))
        widest = gaps.max(-1).values
        # rows with nothing below keep the plain self logit; they contribute 0 either way
        widest = torch.where(widest > 0, widest, torch.ones_like(widest))
        scale = torch.where(eye, widest.unsqueeze(-1), gaps)
        logits = logits * scale
    return logits, include


@objective("pro", params=PROParams, data_kind="ranked", reference="none",
           paper="Song et al. 2024, PRO (AAAI; Plackett-Luce ranking loss + SFT)",
           summary="Plackett-Luce over the score ranking of length-normalised log-probs + SFT")
def pro(inputs: ListInputs, params: PROParams) -> LossResult:
    """Preference Ranking Optimisation (Song et al. 2024, "Preference Ranking Optimization for Human
    Alignment"). With the list sorted by score, ``y^1`` best, and ``p = logps / lengths``:

        L_PRO = -sum_{k=1}^{n-1} log( exp(p_k / T) / sum_{i >= k} exp(p_i / T) )
        L     = L_PRO + sft_weight * (-p_1)

    i.e. a Plackett-Luce likelihood of the human ranking under the model's length-normalised scores.
    ``temperature`` T is a fixed divisor (T = 1 is the basic form). ``score_temperature=True`` adds
    the paper's dynamic temperature: candidate i in step k is weighted by ``s_k - s_i`` (i.e.
    ``T_k^i = 1 / (s_k - s_i)``) and the self term by the largest such gap (``T_k^k = min_i T_k^i``).

    Ties: step k's denominator holds item k and the items scored strictly below it, so tied items do
    not compete; with distinct scores this is exactly the paper's ``i >= k``. The SFT term is the
    per-token NLL of the best response (tied best responses averaged). Departure: the paper's SFT
    term is a token-level NLL; using the per-token mean matches RRHF here.
    """
    valid = _valid_mask(inputs)
    p = masked_mean_logps(inputs.seqs, valid)
    logits, include = _pro_logits(p, inputs.scores, valid, params)
    masked = torch.where(include, logits, torch.full_like(logits, -torch.inf))
    own = torch.diagonal(logits, dim1=-2, dim2=-1)
    steps = torch.logsumexp(masked, dim=-1) - own
    steps = torch.where(valid, steps, torch.zeros_like(steps))
    rank = steps.sum(-1)
    sft = best_nll(p, inputs.scores, valid)
    losses = rank + params.sft_weight * sft
    better = ordered_pairs(inputs.scores, valid)
    metrics = {"rank_loss": rank.detach(), "sft_nll": sft.detach(),
               "accuracy": ranking_accuracy(p, better)}
    return losses, metrics


# -------------------------------------------------------------------------------------------- LiPO

class LiPOParams(LossParams):
    beta: float = Field(0.1, gt=0.0, description="scale of the implicit reward beta * log-ratio")
    labels: Literal["minmax", "raw"] = Field(
        "minmax", description="minmax: rescale each list's scores to [0, 1]; raw: use them as given")


def normalise_labels(scores: Tensor, valid: Tensor, mode: str) -> Tensor:
    """Label values psi [B, K]: ``raw`` scores, or each list min-max scaled to [0, 1] over its
    valid slots (a list whose valid scores are all equal maps to 0). Padding slots become 0."""
    scores = torch.where(valid, scores, torch.zeros_like(scores))
    if mode == "raw":
        return scores
    inf = torch.full_like(scores, torch.inf)
    low = torch.where(valid, scores, inf).min(-1, keepdim=True).values
    high = torch.where(valid, scores, -inf).max(-1, keepdim=True).values
    span = high - low
    scaled = (scores - low) / torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(valid, scaled, torch.zeros_like(scaled))


def rank_positions(model_scores: Tensor, valid: Tensor) -> Tensor:
    """1-based rank of each slot in the descending order of ``model_scores`` among valid slots [B, K].

    Ties are broken by slot index (stable sort); padding slots are ranked after every valid slot.
    """
    keyed = torch.where(valid, model_scores.detach(), torch.full_like(model_scores, -torch.inf))
    order = torch.sort(keyed, dim=-1, descending=True, stable=True).indices
    positions = torch.empty_like(order)
    ranks = torch.arange(1, order.shape[-1] + 1, device=order.device).expand_as(order)
    positions.scatter_(-1, order, ranks)
    return positions.to(model_scores.dtype)


def lambda_weights(labels: Tensor, positions: Tensor) -> Tensor:
    """LambdaLoss / LiPO-lambda weights ``Delta[b, i, j] = |G_i - G_j| * |1/D(tau_i) - 1/D(tau_j)|``
    with gain ``G = 2^psi - 1`` and discount ``D(tau) = log2(1 + tau)`` [B, K, K]."""
    gains = torch.exp2(labels) - 1
    discounts = 1.0 / torch.log2(1.0 + positions)
    return pair_differences(gains).abs() * pair_differences(discounts).abs()


@objective("lipo", params=LiPOParams, data_kind="ranked", reference="cached",
           paper="Liu et al. 2024, LiPO-lambda (LambdaLoss weights)",
           summary="lambda-weighted pairwise logistic loss on implicit rewards over the list")
def lipo(inputs: ListInputs, params: LiPOParams) -> LossResult:
    """LiPO-lambda (Liu et al. 2024, "LiPO: Listwise Preference Optimization through
    Learning-to-Rank", the LambdaLoss objective). With implicit rewards on summed log-probs
    ``s_i = beta * (log pi(y_i) - log pi_ref(y_i))`` and labels psi:

        L = sum_{psi_i > psi_j} Delta_ij * log(1 + exp(-(s_i - s_j)))
        Delta_ij = |G_i - G_j| * |1 / D(tau_i) - 1 / D(tau_j)|,  G = 2^psi - 1,  D(tau) = log2(1 + tau)

    where tau_i is the 1-based rank of y_i under the model's current rewards s (ties by slot index);
    Delta is a constant weight (no gradient). With two items tau = (1, 2) in some order and the loss
    is the DPO logistic loss weighted by ``|G_1 - G_2| * (1 - 1/log2 3)``.

    Conventions: ``labels="minmax"`` (default) rescales each list's scores to [0, 1] before the gain,
    since ranked data here carries scores of arbitrary scale and 2^psi explodes for large psi (the
    paper's labels are already in [0, 1]); ``labels="raw"`` uses the scores as given. The sum over
    pairs is not normalised.
    """
    valid = _valid_mask(inputs)
    seqs = inputs.seqs
    logps = torch.where(valid, seqs.logps, torch.zeros_like(seqs.logps))
    ref = torch.where(valid, seqs.require_reference(), torch.zeros_like(seqs.logps))
    rewards = params.beta * (logps - ref)
    labels = normalise_labels(inputs.scores, valid, params.labels)
    better = ordered_pairs(inputs.scores, valid)
    delta = lambda_weights(labels, rank_positions(rewards, valid))
    pair_losses = delta * F.softplus(-pair_differences(rewards))
    losses = _masked_sum(pair_losses, better)
    metrics = {"accuracy": ranking_accuracy(rewards, better),
               "rewards/mean": (rewards * valid).sum(-1).detach() / valid.sum(-1)}
    return losses, metrics
