"""Policy and value objectives for online RL from feedback, as pure tensor functions.

Every function here takes token tensors of shape [B, T] over *response* tokens (prompt positions are
not included), with a float ``mask`` [B, T] that is 1 on real response tokens and 0 on padding:

* ``logp``      log pi_theta(y_t | x, y_<t) of the current policy, with grad;
* ``old_logp``  the same log-probs under the policy that generated the rollout (no grad);
* ``ref_logp``  the same log-probs under the frozen reference policy (no grad);
* ``advantages`` per-token advantages (a sequence-level advantage is broadcast over its tokens by
  the caller), ``values`` / ``old_values`` / ``returns`` per-token critic quantities.

Inputs that play the role of constants (``old_logp``, ``ref_logp``, ``advantages``, ``old_values``,
``returns``) are detached here, so passing ``old_logp=logp`` gives the on-policy ratio exp(0) = 1
whose gradient is grad log pi (the usual "first PPO epoch" identity).

Padding never changes a loss or a gradient: before any arithmetic every input is replaced by 0 where
``mask`` is 0, so padding may hold anything (including inf or nan) and its gradient is exactly 0.

Each loss returns ``(loss, metrics)``: a 0-d loss tensor and a dict of detached 0-d tensors. Metrics
are always token means over the real tokens of the batch, whatever the loss reduction. The
``reduction`` knob chooses how per-token terms become one scalar (see :func:`aggregate`).

Every mean here is over the tensors given; a trainer that splits an optimiser step over
micro-batches or processes must rescale (e.g. divide token sums by the global token count) itself.
"""

from __future__ import annotations

import torch

from alignlab.rl.kl import kl_estimate

REDUCTIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")
"""Names accepted by the ``reduction`` argument of every loss in this module."""


# ----------------------------------------------------------------------------- helpers


def _check_same_shape(reference_name: str, reference: torch.Tensor, **others) -> None:
    """ValueError naming the first tensor in ``others`` whose shape differs from ``reference``."""
    if reference.dim() != 2:
        raise ValueError(f"{reference_name} must be [B, T], got shape {tuple(reference.shape)}")
    for name, tensor in others.items():
        if tensor is not None and tensor.shape != reference.shape:
            raise ValueError(f"{name} shape {tuple(tensor.shape)} != {reference_name} shape "
                             f"{tuple(reference.shape)}")


def _real(mask: torch.Tensor) -> torch.Tensor:
    """Boolean [B, T]: True on real tokens."""
    return mask > 0


