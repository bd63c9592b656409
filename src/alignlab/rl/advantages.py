"""Advantage estimators for online RL from feedback (PPO with a critic, RLOO, GRPO, REINFORCE++).

Pure tensor functions, no models. Conventions shared by every function here:

* Token tensors are ``[B, T]`` over the *response* tokens only, with a float ``mask`` ``[B, T]``:
  1 on real response tokens, 0 on right padding after each row's end. Every row needs at least one
  real token, and the mask must be a prefix of ones followed by zeros (checked where it matters).
* Sequence-level scores are ``[B]``.
* k samples per prompt are laid out group-major: rows ``[g*k:(g+1)*k]`` are the k samples of prompt g.
* Outputs are 0 on padding positions.
* Statistics "over the batch" (whitening) take a ``processes`` (:mod:`alignlab.rl.processes`):
  with several processes they are over every process's rows, as if one process held them all.
"""

from __future__ import annotations

import torch

from alignlab.models.logprobs import last_token_index as last_real_index
from alignlab.rl.processes import ALONE, Processes

GRPO_SCALES = ("std", "none")


# ----------------------------------------------------------------------------------- validation

def _float_mask(x: torch.Tensor, mask: torch.Tensor, name: str = "x") -> torch.Tensor:
    if mask.shape != x.shape:
        raise ValueError(f"mask {tuple(mask.shape)} must have the shape of {name} {tuple(x.shape)}")
    return mask.to(x.dtype if x.is_floating_point() else torch.float32)


def _check_response_mask(mask: torch.Tensor) -> None:
    """A [B, T] mask of 0/1 with at least one 1 per row and only right padding (non-increasing)."""
    if mask.dim() != 2:
        raise ValueError(f"mask must be [B, T], got shape {tuple(mask.shape)}")
    if not ((mask == 0) | (mask == 1)).all():
        raise ValueError("mask must contain only 0 and 1")
    if not (mask[:, 0] == 1).all():
        raise ValueError("mask: every row needs at least one real response token (mask[:, 0] == 1)")
    if not (mask[:, 1:] <= mask[:, :-1]).all():
        raise ValueError("mask must be right-padded: ones then zeros along T (no gaps, no left padding)")


def _check_scores(scores: torch.Tensor, batch: int | None = None) -> None:
    if scores.dim() != 1:
        raise ValueError(f"scores must be [B], got shape {tuple(scores.shape)}")
    if batch is not None and scores.shape[0] != batch:
        raise ValueError(f"scores has {scores.shape[0]} rows but the token tensors have {batch}")


def _group(scores: torch.Tensor, k: int, min_k: int = 2) -> torch.Tensor:
    """[B] -> [B // k, k] (group-major layout)."""
    _check_scores(scores)
    if isinstance(k, bool) or not isinstance(k, int) or k < min_k:
        raise ValueError(f"k must be an integer >= {min_k}, got {k!r}")
    if scores.shape[0] % k != 0:
        raise ValueError(f"batch size {scores.shape[0]} is not a multiple of k={k} (group-major layout)")
    return scores.view(-1, k)


# ----------------------------------------------------------------------------------- masked statistics

