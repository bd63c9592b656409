"""Reference-free pairwise objectives: SimPO, CPO and ORPO.

These read only the policy's log-probs (``logps``, ``lengths``, ``mean_logps``) and never touch
``ref_logps``, so the trainer loads no reference model for them (``reference="none"``). Soft labels
``y = P(chosen preferred)`` are read as a mixture of the two orientations of the pair, exactly as in
:mod:`alignlab.losses.pairwise`: ``y * l(chosen over rejected) + (1 - y) * l(rejected over chosen)``;
the likelihood (NLL) terms follow the preferred side, so with y < 1 they fall partly on the rejected
completion.
"""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field

from alignlab.losses.common import (
    default_labels,
    log_odds,
    mix_orientations,
    pairwise_accuracy,
    reward_metrics,
)
from alignlab.losses.inputs import LossResult, PairInputs
from alignlab.losses.registry import LossParams, objective


class SimPOParams(LossParams):
    beta: float = Field(2.0, gt=0.0, description="scale of the length-normalised reward")
    gamma: float = Field(0.5, ge=0.0, description="target reward margin (reward units, not gamma/beta)")


@objective("simpo", params=SimPOParams, data_kind="pair", reference="none",
           paper="Meng et al. 2024, SimPO (eq. 6)",
           summary="logistic loss on the length-normalised log-prob margin minus a target margin")
def simpo(inputs: PairInputs, params: SimPOParams) -> LossResult:
    """SimPO (Meng, Xia & Chen 2024, "SimPO: Simple Preference Optimization with a Reference-Free
    Reward", eq. 6):

        l = -log sigma(beta/|y_c| log pi(y_c) - beta/|y_r| log pi(y_r) - gamma)

    The implicit reward is ``beta * mean_logps`` (per-token average log-prob). ``gamma`` is the
    target margin itself, in reward units as in eq. 6 (later versions of the paper tune the ratio
    gamma/beta instead: gamma = ratio * beta). Defaults beta = 2.0, gamma = 0.5. Soft labels:
    mixture of orientations, ``y l(m) + (1 - y) l(-m)`` with the same gamma on both sides.
    """
    chosen = params.beta * inputs.chosen.mean_logps
    rejected = params.beta * inputs.rejected.mean_logps
    labels = default_labels(chosen, inputs.labels)
    margin = chosen - rejected
    losses = mix_orientations(F.softplus(-(margin - params.gamma)),
                              F.softplus(-(-margin - params.gamma)), labels)
    return losses, reward_metrics(chosen, rejected, labels)


class CPOParams(LossParams):
    beta: float = Field(0.1, gt=0.0, description="scale of the sequence log-prob margin")
    nll_weight: float = Field(1.0, ge=0.0, description="weight of the NLL term on the chosen completion")


@objective("cpo", params=CPOParams, data_kind="pair", reference="none",
           paper="Xu et al. 2024, Contrastive Preference Optimization (CPO)",
           summary="DPO with a uniform reference (summed log-probs) plus per-token NLL on chosen")
def cpo(inputs: PairInputs, params: CPOParams) -> LossResult:
    """Contrastive Preference Optimization (Xu et al. 2024, "Contrastive Preference Optimization:
    Pushing the Boundaries of LLM Performance in Machine Translation"): L = L_prefer + L_NLL with

        L_prefer = -log sigma(beta log pi(y_c) - beta log pi(y_r))   (summed log-probs)
        L_NLL    = -log pi(y_c) / |y_c|                              (per-token mean)

    i.e. DPO with the reference dropped, plus behaviour cloning of the chosen completion. The
    preference term uses summed log-probs as in the paper (and TRL's default). Departure: the paper
    writes L_NLL as the sequence NLL; here it is averaged over the chosen tokens (as the authors' and
    TRL's implementations compute it), so ``nll_weight`` does not scale with length.
    """
    c, r = inputs.chosen, inputs.rejected
    chosen, rejected = params.beta * c.logps, params.beta * r.logps
    labels = default_labels(chosen, inputs.labels)
    margin = chosen - rejected
    prefer = mix_orientations(F.softplus(-margin), F.softplus(margin), labels)
    nll = mix_orientations(-c.mean_logps, -r.mean_logps, labels)
    losses = prefer + params.nll_weight * nll
    metrics = reward_metrics(chosen, rejected, labels)
    metrics.update({"cpo/prefer": prefer.detach(), "nll/chosen": (-c.mean_logps).detach()})
    return losses, metrics


class ORPOParams(LossParams):
    lam: float = Field(0.1, ge=0.0, description="weight of the odds-ratio term (the paper's lambda)")


@objective("orpo", params=ORPOParams, data_kind="pair", reference="none",
           paper="Hong et al. 2024, ORPO (eq. 6-8)",
           summary="per-token NLL on chosen + lam * logistic loss on the log odds ratio")
def orpo(inputs: PairInputs, params: ORPOParams) -> LossResult:
    """Odds Ratio Preference Optimization (Hong, Lee & Thorne 2024, "ORPO: Monolithic Preference
    Optimization without Reference Model", eqs. 6-8):

        P(y|x) = exp(mean_logps),  odds(y) = P / (1 - P)
        L = -log pi(y_c) / |y_c| + lam * (-log sigma(log odds(y_c) - log odds(y_r)))

    Both the SFT term and the odds use the per-token average log-prob, as in the paper. The log
    odds are computed stably as ``x - log(-expm1(x))`` with x clamped to at most -1e-6
    (:func:`alignlab.losses.common.log_odds`), so a completion the model is certain of gives a
    finite loss. Default lam = 0.1. Soft labels: mixture of orientations.
    """
    c, r = inputs.chosen, inputs.rejected
    odds_c, odds_r = log_odds(c.mean_logps), log_odds(r.mean_logps)
    labels = default_labels(odds_c, inputs.labels)
    ratio = odds_c - odds_r
    odds_term = mix_orientations(F.softplus(-ratio), F.softplus(ratio), labels)
    nll = mix_orientations(-c.mean_logps, -r.mean_logps, labels)
    losses = nll + params.lam * odds_term
    ratio = ratio.detach()
    return losses, {"orpo/log_odds_ratio": ratio, "orpo/odds_term": odds_term.detach(),
                    "nll/chosen": (-c.mean_logps).detach(),
                    "rewards/accuracy": pairwise_accuracy(ratio, labels)}