def _fill_padding(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` with padding positions set to 0 (their gradient is exactly 0, even for inf/nan)."""
    return torch.where(_real(mask), x, torch.zeros((), dtype=x.dtype, device=x.device))


def _masked_token_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over real tokens (0 when there are none); private so rl/ modules stay apart."""
    real = _real(mask)
    total = torch.where(real, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum()
    return total / real.sum().clamp(min=1).to(x.dtype)


def _check_clip(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


# ----------------------------------------------------------------------------- aggregation


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, reduction: str,
              norm_length: float | None = None) -> torch.Tensor:
    """Reduce a per-token loss [B, T] to a scalar over the real tokens given by ``mask``.

    With m_it the mask, l_it the per-token loss, n_i = sum_t m_it the length of sequence i:

    * ``"token_mean"``: sum_it m_it l_it / sum_it m_it. Every real token of the batch weighs the
      same (PPO as in TRL/OpenRLHF; DAPO's "token-level policy gradient loss", Yu et al. 2025, eq. 12).
      0 when the batch has no real token.
    * ``"seq_mean_token_mean"``: (1/G') sum_i (1/n_i) sum_t m_it l_it, the mean over sequences of
      each sequence's token mean (GRPO, Shao et al. 2024, eq. 3, the 1/G sum_i 1/|o_i| sum_t).
      Tokens of short sequences weigh more. Departure: G' counts only sequences with n_i >= 1 (an
      empty sequence has no token mean); 0 when there are none.
    * ``"seq_mean_token_sum_norm"``: (1/B) sum_i (1/L) sum_t m_it l_it with the constant
      L = ``norm_length`` (Dr. GRPO, Liu et al. 2025, "Understanding R1-Zero-Like Training",
      which replaces 1/|o_i| by a constant, the generation budget MAX_TOKENS, to remove the length
      bias). Every sampled sequence counts in B, empty ones included.

    ``norm_length`` is required (> 0) for ``"seq_mean_token_sum_norm"`` and ignored otherwise, so a
    trainer may pass its generation budget unconditionally. Padding values never matter (they are
    replaced by 0 first). Raises ValueError for an unknown ``reduction`` (naming it), a missing or
    non-positive ``norm_length``, or a ``mask`` whose shape differs from ``per_token``.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected one of {REDUCTIONS}")
    _check_same_shape("per_token", per_token, mask=mask)
    real = _real(mask)
    dtype = per_token.dtype
    sums = _fill_padding(per_token, mask).sum(dim=1)                     # [B]
    if reduction == "token_mean":
        return sums.sum() / real.sum().clamp(min=1).to(dtype)
    if reduction == "seq_mean_token_mean":
        lengths = real.sum(dim=1)                                         # [B]
        per_seq = sums / lengths.clamp(min=1).to(dtype)
        n_seqs = (lengths > 0).sum().clamp(min=1).to(dtype)
        return per_seq.sum() / n_seqs
    if norm_length is None or not norm_length > 0:
        raise ValueError(f"reduction 'seq_mean_token_sum_norm' needs norm_length > 0 (the constant "
                         f"length, e.g. the generation budget), got norm_length={norm_length}")
    return (sums / norm_length).mean()


# ----------------------------------------------------------------------------- policy losses


def _clipped_surrogate(logp, old_logp, advantages, mask, clip_eps, clip_eps_high):
    """Per-token -min(r A, clip(r, 1 - eps, 1 + eps_high) A) and the PPO metrics (token means)."""
    _check_clip("clip_eps", clip_eps)
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    _check_clip("clip_eps_high", eps_high)
    logp = _fill_padding(logp, mask)
    old_logp = _fill_padding(old_logp.detach(), mask)
    adv = _fill_padding(advantages.detach(), mask)
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + eps_high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    with torch.no_grad():
        # The clipped branch is active (and the token's gradient is 0) exactly when it is the
        # strictly smaller term: r > 1 + eps_high with A > 0, or r < 1 - eps with A < 0.
        active = (clipped < unclipped).to(logp.dtype)
        metrics = {
            "clip_fraction": _masked_token_mean(active, mask),
            "approx_kl": _masked_token_mean((ratio - 1) - log_ratio, mask),
            "ratio_mean": _masked_token_mean(ratio, mask),
        }
    return per_token, metrics


def ppo_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, clip_eps: float = 0.2, clip_eps_high: float | None = None,
                    reduction: str = "token_mean", norm_length: float | None = None
                    ) -> tuple[torch.Tensor, dict]:
    """PPO clipped surrogate (Schulman et al. 2017, "Proximal Policy Optimization Algorithms", eq. 7).

    Per real token, with r = exp(logp - old_logp) and A the advantage:

        l_t = -min(r A, clip(r, 1 - clip_eps, 1 + clip_eps_high) A)

    reduced by :func:`aggregate` (``reduction``, ``norm_length``). Minimising it maximises L^CLIP.
    Log-probs are per token (not summed or length-averaged over the response); the ratio is per
    token, as in RLHF PPO implementations, while the paper's ratio is per action.

    ``clip_eps_high`` defaults to ``clip_eps`` (symmetric, the paper); a larger value is DAPO's
    "clip-higher" (Yu et al. 2025, eq. 10: eps_low = 0.2, eps_high = 0.28), which lets unlikely
    tokens with positive advantage grow more. Departure from the paper: the single eps is split in two.

    Metrics (token means over real tokens): ``clip_fraction`` - share of tokens where the clipped
    term is the minimum and strictly smaller, i.e. the token's gradient is cut (r > 1 + eps_high
    with A > 0, or r < 1 - eps with A < 0); ``approx_kl`` - mean of (r - 1) - log r, the k3
    estimator of KL(pi_old || pi_theta) (Schulman 2020, "Approximating KL divergence");
    ``ratio_mean`` - mean of r.
    """
    _check_same_shape("logp", logp, old_logp=old_logp, advantages=advantages, mask=mask)
    per_token, metrics = _clipped_surrogate(logp, old_logp, advantages, mask, clip_eps, clip_eps_high)
    return aggregate(per_token, mask, reduction, norm_length), metrics


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None,
              advantages: torch.Tensor, mask: torch.Tensor, clip_eps: float = 0.2,
              beta: float = 0.04, reduction: str = "seq_mean_token_mean",
              clip_eps_high: float | None = None, norm_length: float | None = None
              ) -> tuple[torch.Tensor, dict]:
    """GRPO objective (Shao et al. 2024, "DeepSeekMath", eq. 3), as a loss to minimise.

    Per real token, with r = exp(logp - old_logp), A the (group-normalised, caller-computed)
    advantage of the token's response and k3 from :func:`alignlab.rl.kl.kl_estimate` (eq. 4):

        l_t = -min(r A, clip(r, 1 - clip_eps, 1 + clip_eps_high) A) + beta * k3(logp, ref_logp)

    reduced by :func:`aggregate`. The default ``"seq_mean_token_mean"`` is the paper's
    1/G sum_i 1/|o_i| sum_t; ``"token_mean"`` is DAPO, ``"seq_mean_token_sum_norm"`` Dr. GRPO.
    The KL penalty sits inside the loss (not in the reward, unlike InstructGPT PPO).

    ``beta = 0`` drops the KL term; ``ref_logp`` may then be None (no reference forward needed) and
    the loss equals :func:`ppo_policy_loss` with the same arguments. ``clip_eps_high`` (default
    ``clip_eps``) is DAPO clip-higher, a departure from the paper's single eps.

    Metrics: those of :func:`ppo_policy_loss`, plus ``kl`` (token mean of k3) when ``ref_logp``
    is given. Raises ValueError when ``beta < 0`` or ``beta > 0`` with ``ref_logp`` None.
    """
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if beta > 0 and ref_logp is None:
        raise ValueError(f"ref_logp is required when beta > 0 (beta={beta}); pass beta=0 to drop "
                         "the KL term")
    _check_same_shape("logp", logp, old_logp=old_logp, ref_logp=ref_logp, advantages=advantages,
                      mask=mask)
    per_token, metrics = _clipped_surrogate(logp, old_logp, advantages, mask, clip_eps, clip_eps_high)
    if ref_logp is not None:
        kl = kl_estimate(_fill_padding(logp, mask), _fill_padding(ref_logp.detach(), mask), "k3")
        if beta > 0:
            per_token = per_token + beta * kl
        metrics["kl"] = _masked_token_mean(kl.detach(), mask)
    return aggregate(per_token, mask, reduction, norm_length), metrics


def policy_gradient_loss(logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                         reduction: str = "token_mean", norm_length: float | None = None
                         ) -> tuple[torch.Tensor, dict]:
    """Plain policy-gradient surrogate -A * logp (REINFORCE, Williams 1992; RLOO, Ahmadian et al.
    2024, eq. 4 with the leave-one-out baseline folded into A; REINFORCE++, Hu 2025, one epoch).

    Per real token l_t = -A_t * logp_t, reduced by :func:`aggregate`; its gradient is
    -A_t grad logp_t / N under ``"token_mean"`` (N real tokens). It is on-policy: valid for one
    update per rollout (no ratio, no clipping). Equivalence: :func:`ppo_policy_loss` with
    ``old_logp == logp`` (r = 1, never clipped) has the same gradient, since grad r = r grad logp;
    the loss values differ (-A vs -A logp). Per-token log-probs, as elsewhere here; the papers
    write the sequence log-prob sum_t logp_t, which ``"seq_mean_token_sum_norm"`` with
    ``norm_length=1`` reproduces up to the 1/B mean.

    Metrics: ``advantage_mean`` and ``logp_mean`` (token means over real tokens).
    """
    _check_same_shape("logp", logp, advantages=advantages, mask=mask)
    logp = _fill_padding(logp, mask)
    adv = _fill_padding(advantages.detach(), mask)
    loss = aggregate(-adv * logp, mask, reduction, norm_length)
    metrics = {"advantage_mean": _masked_token_mean(adv, mask),
               "logp_mean": _masked_token_mean(logp.detach(), mask)}
    return loss, metrics


def ptx_loss(nll_token_logp: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """PPO-ptx pretraining term (Ouyang et al. 2022, "InstructGPT", eq. 2: gamma * E_x~D_pretrain
    [log pi(x)]), as a token-mean negative log-likelihood to minimise.

    ``nll_token_logp`` [B, T]: the policy's per-token log-probs log pi(x_t | x_<t) on pretraining
    (or SFT) tokens, ``mask`` 1 on the target tokens. Returns -sum m logp / sum m (0 when there is
    no target token). The caller multiplies by gamma (the paper's ptx coefficient) and adds it to the
    policy loss. Departure: the paper's expectation is over sequences of summed log-probs; the token
    mean keeps the term's scale independent of sequence length (as in SFT here).

    Metrics: ``ptx_nll`` (the loss, detached).
    """
    _check_same_shape("nll_token_logp", nll_token_logp, mask=mask)
    loss = -_masked_token_mean(nll_token_logp, mask)
    return loss, {"ptx_nll": loss.detach()}


# ----------------------------------------------------------------------------- value loss


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               mask: torch.Tensor, clip_range: float | None = 0.2, reduction: str = "token_mean",
               norm_length: float | None = None) -> tuple[torch.Tensor, dict]:
    """Clipped value loss of PPO as in OpenAI baselines' ppo2 and InstructGPT's PPO (Ouyang et al.
    2022, following Stiennon et al. 2020): per real token

        l_t = 0.5 * max((v - R)^2, (v_old + clip(v - v_old, -c, c) - R)^2)

    with v = ``values`` (with grad), v_old = ``old_values`` at rollout time, R = ``returns``
    (e.g. GAE advantages + old values), c = ``clip_range``; reduced by :func:`aggregate`.
    ``clip_range=None`` disables clipping: l_t = 0.5 (v - R)^2. The PPO paper (eq. 9) uses the
    unclipped squared error; value clipping is the baselines departure kept by RLHF implementations.

    Metrics (token means over real tokens): ``clip_fraction`` - share of tokens where the value
    moved more than ``c`` and the clipped term is strictly larger (its gradient is then 0);
    ``explained_variance`` - 1 - Var(R - v) /
    Var(R) over real tokens, population variances (nan when Var(R) == 0, e.g. one real token).
    """
    _check_same_shape("values", values, old_values=old_values, returns=returns, mask=mask)
    if clip_range is not None and not clip_range > 0:
        raise ValueError(f"clip_range must be > 0 or None, got {clip_range}")
    values = _fill_padding(values, mask)
    old_values = _fill_padding(old_values.detach(), mask)
    returns = _fill_padding(returns.detach(), mask)
    unclipped = (values - returns) ** 2
    if clip_range is None:
        squared = unclipped
        active = torch.zeros_like(unclipped)
    else:
        step = values - old_values
        clipped_values = old_values + torch.clamp(step, -clip_range, clip_range)
        clipped = (clipped_values - returns) ** 2
        squared = torch.maximum(unclipped, clipped)
        # inside the clip range old + (v - old) equals v only up to rounding: not "clipped"
        active = ((clipped > unclipped) & (step.abs() > clip_range)).to(values.dtype)
    loss = aggregate(0.5 * squared, mask, reduction, norm_length)
    with torch.no_grad():
        metrics = {"clip_fraction": _masked_token_mean(active, mask),
                   "explained_variance": _explained_variance(values, returns, mask)}
    return loss, metrics


def _explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor):
    """1 - Var(R - v) / Var(R) over real tokens (population variances); nan when Var(R) == 0."""
    mean_r = _masked_token_mean(returns, mask)
    var_r = _masked_token_mean((returns - mean_r) ** 2, mask)
    err = returns - values
    var_err = _masked_token_mean((err - _masked_token_mean(err, mask)) ** 2, mask)
    nan = torch.full((), float("nan"), dtype=values.dtype, device=values.device)
    return torch.where(var_r > 0, 1 - var_err / var_r.clamp(min=torch.finfo(values.dtype).tiny), nan)


def explained_variance_sums(values: torch.Tensor, returns: torch.Tensor,
                            mask: torch.Tensor) -> torch.Tensor:
    """``[5]`` float64 sums over real tokens, (n, ΣR, ΣR², Σe, Σe²) with e = R − v, from which
    :func:`explained_variance_from_sums` gives the ``explained_variance`` of :func:`value_loss`;
    sums of several chunks (micro-batches, processes) add up to the sums of their union."""
    _check_same_shape("values", values, returns=returns, mask=mask)
    real = _real(mask)
    r = _fill_padding(returns.detach(), mask).double()
    e = r - _fill_padding(values.detach(), mask).double()
    return torch.stack([real.sum().double(), r.sum(), (r * r).sum(), e.sum(), (e * e).sum()])


def explained_variance_from_sums(sums: torch.Tensor) -> float:
    """1 − Var(R − v) / Var(R) (population variances) from :func:`explained_variance_sums`;
    nan when there is no token or Var(R) is 0 (below float64 rounding of E[R²] − E[R]²)."""
    n, r, r2, e, e2 = (float(x) for x in sums)
    if n <= 0:
        return float("nan")
    var_r = r2 / n - (r / n) ** 2
    var_e = e2 / n - (e / n) ** 2
    return 1.0 - var_e / var_r if var_r > 1e-12 * (r2 / n) else float("nan")
