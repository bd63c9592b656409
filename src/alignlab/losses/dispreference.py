"""D2O: alignment from human negatives only, with self-generated responses as the positives.

Duan et al. 2024, "Negating Negatives: Alignment with Human Negative Samples via Distributional
Dispreference Optimization" (arXiv 2403.03419), section 3.2, eq. 3. One training example is a
ranked list (``ListInputs``) of one prompt: K responses sampled from the initial (SFT) model and the
human negative. The negative is the list's single lowest-scored valid response; every other valid
response is a positive. Both ways of writing such a list work: explicit scores (positives 1, the
negative 0, as the ``sample`` stage's ``d2o.jsonl`` has them) or no scores with the negative listed
last (scores then default to the listed order, best first).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from alignlab.losses.inputs import ListInputs, LossResult
from alignlab.losses.registry import LossParams, objective

Tensor = torch.Tensor


class D2OParams(LossParams):
    beta: float = Field(0.1, gt=0.0, description="weight of the mean log-ratio of the K positives")
    alpha: float = Field(0.1, ge=0.0, description="weight of the negative's log-ratio")


def negative_slots(inputs: ListInputs) -> tuple[Tensor, Tensor]:
    """``(negative, positive)`` bool masks [B, K]: the negative is the single valid slot scored
    strictly below every other valid slot; the positives are the other valid slots.

    Raises ValueError on shape mismatches, a list without a positive, or a tied lowest score.
    """
    valid = inputs.valid.to(torch.bool)
    shape = inputs.seqs.logps.shape
    if len(shape) != 2 or valid.shape != shape or inputs.scores.shape != shape:
        raise ValueError(f"d2o needs logps, scores and valid of one shape [B, K]; got "
                         f"{tuple(shape)}, {tuple(inputs.scores.shape)}, {tuple(valid.shape)}")
    scores = torch.where(valid, inputs.scores, torch.full_like(inputs.scores, torch.inf))
    negative = valid & (scores == scores.min(-1, keepdim=True).values)
    positive = valid & ~negative
    if not bool((negative.sum(-1) == 1).all()) or not bool(positive.any(-1).all()):
        raise ValueError("d2o: every list needs at least one self-generated positive and exactly "
                         "one negative scored strictly below them (listed last, or scored lowest)")
    return negative, positive


@objective("d2o", params=D2OParams, data_kind="ranked", reference="cached",
           paper="Duan et al. 2024, D2O (sec. 3.2, eq. 3)",
           summary="human negative vs the mean log-ratio of K self-generated samples; negatives only")
def d2o(inputs: ListInputs, params: D2OParams) -> LossResult:
    """Distributional Dispreference Optimisation (Duan et al. 2024, arXiv 2403.03419, sec. 3.2,
    eq. 3). With summed log-ratios ``h(y) = log pi(y|x) - log pi_ref(y|x)``, the K self-generated
    positives y_1..y_K and the human negative y_l of one list:

        L = -log sigma( (beta / K) * sum_i h(y_i) - alpha * h(y_l) )

    The paper writes two references: pi_r- in the positives' ratio and pi_r+ in the negative's; its
    experiments set both to the initial model that also generated the y_i, which is the one cached
    reference here. Conventions and departures: K is counted per list (valid positives), so lists
    with fewer samples average over what they hold; the y_i are drawn once, before training (the
    ``sample`` stage), not redrawn during it; distinct pi_r+ / pi_r- (or a reference that moves
    during training) are not supported. With K = 1 and alpha = beta this is DPO on (y_1, y_l).
    """
    negative, positive = negative_slots(inputs)
    seqs = inputs.seqs
    zero = torch.zeros_like(seqs.logps)
    ratios = torch.where(negative | positive, seqs.logps - seqs.require_reference(), zero)
    k = positive.sum(-1).to(ratios.dtype)
    pos_mean = torch.where(positive, ratios, zero).sum(-1) / k
    neg = torch.where(negative, ratios, zero).sum(-1)
    margin = params.beta * pos_mean - params.alpha * neg
    losses = -F.logsigmoid(margin)
    metrics = {"rewards/positives": (params.beta * pos_mean).detach(),
               "rewards/negative": (params.alpha * neg).detach(),
               "rewards/margin": margin.detach(),
               "rewards/accuracy": (margin > 0).to(margin.dtype).detach()}
    return losses, metrics
