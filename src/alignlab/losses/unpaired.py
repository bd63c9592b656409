"""Unpaired (binary-feedback) objectives: each completion is marked desirable or undesirable.

Every loss here reads ``BinaryInputs``: completions [B] with a boolean ``desirable`` flag. Metrics that
only make sense for one class (e.g. the NLL of desirable items) are 0 on the other class, so the
logged value is the per-example sum divided by the global example count; the ``desirable`` metric
(1.0 / 0.0) is logged alongside so the class fraction can be recovered.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from alignlab.losses.inputs import BinaryInputs, LossResult, SeqStats
from alignlab.losses.registry import LossParams, objective

Tensor = torch.Tensor


def _flags(inputs: BinaryInputs) -> Tensor:
    """The ``desirable`` flags as a bool tensor of the batch's shape; raises on a shape mismatch."""
    flags = inputs.desirable.to(torch.bool)
    if flags.shape != inputs.seqs.logps.shape:
        raise ValueError(f"desirable shape {tuple(flags.shape)} != batch shape "
                         f"{tuple(inputs.seqs.logps.shape)}")
    return flags


# --------------------------------------------------------------------------------------------- KTO

class KTOParams(LossParams):
    beta: float = Field(0.1, gt=0.0, description="sharpness of the value function (KL strength)")
    desirable_weight: float = Field(1.0, ge=0.0, description="lambda_D, weight of desirable items")
    undesirable_weight: float = Field(1.0, ge=0.0,
                                      description="lambda_U, weight of undesirable items")


def kto_reference_point(kl_seqs: SeqStats | None) -> Tensor:
    """KTO's reference point z0: ``max(0, mean(kl_seqs.logps - kl_seqs.ref_logps))``, detached (scalar).

    ``kl_seqs`` are mismatched (prompt, completion) pairs, so the mean log-ratio is a (biased,
    one-sample-per-prompt) estimate of KL(pi || pi_ref). Raises ValueError when it is missing.
    """
    if kl_seqs is None:
        raise ValueError("kto needs the mismatched-pair KL estimate (inputs.kl_seqs is None); the "
                         "trainer must provide kl_seqs for losses with needs=('kl_pairs',)")
    return kl_seqs.log_ratio.detach().mean().clamp(min=0.0)


@objective("kto", params=KTOParams, data_kind="binary", reference="cached", needs=("kl_pairs",),
           paper="Ethayarajh et al. 2024, KTO (eq. 8)",
           summary="prospect-theoretic value of each completion against a KL reference point")
def kto(inputs: BinaryInputs, params: KTOParams) -> LossResult:
    """Kahneman-Tversky Optimisation (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect
    Theoretic Optimization", eq. 8). With ``r = log pi(y|x) - log pi_ref(y|x)`` (summed log-probs):

        v(x, y) = lambda_D * sigma(beta * (r - z0))   if y is desirable
                = lambda_U * sigma(beta * (z0 - r))   if y is undesirable
        l(x, y) = lambda_y - v(x, y)

    so a desirable item costs ``lambda_D * (1 - sigma(beta (r - z0)))`` and the value at r = z0 is
    lambda_y / 2. The reference point ``z0 = max(0, mean_batch(log pi(y'|x) - log pi_ref(y'|x)))`` over
    mismatched pairs (``inputs.kl_seqs``) is detached, as in the paper; it raises ValueError when
    ``kl_seqs`` is None. The paper suggests ``lambda_D n_D / (lambda_U n_U)`` in [1, 4/3].

    Departure: z0 is estimated from this micro-batch on this process only (TRL all-gathers the KL
    terms across processes), so it is noisier with small per-device batches.
    """
    desirable = _flags(inputs)
    z0 = kto_reference_point(inputs.kl_seqs)
    ratio = inputs.seqs.log_ratio
    value_d = params.desirable_weight * torch.sigmoid(params.beta * (ratio - z0))
    value_u = params.undesirable_weight * torch.sigmoid(params.beta * (z0 - ratio))
    losses = torch.where(desirable, params.desirable_weight - value_d,
                         params.undesirable_weight - value_u)
    metrics = {"rewards": (params.beta * ratio).detach(), "kl": z0.expand_as(ratio).clone(),
               "desirable": desirable.to(ratio.dtype)}
    return losses, metrics


