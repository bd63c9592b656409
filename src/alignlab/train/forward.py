"""Forward modules the loop wraps (and DDP wraps) instead of the bare Hugging Face model.

DDP synchronises gradients only for computation that runs inside the wrapped module's ``forward``.
The memory-lean helpers in :mod:`alignlab.models.logprobs` call the decoder body and the vocabulary
head separately, which would bypass a DDP-wrapped HF model; so each stage wraps its model in one of
these modules, whose ``forward`` is exactly the computation the loss needs. ``.model`` is the HF (or
peft) model, saved at the end with ``save_model``.
"""

from __future__ import annotations

import torch

from alignlab.models.logprobs import reward_scores, score_head, token_logprobs
from alignlab.models.shared_prefix import (
    batch_groups,
    grouped_last_hidden_states,
    grouped_token_logprobs,
)


class TokenLogprobModule(torch.nn.Module):
    """``forward(batch) -> [B, T-1]`` token log-probs (``models.logprobs.token_logprobs``).

    A batch with ``position_ids`` holds packed rows (:mod:`alignlab.data.packing`, collated by
    :func:`alignlab.data.collate.pad_encoded`). Its padding mask is then not passed to the model:
    without one, transformers (``masking_utils.find_packed_sequence_indices``) reads the document
    boundaries from the restarting positions and builds a block-diagonal causal mask (eager, sdpa,
    flex) or varlen boundaries (flash attention), so each document attends only to itself. Right
    padding needs no mask under causal attention: real tokens never look ahead, and each pad (position
    0) becomes a one-token document of its own.

    A batch with ``prefix_group`` [N] (an online rollout's prompt index per row) computes the prompt
    its rows share once per group (:mod:`alignlab.models.shared_prefix`; same values up to float
    rounding).
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> torch.Tensor:
        groups = batch_groups(batch)
        if groups is not None:
            return grouped_token_logprobs(self.model, batch, 1, groups=groups)
        position_ids = batch.get("position_ids")
        attention_mask = None if position_ids is not None else batch["attention_mask"]
        return token_logprobs(self.model, batch["input_ids"], attention_mask, position_ids,
                              target_mask=batch["loss_mask"][:, 1:])


class RewardModule(torch.nn.Module):
    """``forward(batch) -> [B]`` scalar rewards at each row's last real token.

    With ``share_slots`` = S > 1 the batch is slot-major groups of S rows that share a prompt (the
    reward stage's chosen rows, then its rejected rows: S = 2), and each group's prompt runs once
    (:func:`alignlab.models.shared_prefix.grouped_last_hidden_states`; same rewards up to float
    rounding, per-row where the model's attention takes no tree mask)."""

    def __init__(self, model: torch.nn.Module, share_slots: int = 1):
        super().__init__()
        self.model = model
        self.share_slots = share_slots

    def forward(self, batch: dict) -> torch.Tensor:
        if self.share_slots > 1:
            pooled = grouped_last_hidden_states(self.model, batch, self.share_slots)
            return score_head(self.model)(pooled)[:, 0].float()
        return reward_scores(self.model, batch["input_ids"], batch["attention_mask"],
                             batch.get("position_ids"))

