"""Hand-derived tests for alignlab.rl.objectives (PPO, value, GRPO, policy-gradient, ptx losses)."""

import math

import pytest
import torch

from alignlab.rl.kl import kl_estimate
from alignlab.rl.objectives import (
    REDUCTIONS,
    aggregate,
    grpo_loss,
    policy_gradient_loss,
    ppo_policy_loss,
    ptx_loss,
    value_loss,
)

D = torch.float64


def t(rows):
    return torch.tensor(rows, dtype=D)


# A 2x3 batch with unequal lengths: sequence 0 has 3 real tokens, sequence 1 has 1.
MASK = t([[1, 1, 1], [1, 0, 0]])


def close(actual, expected, tol=1e-6):
    return abs(float(torch.as_tensor(actual).detach()) - expected) < tol


# ----------------------------------------------------------------------------- aggregate


def test_aggregate_three_reductions_by_hand():
    # Padding values (50, 60) must be ignored.
    x = t([[1, 2, 3], [4, 50, 60]])
    # token_mean: (1 + 2 + 3 + 4) / 4 = 2.5
    assert close(aggregate(x, MASK, "token_mean"), 2.5)
    # seq_mean_token_mean: ((1 + 2 + 3) / 3 + 4 / 1) / 2 = (2 + 4) / 2 = 3.0
    assert close(aggregate(x, MASK, "seq_mean_token_mean"), 3.0)
    # seq_mean_token_sum_norm, L = 3: (6 / 3 + 4 / 3) / 2 = 10 / 6 = 1.666667
    assert close(aggregate(x, MASK, "seq_mean_token_sum_norm", norm_length=3), 10 / 6)
    # L = 4: (6 / 4 + 4 / 4) / 2 = 2.5 / 2 = 1.25
    assert close(aggregate(x, MASK, "seq_mean_token_sum_norm", norm_length=4), 1.25)