# --------------------------------------------------------------------------------------------- NPO

class NPOParams(LossParams):
    beta: float = Field(0.1, gt=0.0, description="inverse temperature; beta -> 0 gives gradient ascent")
    retain_weight: float = Field(0.0, ge=0.0,
                                 description="weight of the per-token NLL on desirable (retain) items")


@objective("npo", params=NPOParams, data_kind="binary", reference="cached",
           paper="Zhang et al. 2024, NPO (eq. 3)",
           summary="bounded push-down of undesirable completions, optional retain NLL")
def npo(inputs: BinaryInputs, params: NPOParams) -> LossResult:
    """Negative Preference Optimisation (Zhang et al. 2024, "Negative Preference Optimization: From
    Catastrophic Collapse to Effective Unlearning", eq. 3). On undesirable (forget) items, with the
    summed log-ratio ``h = log pi(y|x) - log pi_ref(y|x)``:

        l = (2 / beta) * log(1 + (pi / pi_ref)^beta) = -(2 / beta) * log sigma(-beta * h)

    which equals (2/beta) log 2 at h = 0 and tends to ``(2/beta) log 2 + h`` (gradient ascent on the
    log-likelihood) as beta -> 0. Desirable (retain) items cost ``retain_weight * (-logps / lengths)``,
    the per-token NLL of the paper's NPO+RT variant; with retain_weight = 0 (default, plain NPO) they
    contribute nothing. Departure: the paper averages the retain term over its own retain batch; here
    each item carries its own term and the trainer divides by the total example count.
    """
    desirable = _flags(inputs)
    seqs = inputs.seqs
    forget = -(2.0 / params.beta) * F.logsigmoid(-params.beta * seqs.log_ratio)
    retain = params.retain_weight * (-seqs.mean_logps)
    losses = torch.where(desirable, retain, forget)
    zero = torch.zeros_like(losses)
    metrics = {"rewards": (params.beta * seqs.log_ratio).detach(),
               "forget_loss": torch.where(desirable, zero, forget).detach(),
               "retain_nll": torch.where(desirable, -seqs.mean_logps, zero).detach(),
               "desirable": desirable.to(losses.dtype)}
    return losses, metrics


# ------------------------------------------------------------------------------------------ CRINGE

class CringeParams(LossParams):
    alpha: float = Field(1.0, ge=0.0, description="weight of the contrastive term on negatives")
    k: int = Field(5, ge=2, description="positives are drawn from the model's top-k tokens")
    positive: Literal["sample", "expected"] = Field(
        "sample", description="sample one positive per token (paper) or average over the top-k")
    seed: int = Field(0, ge=0, description="seed of the generator that samples positives")


