"""Auxiliary terms that combine with a preference objective (``loss: [{name: dpo}, {name: nll, ...}]``)."""

from __future__ import annotations

from alignlab.losses.inputs import LossResult, PairInputs
from alignlab.losses.registry import LossParams, objective


class NoParams(LossParams):
    pass


@objective("nll", params=NoParams, data_kind="pair", reference="none",
           paper="Ouyang et al. 2022 (PPO-ptx-style LM term); Pang et al. 2024 (RPO: DPO + NLL)",
           summary="per-token NLL of the chosen completion, to combine with a preference loss")
def chosen_nll(inputs: PairInputs, params: NoParams) -> LossResult:
    """Length-normalised negative log-likelihood of the chosen completion, per pair:

        l = -log pi(y_c | x) / |y_c|

    Combined with DPO at weight alpha this is the "DPO + NLL" objective of Pang et al. 2024
    ("Iterative Reasoning Preference Optimization", eq. 1, which normalises by the total length of
    prompt and completion; here by the completion length only, as CPO and ORPO do). Each pair gets
    the mean of its own chosen tokens, so every pair weighs the same regardless of its length.
    """
    losses = -inputs.chosen.mean_logps
    return losses, {"nll/chosen": losses.detach(), "logps/chosen_mean": inputs.chosen.mean_logps.detach()}



