"""Forward modules the loop wraps (and DDP wraps) instead of the bare Hugging Face model.

DDP synchronises gradients only for computation that runs inside the wrapped module's ``forward``.
The memory-lean helpers in :mod:`alignlab.models.logprobs` call the decoder body and the vocabulary
head separately, which would bypass a DDP-wrapped HF model; so each stage wraps its model in one of
these modules, whose ``forward`` is exactly the computation the loss needs. ``.model`` is the HF (or
peft) model, saved at the end with ``save_model``.
"""

from __future__ import annotations

import torch

from alignlab.models.logprobs import reward_scores, token_logprobs


class TokenLogprobModule(torch.nn.Module):
    """``forward(batch) -> [B, T-1]`` token log-probs (``models.logprobs.token_logprobs``)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> torch.Tensor:
        return token_logprobs(self.model, batch["input_ids"], batch["attention_mask"],
                              batch.get("position_ids"), target_mask=batch["loss_mask"][:, 1:])


class RewardModule(torch.nn.Module):
    """``forward(batch) -> [B]`` scalar rewards at each row's last real token."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> torch.Tensor:
        return reward_scores(self.model, batch["input_ids"], batch["attention_mask"],
                             batch.get("position_ids"))