def token_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Per-row mean of ``values`` [B, T] over positions where ``mask`` is 1 (0 for an empty row)."""
    keep = mask.to(torch.bool)
    total = torch.where(keep, values, torch.zeros_like(values)).sum(-1)
    return total / keep.to(values.dtype).sum(-1).clamp(min=1.0)


def _topk_pool(seqs: SeqStats, k: int) -> tuple[Tensor, Tensor]:
    """The k highest ``(topk_logps, topk_ids)`` per position, [B, T, k]; errors name what is missing."""
    if seqs.topk_logps is None or seqs.topk_ids is None or seqs.token_logps is None \
            or seqs.token_mask is None or seqs.target_ids is None:
        raise ValueError("cringe needs token_logps, token_mask, target_ids, topk_logps and topk_ids "
                         "(needs=('token_logps', 'topk'))")
    width = seqs.topk_logps.shape[-1]
    if width < k:
        raise ValueError(f"cringe: k={k} but the batch carries only {width} top-k entries per token")
    logps, order = seqs.topk_logps.topk(k, dim=-1)
    return logps, seqs.topk_ids.gather(-1, order)


def positive_weights(topk_logps: Tensor, topk_ids: Tensor, target_ids: Tensor) -> Tensor:
    """Distribution over the top-k slots [B, T, k] from which CRINGE draws the positive token.

    Proportional to softmax over the top-k log-probs, with the negative (target) token itself
    excluded; detached. A position with no admissible slot (only possible off the completion mask,
    e.g. padding filled with -inf) gets a uniform row so sampling stays defined.
    """
    admissible = (topk_ids != target_ids.unsqueeze(-1)) & torch.isfinite(topk_logps)
    logits = torch.where(admissible, topk_logps.detach(), torch.full_like(topk_logps, -torch.inf))
    logits = torch.where(admissible.any(-1, keepdim=True), logits, torch.zeros_like(logits))
    return torch.softmax(logits, dim=-1)


@objective("cringe", params=CringeParams, data_kind="binary", reference="none",
           needs=("token_logps", "topk"),
           paper="Adolphs et al. 2022, CRINGE (eq. 1-2)",
           summary="NLL on positives; each negative token contrasted with a top-k positive")
class Cringe:
    """The binary CRINGE loss (Adolphs et al. 2022, "The CRINGE Loss: Learning what language not to
    model", eq. 1-2). Desirable items get the usual per-token NLL. On undesirable items, for every
    completion token t with log-prob ``s-``, a positive token is drawn from the model's top-k
    predictions at t (the negative token excluded), with probability proportional to softmax of
    their scores, and the two-way softmax loss is applied:

        l_t = -log(exp(s+) / (exp(s+) + exp(s-))) = -log sigma(s+ - s-)

    Logit differences equal log-prob differences (same normaliser), so top-k log-probs suffice;
    gradients flow through both s+ and s- as in the paper. Per-example loss = mean over the
    example's completion tokens of NLL (desirable) or ``alpha * l_t`` (undesirable).

    Conventions: ``positive="sample"`` (paper) draws with a CPU ``torch.Generator`` seeded by
    ``seed``, so runs are reproducible; it is stateful (the generator advances across batches),
    hence a class. ``positive="expected"`` replaces the draw by its expectation under the same
    distribution (deterministic, lower variance; a departure). k >= 2 guarantees a positive exists.
    The paper's iterative step (re-labelling the model's own generations) is the trainer's business.
    """

    def __init__(self, params: CringeParams):
        self.params = params
        self.generator = torch.Generator().manual_seed(params.seed)

    def state_dict(self) -> dict:
        """The generator's state, so a resumed run draws the same positives as an unbroken one."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    def draw(self, weights: Tensor) -> Tensor:
        """One slot index per position [B, T], drawn from ``weights`` [B, T, k] with the generator."""
        flat = weights.detach().reshape(-1, weights.shape[-1]).float().cpu()
        slots = torch.multinomial(flat, 1, generator=self.generator)
        return slots.reshape(weights.shape[:-1]).to(weights.device)

    def _contrast(self, weights: Tensor, pair_losses: Tensor) -> Tensor:
        """Per-position contrastive loss [B, T]: the drawn slot's, or the expectation over slots."""
        if self.params.positive == "expected":
            weighted = torch.where(weights > 0, weights * pair_losses, torch.zeros_like(pair_losses))
            return weighted.sum(-1)
        return pair_losses.gather(-1, self.draw(weights).unsqueeze(-1)).squeeze(-1)

    def __call__(self, inputs: BinaryInputs) -> LossResult:
        desirable = _flags(inputs)
        seqs = inputs.seqs
        logps, ids = _topk_pool(seqs, self.params.k)
        weights = positive_weights(logps, ids, seqs.target_ids)
        pair_losses = -F.logsigmoid(logps - seqs.token_logps.unsqueeze(-1))
        contrast = token_mean(self._contrast(weights, pair_losses), seqs.token_mask)
        nll = token_mean(-seqs.token_logps, seqs.token_mask)
        losses = torch.where(desirable, nll, self.params.alpha * contrast)
        zero = torch.zeros_like(losses)
        metrics = {"nll": torch.where(desirable, nll, zero).detach(),
                   "contrast": torch.where(desirable, zero, contrast).detach(),
                   "desirable": desirable.to(losses.dtype)}
        return losses, metrics
