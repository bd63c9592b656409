"""Token-level preference objectives (TDPO) and the sequential KL they need.

TDPO needs, for each response, the sequential KL between the reference's and the policy's next-token
distributions along the response: the trainer runs the reference online (``reference="online"``),
calls :func:`sequential_kl` on the two log-softmaxes and stores the result in ``SeqStats.token_kl``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from alignlab.losses.common import default_labels, reward_metrics
from alignlab.losses.inputs import LossResult, PairInputs, SeqStats
from alignlab.losses.registry import LossParams, objective

Tensor = torch.Tensor


def sequential_kl(ref_logprobs: Tensor, policy_logprobs: Tensor, mask: Tensor) -> Tensor:
    """Sequential KL ``D_SeqKL(x, y; pi_ref || pi)`` [B] (Zeng et al. 2024, TDPO, def. 2):

        sum_t mask_t * sum_v pi_ref(v | x, y_<t) * (log pi_ref(v | x, y_<t) - log pi(v | x, y_<t))

    ``ref_logprobs`` and ``policy_logprobs`` are log-softmaxed next-token distributions [B, T, V]
    aligned with the shifted targets; ``mask`` [B, T] is 1 on completion positions. Note the
    direction: the reference is the first argument (forward KL from the reference). Vocabulary
    entries with zero reference probability contribute 0 (also where the policy gives -inf).
    Gradients flow through both inputs as given; the caller runs the reference without grad.
    """
    if ref_logprobs.shape != policy_logprobs.shape or ref_logprobs.dim() != 3:
        raise ValueError(f"sequential_kl needs two [B, T, V] log-prob tensors of one shape; got "
                         f"{tuple(ref_logprobs.shape)} and {tuple(policy_logprobs.shape)}")
    if mask.shape != ref_logprobs.shape[:2]:
        raise ValueError(f"mask shape {tuple(mask.shape)} != [B, T] {tuple(ref_logprobs.shape[:2])}")
    ref_probs = ref_logprobs.exp()
    terms = torch.where(ref_probs > 0, ref_probs * (ref_logprobs - policy_logprobs),
                        torch.zeros_like(ref_probs))
    per_token = terms.sum(-1)
    keep = mask.to(torch.bool)
    return torch.where(keep, per_token, torch.zeros_like(per_token)).sum(-1)


class TDPOParams(LossParams):
    beta: float = Field(0.1, gt=0.0, description="inverse strength of the KL penalty (as in DPO)")
    alpha: float | None = Field(
        None, ge=0.0,
        description="weight of the sequential-KL term; None: 0.5 for tdpo2, 1.0 for tdpo1 (paper)")
    variant: Literal["tdpo1", "tdpo2"] = Field(
        "tdpo2", description="tdpo2 stops the gradient through the preferred response's KL")

    @property
    def kl_weight(self) -> float:
        """alpha, with the paper's value for the variant when unset."""
        if self.alpha is not None:
            return self.alpha
        return 0.5 if self.variant == "tdpo2" else 1.0


def _token_kl(stats: SeqStats, side: str) -> Tensor:
    if stats.token_kl is None:
        raise ValueError(f"tdpo needs the sequential KL of the {side} responses (token_kl is None); "
                         "the trainer must fill it for losses with needs=('token_kl',)")
    return stats.token_kl


def kl_gap(kl_first: Tensor, kl_second: Tensor, beta: float, variant: str) -> Tensor:
    """TDPO's delta for a pair ordered (first preferred, second dispreferred):
    ``beta * KL(second) - beta * KL(first)``, with the stop-gradient on ``KL(first)`` for tdpo2."""
    first = kl_first.detach() if variant == "tdpo2" else kl_first
    return beta * kl_second - beta * first


@objective("tdpo", params=TDPOParams, data_kind="pair", reference="online", needs=("token_kl",),
           paper="Zeng et al. 2024, TDPO (TDPO1 and TDPO2 objectives)",
           summary="DPO margin corrected by the sequential KL gap of the two responses")
def tdpo(inputs: PairInputs, params: TDPOParams) -> LossResult:
    """Token-level Direct Preference Optimisation (Zeng et al. 2024, "Token-level Direct Preference
    Optimization"). With summed log-ratios ``h_c, h_r`` and sequential KLs ``D_c, D_r`` =
    D_SeqKL(x, y; pi_ref || pi) of chosen and rejected (``inputs.*.token_kl``, see
    :func:`sequential_kl`):

        u     = beta * (h_c - h_r)
        delta = beta * D_r - sg(beta * D_c)     (TDPO2; TDPO1 has no stop-gradient sg)
        l     = -log sigma(u - alpha * delta)

    The paper's TDPO1 has no alpha (alpha = 1, the default for ``variant="tdpo1"``); TDPO2's default
    is alpha = 0.5. With alpha = 0 both reduce to DPO.

    Departure: with a soft label y = P(chosen preferred) the loss is
    ``-y log sigma(u - alpha delta) - (1-y) log sigma(-u - alpha delta')`` where delta' is delta with
    the roles swapped (rejected treated as the preferred one, its KL stop-gradiented in TDPO2);
    y = 1 is the paper's loss.
    """
    chosen_kl = _token_kl(inputs.chosen, "chosen")
    rejected_kl = _token_kl(inputs.rejected, "rejected")
    beta, alpha = params.beta, params.kl_weight
    chosen_reward = beta * inputs.chosen.log_ratio
    rejected_reward = beta * inputs.rejected.log_ratio
    u = chosen_reward - rejected_reward
    labels = default_labels(u, inputs.labels)
    forward = u - alpha * kl_gap(chosen_kl, rejected_kl, beta, params.variant)
    losses = -labels * F.logsigmoid(forward)
    if bool((labels < 1).any()):
        backward = -u - alpha * kl_gap(rejected_kl, chosen_kl, beta, params.variant)
        losses = losses - (1 - labels) * F.logsigmoid(backward)
    metrics = {**reward_metrics(chosen_reward, rejected_reward, labels),
               "kl/chosen": chosen_kl.detach(), "kl/rejected": rejected_kl.detach()}
    return losses, metrics