def test_aggregate_empty_sequence():
    # A third, fully padded row.
    x = t([[1, 2, 3], [4, 50, 60], [7, 7, 7]])
    mask = t([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    assert close(aggregate(x, mask, "token_mean"), 2.5)             # same 4 tokens
    assert close(aggregate(x, mask, "seq_mean_token_mean"), 3.0)    # empty row has no token mean
    # Dr. GRPO counts every sampled sequence: (6/3 + 4/3 + 0) / 3 = 10/9 = 1.111111
    assert close(aggregate(x, mask, "seq_mean_token_sum_norm", norm_length=3), 10 / 9)
    # No real token at all: 0, not nan.
    zero_mask = torch.zeros_like(mask)
    for reduction in REDUCTIONS:
        assert float(aggregate(x, zero_mask, reduction, norm_length=3)) == 0.0


def test_aggregate_errors():
    x = t([[1, 2, 3], [4, 5, 6]])
    with pytest.raises(ValueError, match="seq_mean"):
        aggregate(x, MASK, "seq_mean")
    with pytest.raises(ValueError, match="'sum'"):
        ppo_policy_loss(x, x, x, MASK, reduction="sum")
    with pytest.raises(ValueError, match="norm_length"):
        aggregate(x, MASK, "seq_mean_token_sum_norm")
    with pytest.raises(ValueError, match="norm_length"):
        aggregate(x, MASK, "seq_mean_token_sum_norm", norm_length=0)
    with pytest.raises(ValueError, match="mask"):
        aggregate(x, MASK[:, :2], "token_mean")


# ----------------------------------------------------------------------------- PPO


def test_ppo_ratio_one_is_minus_mean_advantage():
    logp = t([[-1.0, -2.0, -0.5], [-3.0, 0.0, 0.0]])
    adv = t([[1.0, -2.0, 3.0], [0.5, 9.0, 9.0]])
    loss, m = ppo_policy_loss(logp, logp.clone(), adv, MASK)
    # r = 1 everywhere, never clipped: -(1 - 2 + 3 + 0.5) / 4 = -0.625
    assert close(loss, -0.625)
    assert float(m["clip_fraction"]) == 0.0
    assert close(m["approx_kl"], 0.0) and close(m["ratio_mean"], 1.0)
    # seq_mean_token_mean: -((1 - 2 + 3) / 3 + 0.5) / 2 = -(0.666667 + 0.5) / 2 = -0.583333
    loss, _ = ppo_policy_loss(logp, logp.clone(), adv, MASK, reduction="seq_mean_token_mean")
    assert close(loss, -7 / 12)


def _ppo_four_cases(**kwargs):
    # Tokens: (r = 1.5, A = +1), (r = 1.5, A = -1), (r = 0.5, A = +1), (r = 0.5, A = -1).
    old = t([[-1.0, -1.0, -1.0, -1.0]])
    logp = (old + torch.log(t([[1.5, 1.5, 0.5, 0.5]])))
    logp.requires_grad_(True)
    adv = t([[1.0, -1.0, 1.0, -1.0]])
    loss, m = ppo_policy_loss(logp, old, adv, torch.ones_like(adv), **kwargs)
    loss.backward()
    return loss, m, logp.grad


def test_ppo_clipping_branches():
    loss, m, grad = _ppo_four_cases(clip_eps=0.2)
    # eps = 0.2, clip range [0.8, 1.2]; per token -min(r A, clip(r) A):
    #  r=1.5, A=+1: min(1.5, 1.2) = 1.2 (clipped: objective would improve, gradient cut) -> -1.2
    #  r=1.5, A=-1: min(-1.5, -1.2) = -1.5 (unclipped: pessimistic bound)          ->  1.5
    #  r=0.5, A=+1: min(0.5, 0.8) = 0.5 (unclipped)                                 -> -0.5
    #  r=0.5, A=-1: min(-0.5, -0.8) = -0.8 (clipped: objective would improve)      ->  0.8
    # token mean: (-1.2 + 1.5 - 0.5 + 0.8) / 4 = 0.6 / 4 = 0.15
    assert close(loss, 0.15)
    # d/dlogp of -r A is -A r on unclipped tokens, 0 on clipped ones; divided by N = 4:
    # [0, 1.5 / 4, -0.5 / 4, 0] = [0, 0.375, -0.125, 0]
    assert torch.allclose(grad, t([[0.0, 0.375, -0.125, 0.0]]))
    assert close(m["clip_fraction"], 0.5)
    # approx_kl = mean of (r - 1) - log r: r=1.5: 0.5 - 0.405465 = 0.094535;
    # r=0.5: -0.5 + 0.693147 = 0.193147; (2 * 0.094535 + 2 * 0.193147) / 4 = 0.143841
    assert close(m["approx_kl"], 0.143841)
    assert close(m["ratio_mean"], 1.0)                      # (1.5 + 1.5 + 0.5 + 0.5) / 4


def test_ppo_clip_eps_high_asymmetric():
    old = t([[0.0, 0.0, 0.0]])
    logp = torch.log(t([[1.25, 1.5, 0.5]])).requires_grad_(True)   # r = 1.25, 1.5, 0.5
    adv = t([[1.0, 1.0, -1.0]])
    mask = torch.ones_like(adv)
    sym, m_sym = ppo_policy_loss(logp, old, adv, mask, clip_eps=0.2)
    # symmetric [0.8, 1.2]: -1.2, -1.2, +0.8 (all three clipped) -> (-1.2 - 1.2 + 0.8) / 3 = -0.533333
    assert close(sym, -1.6 / 3) and close(m_sym["clip_fraction"], 1.0)
    asym, m_asym = ppo_policy_loss(logp, old, adv, mask, clip_eps=0.2, clip_eps_high=0.28)
    # [0.8, 1.28]: r=1.25 now inside -> -1.25; r=1.5 -> -1.28; low side unchanged -> +0.8
    # (-1.25 - 1.28 + 0.8) / 3 = -1.73 / 3 = -0.576667
    assert close(asym, -1.73 / 3) and close(m_asym["clip_fraction"], 2 / 3)
    asym.backward()
    # only the r = 1.25 token has gradient: -A r / 3 = -1.25 / 3
    assert torch.allclose(logp.grad, t([[-1.25 / 3, 0.0, 0.0]]))


def test_ppo_bad_clip_eps():
    x = t([[0.0]])
    with pytest.raises(ValueError, match="clip_eps_high"):
        ppo_policy_loss(x, x, x, torch.ones_like(x), clip_eps_high=0.0)
    with pytest.raises(ValueError, match="old_logp"):
        ppo_policy_loss(x, t([[0.0, 1.0]]), x, torch.ones_like(x))


# ----------------------------------------------------------------------------- value loss


def test_value_loss_clipped_and_unclipped_branches():
    values = t([[1.0, 1.0, 0.1]]).requires_grad_(True)
    old = t([[0.0, 0.0, 0.0]])
    returns = t([[0.0, 2.0, 1.0]])
    mask = torch.ones_like(old)
    loss, m = value_loss(values, old, returns, mask, clip_range=0.2)
    # token 0: (1-0)^2 = 1 vs clipped v=0.2: 0.04 -> max 1, 0.5 * 1 = 0.5 (unclipped branch)
    # token 1: (1-2)^2 = 1 vs (0.2-2)^2 = 3.24 -> max 3.24, 1.62 (clipped branch, gradient 0)
    # token 2: inside the range, both (0.1-1)^2 = 0.81 -> 0.405
    # mean: (0.5 + 1.62 + 0.405) / 3 = 2.525 / 3 = 0.841667
    assert close(loss, 2.525 / 3)
    assert close(m["clip_fraction"], 1 / 3)
    loss.backward()
    # gradient (v - R) / 3 on unclipped tokens: [1/3, 0, -0.9/3]
    assert torch.allclose(values.grad, t([[1 / 3, 0.0, -0.3]]))
    # explained variance: R = [0, 2, 1], Var = 2/3; R - v = [-1, 1, 0.9], mean 0.3,
    # Var = (1.69 + 0.49 + 0.36) / 3 = 0.846667; 1 - 0.846667 / 0.666667 = -0.27
    assert close(m["explained_variance"], -0.27)


def test_value_loss_no_clipping():
    values = t([[1.0, 1.0, 0.1]])
    loss, m = value_loss(values, t([[0.0, 0.0, 0.0]]), t([[0.0, 2.0, 1.0]]),
                         torch.ones_like(values), clip_range=None)
    # 0.5 * (1 + 1 + 0.81) / 3 = 1.405 / 3 = 0.468333
    assert close(loss, 1.405 / 3)
    assert float(m["clip_fraction"]) == 0.0
    with pytest.raises(ValueError, match="clip_range"):
        value_loss(values, values, values, torch.ones_like(values), clip_range=-1.0)


def test_value_loss_constant_returns_explained_variance_nan():
    v = t([[1.0, 2.0]])
    _, m = value_loss(v, v, t([[3.0, 3.0]]), torch.ones_like(v))
    assert math.isnan(float(m["explained_variance"]))


# ----------------------------------------------------------------------------- GRPO


def test_k3_value():
    # logp - ref = 0.5: exp(-0.5) - (-0.5) - 1 = 0.606531 + 0.5 - 1 = 0.106531
    assert close(kl_estimate(t([0.5]), t([0.0]), "k3"), 0.106531)
    assert float(kl_estimate(t([-2.0]), t([-2.0]), "k3")) == 0.0            # equal log-probs: 0


def test_grpo_kl_term_value_and_gradient():
    ref = t([[-1.5, -1.5]])
    logp = (ref + 0.5).requires_grad_(True)                        # logp - ref = 0.5 on both tokens
    adv = torch.zeros_like(ref)                                    # isolates the KL term
    loss, m = grpo_loss(logp, logp.detach(), ref, adv, torch.ones_like(ref), beta=0.04)
    # exp(-0.5) = 0.60653066, k3 = 0.10653066; 0.04 * 0.10653066 = 0.00426123 (two equal tokens)
    assert close(loss, 0.00426123, tol=1e-8)
    assert close(m["kl"], 0.106531)
    loss.backward()
    # d k3 / d logp = 1 - exp(ref - logp) = 1 - 0.606531 = 0.393469; * beta / 2 tokens per sequence
    assert torch.allclose(logp.grad, torch.full_like(ref, 0.04 * 0.393469 / 2), atol=1e-8)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_grpo_beta_zero_equals_ppo(reduction):
    logp = t([[-1.0, -2.0, -0.5], [-3.0, 0.0, 0.0]])
    old = t([[-1.3, -1.6, -0.5], [-2.0, 0.0, 0.0]])              # several ratios, some clipped
    adv = t([[1.0, -2.0, 3.0], [-0.5, 0.0, 0.0]])
    ppo, m_ppo = ppo_policy_loss(logp, old, adv, MASK, reduction=reduction, norm_length=3)
    grpo, m_grpo = grpo_loss(logp, old, None, adv, MASK, beta=0.0, reduction=reduction,
                             norm_length=3)
    assert torch.equal(ppo, grpo)
    assert "kl" not in m_grpo and torch.equal(m_ppo["clip_fraction"], m_grpo["clip_fraction"])
    # With a reference given, beta = 0 still leaves the loss unchanged (kl is only reported).
    grpo_ref, m_ref = grpo_loss(logp, old, logp + 1.0, adv, MASK, beta=0.0, reduction=reduction,
                                norm_length=3)
    assert torch.equal(ppo, grpo_ref) and "kl" in m_ref


def test_grpo_errors():
    x = t([[0.0]])
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(x, x, None, x, torch.ones_like(x), beta=0.04)
    with pytest.raises(ValueError, match="beta"):
        grpo_loss(x, x, x, x, torch.ones_like(x), beta=-0.1)


# ----------------------------------------------------------------------------- policy gradient


def test_policy_gradient_value_and_gradient():
    logp = t([[-1.0, -1.0, -1.0], [-2.0, -5.0, -5.0]]).requires_grad_(True)
    adv = t([[1.0, -2.0, 3.0], [0.5, 9.0, 9.0]])
    loss, m = policy_gradient_loss(logp, adv, MASK, "token_mean")
    # -sum A logp / N = -(-1 + 2 - 3 - 1) / 4 = 3 / 4 = 0.75
    assert close(loss, 0.75)
    assert close(m["advantage_mean"], 2.5 / 4)
    loss.backward()
    # -A / N on real tokens, 0 on padding: [-1/4, 2/4, -3/4], [-0.5/4, 0, 0]
    assert torch.allclose(logp.grad, t([[-0.25, 0.5, -0.75], [-0.125, 0.0, 0.0]]))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_ppo_on_policy_gradient_equals_policy_gradient(reduction):
    base = t([[-1.0, -2.0, -0.5], [-3.0, -1.0, -1.0]])
    adv = t([[1.0, -2.0, 3.0], [0.5, 9.0, 9.0]])
    a = base.clone().requires_grad_(True)
    ppo_policy_loss(a, a, adv, MASK, reduction=reduction, norm_length=3)[0].backward()
    b = base.clone().requires_grad_(True)
    policy_gradient_loss(b, adv, MASK, reduction, norm_length=3)[0].backward()
    assert torch.allclose(a.grad, b.grad)
    assert a.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- ptx


def test_ptx_loss_token_mean_nll():
    logp = t([[-1.0, -2.0, -3.0], [-4.0, -100.0, float("nan")]])
    loss, m = ptx_loss(logp, MASK)
    # -(-1 - 2 - 3 - 4) / 4 = 2.5
    assert close(loss, 2.5) and close(m["ptx_nll"], 2.5)


# ----------------------------------------------------------------------------- padding


GARBAGE = [float("nan"), float("inf"), -float("inf"), 1e6]


@pytest.mark.parametrize("garbage", GARBAGE)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_padding_never_changes_loss_or_gradient(garbage, reduction):
    """Extra padded columns filled with garbage leave every loss, metric and real gradient intact."""
    logp = t([[-1.0, -2.0, -0.5], [-3.0, 0.0, 0.0]])
    old = t([[-1.3, -1.6, -0.5], [-2.0, 0.0, 0.0]])
    ref = t([[-0.8, -2.5, -0.1], [-2.5, 0.0, 0.0]])
    adv = t([[1.0, -2.0, 3.0], [-0.5, 0.0, 0.0]])

    def pad(x):  # set padding of the 2x3 batch to garbage and add two garbage columns
        x = torch.where(MASK > 0, x, torch.full_like(x, garbage))
        return torch.cat([x, torch.full((2, 2), garbage, dtype=D)], dim=1)

    padded_mask = torch.cat([MASK, torch.zeros(2, 2, dtype=D)], dim=1)
    calls = {
        "ppo": lambda lp, o, r, a, m: ppo_policy_loss(lp, o, a, m, reduction=reduction,
                                                      norm_length=3),
        "grpo": lambda lp, o, r, a, m: grpo_loss(lp, o, r, a, m, reduction=reduction,
                                                 norm_length=3),
        "pg": lambda lp, o, r, a, m: policy_gradient_loss(lp, a, m, reduction, norm_length=3),
        "value": lambda lp, o, r, a, m: value_loss(lp, o, r, m, reduction=reduction,
                                                   norm_length=3),
        "ptx": lambda lp, o, r, a, m: ptx_loss(lp, m),
    }
    for name, call in calls.items():
        x = logp.clone().requires_grad_(True)
        clean_loss, clean_metrics = call(x, old, ref, adv, MASK)
        clean_loss.backward()
        y = pad(logp).requires_grad_(True)
        loss, metrics = call(y, pad(old), pad(ref), pad(adv), padded_mask)
        loss.backward()
        assert torch.allclose(loss, clean_loss), name
        for key, value in clean_metrics.items():
            assert torch.allclose(metrics[key], value, equal_nan=True), (name, key)
        assert torch.allclose(y.grad[:, :3], x.grad), name
        assert torch.all(y.grad[padded_mask == 0] == 0), name
