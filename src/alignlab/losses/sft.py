"""Supervised fine-tuning loss: summed negative log-likelihood over target tokens.

    L_SFT = (1 / N) * sum_{t : mask_t = 1} -log p_theta(x_t | x_<t)

This module returns only the *sum* and the local token count; the training loop divides by the
*global* token count N of the whole optimiser step (all processes, all accumulation micro-batches),
so the token-mean does not depend on how a batch is split (OpenRLHF/TRL "num_items_in_batch").
Departure from a per-micro-batch mean (what ``model(labels=...)`` gives): that mean weights short
micro-batches more than long ones; the global token-mean weights every target token equally.
"""

from __future__ import annotations

import torch


def nll_sum(token_logps: torch.Tensor, loss_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of -log p over target tokens, and the number of target tokens.

    ``token_logps``: [B, T-1] log p(x_{t+1} | x_<=t) as given by ``models.logprobs.token_logprobs``;
    ``loss_mask``: the same shape (already shifted, i.e. ``loss_mask[:, 1:]`` of the encoded batch),
    1 where the token is a target. Returns ``(nll_sum, n_tokens)`` as 0-d tensors.
    """
    if token_logps.shape != loss_mask.shape:
        raise ValueError(f"nll_sum: token_logps {tuple(token_logps.shape)} and loss_mask "
                         f"{tuple(loss_mask.shape)} must have the same shape")
    mask = loss_mask.to(token_logps.dtype)
    return -(token_logps * mask).sum(), loss_mask.sum()