def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over entries where ``mask`` is 1: sum(x * mask) / sum(mask).

    ``dim=None`` averages over all masked entries (a scalar) and raises if the mask is all zero;
    with ``dim`` given, slices with no masked entry give 0 (their denominator is clamped to 1).
    Padding values never enter the result, even if they are inf/nan.
    """
    if dim is None:
        return global_masked_mean(x, mask)
    m = _float_mask(x, mask)
    xm = torch.where(m > 0, x, torch.zeros_like(x)) * m
    return xm.sum(dim) / m.sum(dim).clamp_min(1.0)


def global_masked_mean(x: torch.Tensor, mask: torch.Tensor,
                       processes: Processes = ALONE) -> torch.Tensor:
    """:func:`masked_mean` over every masked entry of every process (a scalar): the sums of
    ``x * mask`` and of ``mask`` are added over the processes before the division."""
    m = _float_mask(x, mask)
    xm = torch.where(m > 0, x, torch.zeros_like(x)) * m
    total, count = processes.sum(torch.stack([xm.sum(), m.sum()]))
    if count <= 0:
        raise ValueError("mask selects no entries; the masked mean is undefined")
    return total / count


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True,
               processes: Processes = ALONE) -> torch.Tensor:
    """Variance of ``x`` over all masked entries (a scalar), of every process.

    ``unbiased=True`` applies Bessel's correction n / (n - 1) with n = number of masked entries (as TRL's
    ``masked_var``), and needs n >= 2; ``unbiased=False`` is the population variance (n >= 1).
    """
    m = _float_mask(x, mask)
    n = processes.sum(m.sum())
    mean = global_masked_mean(x, m, processes)
    var = global_masked_mean((x - mean).square(), m, processes)
    if unbiased:
        if n < 2:
            raise ValueError(f"unbiased masked_var needs at least 2 masked entries, mask has {int(n)}")
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  unbiased: bool = True, processes: Processes = ALONE) -> torch.Tensor:
    """Whiten ``x`` with the mean and variance of its masked entries (TRL / OpenRLHF style):

        y = (x - mean) / sqrt(var + 1e-8),   or   y + mean   when ``shift_mean=False``

    (``shift_mean=False`` rescales but keeps the original mean, as TRL does for PPO advantages that
    are only rescaled). The statistics come from masked entries only; padding positions of the output
    are set to 0 (a departure from TRL, which leaves them as computed). ``unbiased`` selects the
    variance (see ``masked_var``; TRL's default is unbiased), so the whitened masked entries have
    mean 0 and *unbiased* variance 1 by default. The statistics are over every process's entries.
    """
    m = _float_mask(x, mask)
    mean = global_masked_mean(x, m, processes)
    var = masked_var(x, m, unbiased=unbiased, processes=processes)
    y = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        y = y + mean
    return torch.where(m > 0, y, torch.zeros_like(y))


def expand_to_tokens(adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Broadcast a sequence-level advantage ``[B]`` to every real response token: ``[B, T]``,
    ``adv[b]`` where ``mask[b, t] == 1`` and 0 on padding."""
    _check_scores(adv)
    if mask.dim() != 2 or mask.shape[0] != adv.shape[0]:
        raise ValueError(f"mask must be [B, T] with B={adv.shape[0]}, got shape {tuple(mask.shape)}")
    return adv[:, None] * mask.to(adv.dtype)


# ----------------------------------------------------------------------------------- token rewards / returns

def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real response token (``[B]`` long) for a right-padded mask."""
    _check_response_mask(mask)
    return last_real_index(mask)


def place_step_rewards(step_ends: list[list[int]], values: list[list[float]], mask: torch.Tensor
                       ) -> torch.Tensor:
    """Dense process rewards ``[B, T]``: ``values[b][s]`` at response token ``step_ends[b][s]`` (the
    last token of step s; Wang et al. 2024, Math-Shepherd's step-by-step PPO rewards each step at
    its end). Rewards landing on the same token add up; an index past the row's last real token is
    moved to that token (a step cut by max_new_tokens is rewarded where the response ends)."""
    _check_response_mask(mask)
    out = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    last = last_token_index(mask).tolist()
    for b, (ends, vals) in enumerate(zip(step_ends, values)):
        if len(ends) != len(vals):
            raise ValueError(f"row {b}: {len(ends)} step ends but {len(vals)} step rewards")
        for t, v in zip(ends, vals):
            out[b, min(int(t), last[b])] += float(v)
    return out


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float,
                  clip: float | None = None, dense: torch.Tensor | None = None) -> torch.Tensor:
    """InstructGPT-style per-token reward (Ziegler et al. 2019 sec. 2.2; Ouyang et al. 2022 eq. 2):

        R[b, t] = -kl_coef * kl[b, t]                      for every real token t
        R[b, L_b - 1] += clip(scores[b], -clip, clip)       at the row's last real token

    ``kl`` is a per-token KL estimate (see ``alignlab.rl.kl.kl_estimate``); summed over a row this gives
    score - kl_coef * KL(sequence), the paper's reward. ``dense`` (``[B, T]``, e.g. process rewards
    from :func:`place_step_rewards`) is added as it is, unclipped. ``clip=None`` leaves scores unclipped (the
    paper has no clipping; score clipping is a common stabiliser, e.g. TRL/OpenRLHF reward clipping).
    Padding positions are 0. Returns ``[B, T]``.
    """
    _check_response_mask(mask)
    m = _float_mask(kl, mask, "kl")
    _check_scores(scores, kl.shape[0])
    if clip is not None:
        if not clip > 0:
            raise ValueError(f"clip must be > 0 or None, got {clip}")
        scores = scores.clamp(-clip, clip)
    rewards = torch.where(m > 0, -kl_coef * kl, torch.zeros_like(kl))
    rows = torch.arange(kl.shape[0], device=kl.device)
    rewards[rows, last_token_index(mask)] += scores.to(rewards.dtype)
    if dense is not None:
        rewards = rewards + torch.where(m > 0, dense.to(rewards.dtype), torch.zeros_like(rewards))
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016, "High-Dimensional Continuous Control
    Using Generalized Advantage Estimation", eqs. 11-16):

        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}        (computed backwards over T)
        returns = A + V                                    (the critic's regression target)

    Each response is one episode: the value after its last real token is 0 (terminal), and padding
    contributes nothing. lam=1 gives Monte-Carlo returns-to-go minus V; lam=0 the one-step TD error.
    Rewards and values are per response token (``values[b, t]`` = V of the state before token t).
    Returns ``(advantages, returns)``, both ``[B, T]`` and 0 on padding. No whitening (see
    ``masked_whiten``). Not differentiable by design (callers pass detached tensors).
    """
    if rewards.shape != values.shape:
        raise ValueError(f"rewards {tuple(rewards.shape)} and values {tuple(values.shape)} must match")
    _check_response_mask(mask)
    m = _float_mask(rewards, mask, "rewards")
    r = torch.where(m > 0, rewards, torch.zeros_like(rewards))
    v = torch.where(m > 0, values, torch.zeros_like(values))
    T = rewards.shape[1]
    advantages = torch.zeros_like(r)
    next_value = torch.zeros_like(r[:, 0])
    next_adv = torch.zeros_like(r[:, 0])
    for t in reversed(range(T)):
        delta = r[:, t] + gamma * next_value - v[:, t]
        next_adv = (delta + gamma * lam * next_adv) * m[:, t]
        advantages[:, t] = next_adv
        next_value = v[:, t]
    returns = (advantages + v) * m
    return advantages, returns


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Returns-to-go for REINFORCE: G_t = sum_{s >= t} gamma^(s - t) r_s over the row's real tokens
    (Williams 1992), computed backwards over T. Padding is 0 and contributes nothing. ``[B, T]``."""
    _check_response_mask(mask)
    m = _float_mask(rewards, mask, "rewards")
    r = torch.where(m > 0, rewards, torch.zeros_like(rewards))
    returns = torch.zeros_like(r)
    running = torch.zeros_like(r[:, 0])
    for t in reversed(range(r.shape[1])):
        running = (r[:, t] + gamma * running) * m[:, t]
        returns[:, t] = running
    return returns


# ----------------------------------------------------------------------------------- critic-free estimators

def rloo_advantages(scores: torch.Tensor, k: int) -> torch.Tensor:
    """REINFORCE Leave-One-Out advantage (Kool et al. 2019, "Buy 4 REINFORCE Samples, Get a Baseline
    for Free!"; Ahmadian et al. 2024, "Back to Basics", sec. 3.2):

        A_i = r_i - 1/(k-1) * sum_{j != i} r_j  =  k/(k-1) * (r_i - mean_group(r))

    per group of k samples of the same prompt (group-major rows, k >= 2). ``scores`` are sequence
    rewards (the paper folds the KL penalty into them: r = score - beta * KL). Returns ``[B]``; use
    ``expand_to_tokens`` to broadcast per token.
    """
    groups = _group(scores, k)
    return (k / (k - 1) * (groups - groups.mean(dim=1, keepdim=True))).reshape(-1)


def grpo_advantages(scores: torch.Tensor, k: int, scale: str = "std", eps: float = 1e-4) -> torch.Tensor:
    """GRPO outcome-supervision advantage (Shao et al. 2024, "DeepSeekMath", sec. 4.1.2):

        A_i = (r_i - mean_group(r)) / (std_group(r) + eps)       scale="std"
        A_i =  r_i - mean_group(r)                                scale="none" (Dr. GRPO, Liu et al. 2025)

    per group of k samples (group-major rows, k >= 2). std_group is the *unbiased* (Bessel-corrected,
    divide by k - 1) standard deviation, matching ``torch.std``'s default as used by TRL's GRPOTrainer;
    the paper only writes std(r). With population std the advantages would be larger by
    sqrt(k / (k - 1)). ``eps`` (added to the std, as in TRL) keeps groups with equal rewards at 0
    instead of 0/0. Returns ``[B]``; use ``expand_to_tokens`` to broadcast per token.
    """
    if scale not in GRPO_SCALES:
        raise ValueError(f"scale must be one of {GRPO_SCALES}, got {scale!r}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    groups = _group(scores, k)
    centred = groups - groups.mean(dim=1, keepdim=True)
    if scale == "std":
        centred = centred / (groups.std(dim=1, unbiased=True, keepdim=True) + eps)
    return centred.reshape(-1)


def reinforce_pp_advantages(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float,
                            gamma: float = 1.0, dense: torch.Tensor | None = None,
                            processes: Processes = ALONE) -> torch.Tensor:
    """REINFORCE++ advantage (Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning
    Large Language Models"):

        R_t = -kl_coef * kl_t  (+ score at the last real token)      (``token_rewards``)
        G_t = sum_{s >= t} gamma^(s - t) R_s                           (``discounted_returns``)
        A   = (G - mean(G)) / sqrt(var(G) + 1e-8)                      over ALL masked tokens of the batch

    The normalisation is global over the batch's real tokens (no per-prompt grouping), which is the
    method's point. Variance: the unbiased masked variance of ``masked_whiten``; OpenRLHF uses the
    population one, a relative difference of 1/(2n) in the scale for n tokens. No score clipping
    here (call ``token_rewards`` + ``discounted_returns`` + ``masked_whiten`` yourself for that).
    ``dense``: per-token rewards added before the returns (process rewards). ``processes``: the
    batch is every process's rows.
    Returns ``[B, T]``, 0 on padding.
    """
    rewards = token_rewards(scores, kl, mask, kl_coef, dense=dense)
    returns = discounted_returns(rewards, mask, gamma)
    return masked_whiten(returns, mask, processes=processes)
