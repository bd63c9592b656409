"""Pairwise preference objectives on (chosen, rejected) pairs.

Every loss here reads summed completion log-probs (``PairInputs``); all but SLiC-HF also read the
cached reference sums, and ``h = (log pi(y_c) - log pi_ref(y_c)) - (log pi(y_r) - log pi_ref(y_r))``
is the log-ratio margin. Losses are per pair, never reduced.

Soft labels. ``inputs.labels`` holds y = P(chosen preferred). Every loss in this module reads a soft
label as a mixture of the two orientations of the pair,

    L = y * l(chosen over rejected) + (1 - y) * l(rejected over chosen),

which is the paper's loss for y = 1 and the paper's loss on the swapped pair for y = 0. For DPO this is
exactly the binary cross-entropy; for cDPO it composes the label noise with the soft label; for IPO it
moves the target margin to (2y - 1) / (2 beta), the IPO population target (p - 1/2) / tau.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from alignlab.losses.common import (
    default_labels,
    mix_orientations,
    pairwise_accuracy,
    reward_metrics,
    soft_label_logistic,
)
from alignlab.losses.inputs import LossResult, PairInputs, SeqStats
from alignlab.losses.registry import LossParams, objective

Tensor = torch.Tensor


class BetaParams(LossParams):
    beta: float = Field(0.1, gt=0.0, description="inverse strength of the implicit KL penalty")


def implicit_rewards(inputs: PairInputs, beta: float):
    """``(beta * log-ratio of chosen, beta * log-ratio of rejected)``, each [B]."""
    return beta * inputs.chosen.log_ratio, beta * inputs.rejected.log_ratio


def neg_log_sigmoid(x: Tensor) -> Tensor:
    """``-log sigma(x) = log(1 + e^-x)``, computed stably."""
    return F.softplus(-x)


@objective("dpo", params=BetaParams, data_kind="pair", reference="cached",
           paper="Rafailov et al. 2023, DPO (eq. 7)",
           summary="logistic loss on the implicit-reward margin; soft labels give the BCE form")
def dpo(inputs: PairInputs, params: BetaParams) -> LossResult:
    """Direct Preference Optimisation (Rafailov et al. 2023, "Direct Preference Optimization: Your
    Language Model is Secretly a Reward Model", eq. 7):

        l = -log sigma(beta * h)

    on summed log-probs; beta is the strength of the implicit KL penalty (small beta lets the policy
    move further). Departure: with a soft label y = P(chosen preferred) the loss is the binary
    cross-entropy ``-[y log sigma(beta h) + (1-y) log sigma(-beta h)]``; y = 1 is the paper's loss.
    """
    chosen, rejected = implicit_rewards(inputs, params.beta)
    labels = default_labels(chosen, inputs.labels)
    losses = soft_label_logistic(chosen - rejected, labels)
    return losses, reward_metrics(chosen, rejected, labels)


# --- label noise: cDPO and robust DPO -------------------------------------------------------------

class NoisyLabelParams(LossParams):
    beta: float = Field(0.1, gt=0.0, description="inverse strength of the implicit KL penalty")
    eps: float = Field(0.1, ge=0.0, lt=0.5, description="probability that a pair's label is flipped")


@objective("cdpo", params=NoisyLabelParams, data_kind="pair", reference="cached",
           paper="Mitchell 2023, 'A note on DPO with noisy preferences' (conservative DPO)",
           summary="DPO with label smoothing eps: the expected loss under flipped labels")
def cdpo(inputs: PairInputs, params: NoisyLabelParams) -> LossResult:
    """Conservative DPO (Mitchell 2023, "A note on DPO with noisy preferences & relationship to
    IPO"): each label is assumed flipped with probability eps, and the loss is DPO's expected loss

        l = (1 - eps) * (-log sigma(beta h)) + eps * (-log sigma(-beta h))

    (label smoothing; summed log-probs). eps = 0 is DPO. With a soft label y the effective label is
    ``y (1 - eps) + (1 - y) eps`` (the noise applied to the mixture of orientations).
    """
    chosen, rejected = implicit_rewards(inputs, params.beta)
    labels = default_labels(chosen, inputs.labels)
    noisy = labels * (1 - params.eps) + (1 - labels) * params.eps
    losses = soft_label_logistic(chosen - rejected, noisy)
    return losses, reward_metrics(chosen, rejected, labels)


def robust_logistic(x: Tensor, eps: float) -> Tensor:
    """The rDPO unbiased estimator ``[(1-eps) l(x) - eps l(-x)] / (1 - 2 eps)``, l = -log sigma."""
    return ((1 - eps) * neg_log_sigmoid(x) - eps * neg_log_sigmoid(-x)) / (1 - 2 * eps)


@objective("rdpo", params=NoisyLabelParams, data_kind="pair", reference="cached",
           paper="Chowdhury et al. 2024, Provably Robust DPO (rDPO loss)",
           summary="unbiased DPO loss under labels flipped with known rate eps")
def rdpo(inputs: PairInputs, params: NoisyLabelParams) -> LossResult:
    """Robust DPO (Chowdhury, Kini & Natarajan 2024, "Provably Robust DPO: Aligning Language Models
    with Noisy Feedback"): the unbiased estimator of the clean DPO loss when labels flip with a
    known probability eps < 1/2,

        l = [(1 - eps) * (-log sigma(beta h)) - eps * (-log sigma(-beta h))] / (1 - 2 eps)

    on summed log-probs. Unlike cDPO it de-biases rather than smooths, so a single pair's loss can
    be negative (its expectation over the noise is the clean loss). eps = 0 is DPO. Soft labels:
    mixture of orientations (module docstring).
    """
    chosen, rejected = implicit_rewards(inputs, params.beta)
    labels = default_labels(chosen, inputs.labels)
    margin = chosen - rejected
    losses = mix_orientations(robust_logistic(margin, params.eps),
                              robust_logistic(-margin, params.eps), labels)
    return losses, reward_metrics(chosen, rejected, labels)


# --- IPO ------------------------------------------------------------------------------------------

class IPOParams(LossParams):
    beta: float = Field(0.1, gt=0.0, description="IPO's tau: the target log-ratio margin is 1/(2 beta)")


@objective("ipo", params=IPOParams, data_kind="pair", reference="cached",
           paper="Azar et al. 2023, IPO (eq. 17)",
           summary="squared loss pulling the log-ratio margin to 1/(2 beta); does not saturate")
def ipo(inputs: PairInputs, params: IPOParams) -> LossResult:
    """Identity Preference Optimisation (Azar et al. 2023, "A General Theoretical Paradigm to
    Understand Learning from Human Preferences", eq. 17):

        l = (h - 1 / (2 tau))^2,   tau = ``beta``

    Convention: h is on *summed* log-probs, as in the paper. TRL's ``ipo`` averages log-probs over
    tokens instead, so the same beta means a different target there. The minimum sits at h = 1/(2
    beta): small beta asks for a large margin. Soft labels: mixture of orientations, which moves the
    minimum to h = (2y - 1)/(2 beta) (h = 0 for y = 1/2), the paper's population target.
    """
    chosen, rejected = implicit_rewards(inputs, params.beta)
    labels = default_labels(chosen, inputs.labels)
    h = inputs.chosen.log_ratio - inputs.rejected.log_ratio
    target = 1.0 / (2.0 * params.beta)
    losses = mix_orientations((h - target) ** 2, (-h - target) ** 2, labels)
    return losses, reward_metrics(chosen, rejected, labels)


# --- SLiC-HF --------------------------------------------------------------------------------------

class SLiCParams(LossParams):
    delta: float = Field(1.0, gt=0.0, description="hinge margin on the sequence log-prob difference")
    lambda_reg: float = Field(0.5, ge=0.0, description="weight of the NLL regulariser on y_ref = chosen")


@objective("slic", params=SLiCParams, data_kind="pair", reference="none",
           paper="Zhao et al. 2023, SLiC-HF (eq. 1)",
           summary="rank hinge on policy sequence log-probs + lambda * NLL of the chosen completion")
def slic(inputs: PairInputs, params: SLiCParams) -> LossResult:
    """SLiC-HF (Zhao et al. 2023, "SLiC-HF: Sequence Likelihood Calibration with Human Feedback",
    eq. 1):

        l = max(0, delta - log pi(y_c|x) + log pi(y_r|x)) - lambda * log pi(y_ref|x)

    The calibration term is a rank hinge on the *policy's* summed sequence log-probs, so the loss is
    reference-free (``reference="none"``): SLiC keeps the policy near the SFT model through the
    regulariser, not through a reference log-ratio. The paper's y_ref is a regularisation target
    (an SFT target); pairwise data carries no separate one, so here y_ref = the chosen completion.
    Both terms use summed log-probs, as in the paper, so lambda_reg weighs a per-sequence NLL (combine
    with the ``nll`` objective instead for a per-token one). The GPO ``hinge`` is the
    reference-based variant (hinge on beta * h). Soft labels: mixture of orientations, so with y < 1
    the regulariser also falls partly on the rejected completion.
    """
    c, r = inputs.chosen.logps, inputs.rejected.logps
    labels = default_labels(c, inputs.labels)
    hinge = mix_orientations(F.relu(params.delta - c + r), F.relu(params.delta - r + c), labels)
    reg = mix_orientations(-c, -r, labels)
    losses = hinge + params.lambda_reg * reg
    margin = (c - r).detach()
    return losses, {"slic/hinge": hinge.detach(), "slic/nll": reg.detach(), "logps/margin": margin,
                    "rewards/accuracy": pairwise_accuracy(margin, labels)}


# --- DPO-Positive ---------------------------------------------------------------------------------

class DPOPParams(LossParams):
    beta: float = Field(0.1, gt=0.0, description="inverse strength of the implicit KL penalty")
    lam: float = Field(50.0, ge=0.0, description="weight of the penalty for pi(y_c) falling below ref")


def dpop_penalty(seq: SeqStats) -> Tensor:
    """``max(0, log pi_ref(y) - log pi(y))``: how far the policy fell below the reference on y."""
    return F.relu(-seq.log_ratio)


@objective("dpop", params=DPOPParams, data_kind="pair", reference="cached",
           paper="Pal et al. 2024, Smaug / DPO-Positive (eq. 3)",
           summary="DPO plus a penalty when the chosen completion's likelihood drops below the reference")
def dpop(inputs: PairInputs, params: DPOPParams) -> LossResult:
    """DPO-Positive (Pal et al. 2024, "Smaug: Fixing Failure Modes of Preference Optimisation with
    DPO-Positive", eq. 3):

        l = -log sigma(beta * (h - lam * max(0, log pi_ref(y_c) - log pi(y_c))))

    on summed log-probs: DPO can raise the margin while lowering log pi(y_c); the penalty is zero
    while the policy stays at or above the reference on the chosen completion (then l is DPO) and
    grows linearly once it falls below. The paper uses lam = 50. Soft labels: mixture of
    orientations, so the swapped term penalises a drop on the rejected completion.
    """
    chosen, rejected = implicit_rewards(inputs, params.beta)
    labels = default_labels(chosen, inputs.labels)

    def oriented(win: SeqStats, lose: SeqStats) -> Tensor:
        h = win.log_ratio - lose.log_ratio
        return neg_log_sigmoid(params.beta * (h - params.lam * dpop_penalty(win)))

    losses = mix_orientations(oriented(inputs.chosen, inputs.rejected),
                              oriented(inputs.rejected, inputs.chosen), labels)
    metrics = reward_metrics(chosen, rejected, labels)
    metrics["dpop/penalty"] = dpop_penalty(inputs.chosen).detach()
    return losses, metrics


# --- beta-DPO -------------------------------------------------------------------------------------

class BetaDPOParams(LossParams):
    beta: float = Field(0.1, gt=0.0, description="beta_0, the base beta that the batch beta scales")
    alpha: float = Field(0.5, ge=0.0, description="sensitivity of beta to the batch margin")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="moving-average momentum of M_0, sigma")
    keep_fraction: float = Field(0.8, gt=0.0, le=1.0, description="fraction of pairs the filter keeps")
    seed: int = Field(0, ge=0, description="seed of the filter's sampling generator")


MIN_BETA_FRACTION = 0.01
"""beta-DPO's batch beta is clamped to at least ``MIN_BETA_FRACTION * beta_0``."""


@objective("beta_dpo", params=BetaDPOParams, data_kind="pair", reference="cached",
           paper="Wu et al. 2024, beta-DPO: DPO with Dynamic beta",
           summary="DPO with a per-batch beta from the batch margin and Gaussian outlier filtering")
class BetaDPO:
    """beta-DPO (Wu et al. 2024, "beta-DPO: Direct Preference Optimization with Dynamic beta").

    Per batch, with the individual reward discrepancy ``M_i = h_i`` (log-ratio margin of pair i):

    1. running statistics: ``M_0 <- m M_0 + (1 - m) mean(M)``, ``sigma <- m sigma + (1 - m) std(M)``
       (m = ``momentum``), updated with the current batch *before* it is used;
    2. filter: sample ``k = max(1, floor(keep_fraction * B))`` pairs without replacement with
       probability proportional to ``exp(-(M_i - M_0)^2 / (2 sigma^2))``, so outlying margins are
       the likeliest to be dropped;
    3. ``beta = beta_0 * (1 + alpha * (mean of M over the kept pairs - M_0))``, detached;
    4. kept pairs get the DPO loss at that beta, scaled by ``B / k``, dropped pairs get 0, so the
       loop's mean over the batch equals the paper's mean over the kept pairs.

    Conventions and departures:

    - ``M_i = h_i`` unscaled, as in the authors' released code; if M_i is read as the reward margin
      ``beta_0 h_i`` only alpha's scale changes (alpha here = alpha there * beta_0); the filter is
      unaffected because it only sees ``(M_i - M_0) / sigma``.
    - the statistics start from the first batch's mean and std (the released code starts both at 0,
      which shrinks sigma for the first ~1/(1-m) steps); a one-pair batch leaves sigma unchanged.
    - statistics are per call on this process (one micro-batch), not gathered across processes or
      accumulated micro-batches; ``state_dict``/``load_state_dict`` carry them across a resume.
    - beta is clamped to ``>= MIN_BETA_FRACTION * beta_0`` (the released code clamps at 1e-3, the
      same for beta_0 = 0.1): a batch with a very low margin would otherwise flip the loss's sign.
    - sampling runs on CPU with a ``torch.Generator`` seeded by ``seed``, so runs repeat exactly.
    - soft labels enter the DPO loss as its binary cross-entropy; M_i stays chosen-minus-rejected.
    Metrics: ``beta_dpo/kept`` (1 kept, 0 dropped), ``beta_dpo/beta``, ``beta_dpo/margin_mean`` (M_0),
    ``beta_dpo/margin_std`` (sigma) and the rewards at beta_0.
    """

    def __init__(self, params: BetaDPOParams):
        self.params = params
        self.margin_mean: float | None = None
        self.margin_std: float | None = None
        self.generator = torch.Generator().manual_seed(params.seed)

    def update_statistics(self, margins: Tensor) -> None:
        """Fold the batch mean and std of ``margins`` into the running M_0 and sigma."""
        margins = margins.detach().double().cpu()
        batch_mean = float(margins.mean())
        batch_std = float(margins.std()) if margins.numel() > 1 else None
        if self.margin_mean is None:
            self.margin_mean, self.margin_std = batch_mean, batch_std or 0.0
            return
        m = self.params.momentum
        self.margin_mean = m * self.margin_mean + (1 - m) * batch_mean
        if batch_std is not None:
            self.margin_std = m * self.margin_std + (1 - m) * batch_std

    def filter_weights(self, margins: Tensor) -> Tensor:
        """Gaussian weights ``exp(-(M_i - M_0)^2 / (2 sigma^2))`` (float64, CPU); uniform if sigma = 0."""
        margins = margins.detach().double().cpu()
        if not self.margin_std or self.margin_std <= 0:
            return torch.ones_like(margins)
        z = (margins - self.margin_mean) / self.margin_std
        return torch.exp(-0.5 * z ** 2).clamp(min=1e-300)  # never exactly 0: sampling stays defined

    def keep_mask(self, margins: Tensor) -> Tensor:
        """Boolean [B]: the pairs kept by the filter (all of them when ``k >= B``)."""
        size = margins.numel()
        keep = max(1, math.floor(self.params.keep_fraction * size + 1e-9))
        if keep >= size:
            return torch.ones(size, dtype=torch.bool, device=margins.device)
        chosen = torch.multinomial(self.filter_weights(margins), keep, replacement=False,
                                   generator=self.generator)
        mask = torch.zeros(size, dtype=torch.bool)
        mask[chosen] = True
        return mask.to(margins.device)

    def batch_beta(self, margins: Tensor, kept: Tensor) -> float:
        """``beta_0 (1 + alpha (mean kept M - M_0))``, clamped to ``>= MIN_BETA_FRACTION beta_0``."""
        kept_mean = float(margins.detach()[kept].double().mean())
        beta = self.params.beta * (1 + self.params.alpha * (kept_mean - self.margin_mean))
        return max(beta, MIN_BETA_FRACTION * self.params.beta)

    def __call__(self, inputs: PairInputs) -> LossResult:
        margins = inputs.chosen.log_ratio - inputs.rejected.log_ratio
        labels = default_labels(margins, inputs.labels)
        self.update_statistics(margins)
        kept = self.keep_mask(margins)
        beta = self.batch_beta(margins, kept)
        scale = margins.numel() / int(kept.sum())
        losses = soft_label_logistic(beta * margins, labels) * kept.to(margins.dtype) * scale
        chosen, rejected = implicit_rewards(inputs, self.params.beta)
        metrics = reward_metrics(chosen, rejected, labels)
        full = lambda value: torch.full_like(margins, value).detach()
        metrics.update({"beta_dpo/kept": kept.to(margins.dtype), "beta_dpo/beta": full(beta),
                        "beta_dpo/margin_mean": full(self.margin_mean),
                        "beta_dpo/margin_std": full(self.margin_std)})
        return losses, metrics

    def state_dict(self) -> dict:
        """Running statistics and generator state, for checkpoints."""
        return {"margin_mean": self.margin_mean, "margin_std": self.margin_std,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.margin_mean, self.margin_std = state["margin_mean"], state["margin_std"]
        self.generator.set_state(state["generator"])


# --- length-regularised DPO -----------------------------------------------------------------------

class LengthDPOParams(LossParams):
    beta: float = Field(0.1, gt=0.0, description="inverse strength of the implicit KL penalty")
    alpha: float = Field(0.01, ge=0.0, description="length penalty per token (reward units)")


@objective("r_dpo", params=LengthDPOParams, data_kind="pair", reference="cached",
           paper="Park et al. 2024, Disentangling Length from Quality in DPO (R-DPO, eq. 9)",
           summary="DPO whose margin absorbs alpha * (length difference) so length is not learned")
def r_dpo(inputs: PairInputs, params: LengthDPOParams) -> LossResult:
    """Length-regularised DPO (Park, Rafailov, Ermon & Finn 2024, "Disentangling Length from Quality
    in Direct Preference Optimization", eq. 9):

        l = -log sigma(beta h + alpha (|y_c| - |y_r|))

    with |y| the completion's token count and h on summed log-probs. Sign: the paper regularises
    the RL objective ``max E[r - alpha |y|] - beta KL``, whose optimum gives r = beta log(pi/pi_ref) +
    alpha |y| + const, so the length term *adds* to the margin: a longer chosen completion already
    explains part of the preference, and the policy is not pushed towards length. (Writing
    ``- alpha (|y_c| - |y_r|)`` would do the opposite and reward verbosity.) alpha = 0 or equal
    lengths give DPO. Soft labels: mixture of orientations.
    """
    chosen, rejected = implicit_rewards(inputs, params.beta)
    labels = default_labels(chosen, inputs.labels)
    logit = chosen - rejected + params.alpha * (inputs.chosen.lengths - inputs.rejected.lengths)
    losses = mix_orientations(neg_log_sigmoid(logit), neg_log_sigmoid(-logit), labels)
    return losses, reward_metrics(chosen, rejected, labels)


# --- GPO ------------------------------------------------------------------------------------------

GPO_FUNCTIONS = {
    "logistic": lambda x: F.softplus(-x),                  # log(1 + e^-x): DPO
    "hinge": lambda x: F.relu(1 - x),                      # max(0, 1 - x): SLiC on beta * h
    "squared": lambda x: (x - 1) ** 2,                     # (x - 1)^2: IPO up to scale
    "exponential": lambda x: torch.exp(-x),                # e^-x
    "truncated_quadratic": lambda x: F.relu(1 - x) ** 2,   # max(0, 1 - x)^2
    "savage": lambda x: torch.sigmoid(-x) ** 2,            # 1 / (1 + e^x)^2
}


class GPOParams(LossParams):
    beta: float = Field(0.1, gt=0.0, description="scale of the log-ratio margin fed to f")
    kind: Literal["logistic", "hinge", "squared", "exponential", "truncated_quadratic",
                  "savage"] = Field("logistic", description="the convex function f (GPO Table 1)")


@objective("gpo", params=GPOParams, data_kind="pair", reference="cached",
           paper="Tang et al. 2024, Generalized Preference Optimization (Table 1)",
           summary="offline loss f(beta h) for a convex f: logistic, hinge, squared, exponential, ...")
def gpo(inputs: PairInputs, params: GPOParams) -> LossResult:
    """Generalized Preference Optimization (Tang et al. 2024, "Generalized Preference Optimization:
    A Unified Approach to Offline Alignment", Table 1): ``l = f(beta h)`` on summed log-probs with

        logistic log(1 + e^-x) | hinge max(0, 1 - x) | squared (x - 1)^2 | exponential e^-x |
        truncated_quadratic max(0, 1 - x)^2 | savage 1 / (1 + e^x)^2.

    ``logistic`` is DPO; ``squared`` with beta = 2 tau is IPO times 4 tau^2 ((2 tau h - 1)^2 =
    4 tau^2 (h - 1/(2 tau))^2); ``hinge`` is SLiC's rank hinge on the reference log-ratio. Soft
    labels: mixture of orientations, ``y f(beta h) + (1 - y) f(-beta h)``.
    """
    chosen, rejected = implicit_rewards(inputs, params.beta)
    labels = default_labels(chosen, inputs.labels)
    f = GPO_FUNCTIONS[params.kind]
    x = chosen - rejected
    losses = mix_orientations(f(x), f(-x), labels)
    return losses, reward_metrics(chosen, rejected, labels)
