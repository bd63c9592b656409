"""Pairwise preference objectives against numbers derived by hand (arithmetic in the comments).

Notation: sp(x) = -log sigma(x) = log(1 + e^-x); sp(-x) = sp(x) + x.
sp(0) = log 2 = 0.693147, sp(0.5) = 0.474077, sp(1) = 0.313262, sp(2) = 0.126928,
sigma(0.5) = 0.622459, sigma(1) = 0.731059.
"""

import math

import pytest
import torch

from alignlab.losses import PairInputs, SeqStats, get_loss, losses_for
from alignlab.losses.common import log_odds

LOG2 = math.log(2.0)
SP_HALF, SP_ONE, SP_TWO = 0.474077, 0.313262, 0.126928
SIG_HALF, SIG_ONE = 0.622459, 0.731059

PAIR_LOSSES = ["dpo", "cdpo", "rdpo", "ipo", "slic", "dpop", "beta_dpo", "r_dpo", "gpo", "simpo",
               "cpo", "orpo"]
REFERENCE_FREE = ["slic", "simpo", "cpo", "orpo"]


def run(name, inputs, **raw):
    spec = get_loss(name)
    return spec.build(spec.parse(raw))(inputs)


def basic_pair(labels=None, **lengths):
    """chosen log-ratio +1 (-10 vs ref -11), rejected log-ratio -1 (-12 vs -11): h = 2."""
    return PairInputs.of([-10.0], [-12.0], [-11.0], [-11.0], labels=labels, **lengths)


def random_pairs(n=5, seed=0, labels=None):
    g = torch.Generator().manual_seed(seed)
    vals = -torch.rand(4, n, generator=g) * 20
    lengths = torch.randint(1, 30, (2, n), generator=g).float()
    return PairInputs.of(vals[0], vals[1], vals[2], vals[3], labels=labels,
                         chosen_lengths=lengths[0], rejected_lengths=lengths[1])


def double_pair(chosen, rejected, ref_c=None, ref_r=None, lengths=(1.0, 1.0), labels=None):
    """Float64 inputs with grad on the policy log-probs, for gradcheck-style tests."""
    t = lambda v: torch.tensor(v, dtype=torch.float64)
    c = SeqStats(t(chosen).requires_grad_(), t([lengths[0]] * len(chosen)),
                 None if ref_c is None else t(ref_c))
    r = SeqStats(t(rejected).requires_grad_(), t([lengths[1]] * len(rejected)),
                 None if ref_r is None else t(ref_r))
    y = torch.ones(len(chosen), dtype=torch.float64) if labels is None else t(labels)
    return PairInputs(c, r, y)


# --- registry ---------------------------------------------------------------------------------


def test_all_pair_objectives_registered_with_reference_mode():
    assert set(PAIR_LOSSES) <= set(losses_for("pair"))
    for name in PAIR_LOSSES:
        spec = get_loss(name)
        assert spec.data_kind == "pair" and spec.paper and spec.summary
        assert spec.needs_reference == (name not in REFERENCE_FREE)
    with pytest.raises(KeyError, match="did you mean 'simpo'"):
        get_loss("simpoo")


@pytest.mark.parametrize("name", PAIR_LOSSES)
def test_per_pair_losses_and_detached_metrics(name):
    losses, metrics = run(name, random_pairs(n=5))
    assert losses.shape == (5,) and torch.isfinite(losses).all()
    assert metrics and all(v.shape == (5,) and not v.requires_grad for v in metrics.values())


@pytest.mark.parametrize("name, raw, key", [
    ("cdpo", {"eps": 0.7}, "eps"), ("rdpo", {"eps": 0.5}, "eps"), ("dpo", {"beta": 0.0}, "beta"),
    ("dpo", {"beta": -1.0}, "beta"), ("ipo", {"beta": 0.0}, "beta"), ("slic", {"delta": 0.0}, "delta"),
    ("slic", {"lambda_reg": -1.0}, "lambda_reg"), ("dpop", {"lam": -1.0}, "lam"),
    ("r_dpo", {"alpha": -0.1}, "alpha"), ("gpo", {"kind": "cubic"}, "kind"),
    ("simpo", {"gamma": -0.5}, "gamma"), ("cpo", {"nll_weight": -1.0}, "nll_weight"),
    ("orpo", {"lam": -0.1}, "lam"), ("beta_dpo", {"keep_fraction": 0.0}, "keep_fraction"),
    ("beta_dpo", {"momentum": 1.0}, "momentum"), ("dpo", {"bta": 0.1}, "bta"),
])
def test_bad_params_fail_at_parse_time_naming_the_key(name, raw, key):
    with pytest.raises(ValueError, match=rf"loss '{name}'.*{key}"):
        get_loss(name).parse(raw)


def test_labels_outside_unit_interval_rejected():
    for name in ("ipo", "simpo", "gpo"):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            run(name, basic_pair(labels=[1.5]))


# --- DPO ----------------------------------------------------------------------------------------


def test_dpo_equal_margins_is_log2():
    inputs = PairInputs.of([-5.0], [-9.0], [-6.0], [-10.0])
    losses, m = run("dpo", inputs, beta=0.3)
    # both log-ratios equal 1, so h = 0 and -log sigma(0) = log 2
    assert losses.item() == pytest.approx(LOG2)
    assert m["rewards/margin"].item() == pytest.approx(0.0)
    assert m["rewards/accuracy"].item() == 0.5  # a tie counts half


def test_dpo_hand_values_and_gradient():
    inputs = double_pair([-10.0], [-12.0], [-11.0], [-11.0])
    losses, m = run("dpo", inputs, beta=0.5)
    # rewards: chosen 0.5*(-10+11) = 0.5, rejected 0.5*(-12+11) = -0.5; margin 1
    # loss = log(1+e^-1) = 0.313262
    assert losses.item() == pytest.approx(SP_ONE, abs=1e-6)
    assert m["rewards/chosen"].item() == pytest.approx(0.5)
    assert m["rewards/rejected"].item() == pytest.approx(-0.5)
    assert m["rewards/accuracy"].item() == 1.0
    losses.sum().backward()
    # d l / d pi_c = beta * (sigma(beta h) - 1) = 0.5 * (0.731059 - 1) = -0.134471
    assert inputs.chosen.logps.grad.item() == pytest.approx(-0.134471, abs=1e-6)
    assert inputs.rejected.logps.grad.item() == pytest.approx(0.134471, abs=1e-6)


def test_dpo_soft_labels():
    losses, m = run("dpo", basic_pair(labels=[0.9]), beta=0.5)
    # 0.9*log(1+e^-1) + 0.1*log(1+e^1) = 0.9*0.313262 + 0.1*1.313262 = 0.413262
    assert losses.item() == pytest.approx(0.413262, abs=1e-6)
    half, _ = run("dpo", basic_pair(labels=[0.5]), beta=0.5)
    swapped, _ = run("dpo", PairInputs.of([-12.0], [-10.0], [-11.0], [-11.0], labels=[0.5]), beta=0.5)
    assert half.item() == pytest.approx(swapped.item())
    # y = 0.2 says rejected is better, and the margin favours chosen: accuracy 0
    _, m = run("dpo", basic_pair(labels=[0.2]), beta=0.5)
    assert m["rewards/accuracy"].item() == 0.0


# --- cDPO and rDPO ------------------------------------------------------------------------------


def test_cdpo_hand_value_and_eps_zero_is_dpo():
    losses, _ = run("cdpo", basic_pair(), beta=0.5, eps=0.1)
    # beta h = 1: 0.9*sp(1) + 0.1*sp(-1) = 0.9*0.313262 + 0.1*1.313262 = 0.413262
    assert losses.item() == pytest.approx(0.413262, abs=1e-6)
    inputs = random_pairs(labels=[1.0, 0.7, 0.0, 0.5, 1.0])
    assert torch.allclose(run("cdpo", inputs, beta=0.3, eps=0.0)[0], run("dpo", inputs, beta=0.3)[0])


def test_cdpo_noise_composes_with_soft_label():
    losses, _ = run("cdpo", basic_pair(labels=[0.75]), beta=0.5, eps=0.1)
    # effective label 0.75*0.9 + 0.25*0.1 = 0.7: 0.7*0.313262 + 0.3*1.313262 = 0.613262
    assert losses.item() == pytest.approx(0.613262, abs=1e-6)
    half, _ = run("cdpo", basic_pair(labels=[0.5]), beta=0.5, eps=0.3)
    # y = 1/2 stays 1/2 under any flip rate: 0.5*0.313262 + 0.5*1.313262 = 0.813262
    assert half.item() == pytest.approx(0.813262, abs=1e-6)


def test_rdpo_hand_values_can_go_negative():
    losses, _ = run("rdpo", basic_pair(), beta=0.5, eps=0.1)
    # (0.9*sp(1) - 0.1*sp(-1)) / 0.8 = (0.281936 - 0.131326) / 0.8 = 0.188262
    assert losses.item() == pytest.approx(0.188262, abs=1e-6)
    big = PairInputs.of([-6.0], [-16.0], [-11.0], [-11.0])  # h = 10, beta h = 5
    losses, _ = run("rdpo", big, beta=0.5, eps=0.1)
    # sp(5) = 0.006715, sp(-5) = 5.006715: (0.9*0.006715 - 0.1*5.006715)/0.8 = -0.618286
    assert losses.item() == pytest.approx(-0.618286, abs=1e-5)


def test_rdpo_is_unbiased_and_eps_zero_is_dpo():
    inputs = random_pairs()
    swapped = PairInputs(inputs.rejected, inputs.chosen, inputs.labels)
    clean, _ = run("dpo", inputs, beta=0.4)
    noisy, _ = run("rdpo", inputs, beta=0.4, eps=0.2)
    flipped, _ = run("rdpo", swapped, beta=0.4, eps=0.2)
    # expectation over a label flipped with prob. eps is the clean DPO loss:
    # (1-e)[(1-e)a - e b] + e[(1-e)b - e a] = ((1-e)^2 - e^2) a = (1-2e) a, over (1-2e)
    assert torch.allclose(0.8 * noisy + 0.2 * flipped, clean, atol=1e-5)
    assert torch.allclose(run("rdpo", inputs, beta=0.4, eps=0.0)[0], clean)


# --- IPO ----------------------------------------------------------------------------------------


def test_ipo_hand_values():
    losses, _ = run("ipo", basic_pair(), beta=0.5)
    # target 1/(2*0.5) = 1; h = 2: (2 - 1)^2 = 1
    assert losses.item() == pytest.approx(1.0)
    losses, _ = run("ipo", basic_pair(), beta=0.1)
    # target 5: (2 - 5)^2 = 9
    assert losses.item() == pytest.approx(9.0, rel=1e-6)


def test_ipo_minimum_and_zero_gradient_at_half_inverse_beta():
    for beta in (0.1, 0.25, 1.0):
        target = 1 / (2 * beta)
        inputs = double_pair([-10.0 + target], [-10.0], [-10.0], [-10.0])  # h = 1/(2 beta)
        losses, _ = run("ipo", inputs, beta=beta)
        losses.sum().backward()
        assert losses.item() == pytest.approx(0.0, abs=1e-12)
        assert inputs.chosen.logps.grad.item() == pytest.approx(0.0, abs=1e-9)
    inputs = double_pair([-10.0], [-12.0], [-11.0], [-11.0])  # h = 2, target 1
    run("ipo", inputs, beta=0.5)[0].sum().backward()
    # d/d pi_c (h - 1)^2 = 2 (h - 1) = 2; the rejected side gets -2
    assert inputs.chosen.logps.grad.item() == pytest.approx(2.0)
    assert inputs.rejected.logps.grad.item() == pytest.approx(-2.0)


def test_ipo_soft_label_moves_the_target():
    # y = 0.75, beta = 0.5: 0.75 (h-1)^2 + 0.25 (h+1)^2 has derivative 2h - 1: minimum at h = 0.5
    inputs = double_pair([-9.5], [-10.0], [-10.0], [-10.0], labels=[0.75])
    losses, _ = run("ipo", inputs, beta=0.5)
    losses.sum().backward()
    # 0.75*0.25 + 0.25*2.25 = 0.75
    assert losses.item() == pytest.approx(0.75)
    assert inputs.chosen.logps.grad.item() == pytest.approx(0.0, abs=1e-12)


# --- SLiC-HF ------------------------------------------------------------------------------------


def test_slic_hand_values_reference_free():
    inputs = PairInputs.of([-10.0, -12.0], [-12.0, -11.5])
    assert inputs.chosen.ref_logps is None
    losses, m = run("slic", inputs, delta=1.0, lambda_reg=0.5)
    # pair 0: hinge max(0, 1 + (-12) - (-10)) = max(0, -1) = 0; reg 0.5*10 = 5
    # pair 1: hinge max(0, 1 - 0.5) = 1.5 (rejected is likelier); reg 0.5*12 = 6 -> 7.5
    assert losses.tolist() == pytest.approx([5.0, 7.5])
    assert m["slic/hinge"].tolist() == pytest.approx([0.0, 1.5])
    assert m["rewards/accuracy"].tolist() == [1.0, 0.0]


def test_slic_gradient():
    inputs = double_pair([-12.0], [-11.5])
    run("slic", inputs, delta=1.0, lambda_reg=0.5)[0].sum().backward()
    # active hinge: d/dc = -1, d/dr = +1; regulariser -0.5 c adds -0.5 to d/dc
    assert inputs.chosen.logps.grad.item() == pytest.approx(-1.5)
    assert inputs.rejected.logps.grad.item() == pytest.approx(1.0)


# --- DPO-Positive -------------------------------------------------------------------------------


def test_dpop_equals_dpo_while_policy_above_reference_on_chosen():
    inputs = random_pairs(labels=[1.0, 1.0, 0.7, 1.0, 0.0])
    # make pi(y_c) >= pi_ref(y_c) on every pair (and pi(y_r) >= ref for the swapped orientation)
    c = SeqStats.of(inputs.chosen.ref_logps + 0.5, inputs.chosen.ref_logps, inputs.chosen.lengths)
    r = SeqStats.of(inputs.rejected.ref_logps + 2.0, inputs.rejected.ref_logps, inputs.rejected.lengths)
    above = PairInputs(c, r, inputs.labels)
    assert torch.allclose(run("dpop", above, beta=0.3, lam=50.0)[0], run("dpo", above, beta=0.3)[0])


def test_dpop_hand_value_when_chosen_drops():
    # chosen: -12 vs ref -11 (log-ratio -1, penalty 1); rejected -14 vs -11 (log-ratio -3): h = 2
    inputs = PairInputs.of([-12.0], [-14.0], [-11.0], [-11.0])
    losses, m = run("dpop", inputs, beta=0.5, lam=1.0)
    # sp(0.5 * (2 - 1*1)) = sp(0.5) = 0.474077 (DPO would give sp(1) = 0.313262)
    assert losses.item() == pytest.approx(SP_HALF, abs=1e-6)
    assert m["dpop/penalty"].item() == pytest.approx(1.0)
    assert run("dpo", inputs, beta=0.5)[0].item() == pytest.approx(SP_ONE, abs=1e-6)


# --- R-DPO --------------------------------------------------------------------------------------


def test_r_dpo_limits_equal_dpo():
    inputs = random_pairs(labels=[1.0, 0.3, 1.0, 0.5, 0.0])
    dpo_losses, _ = run("dpo", inputs, beta=0.2)
    assert torch.allclose(run("r_dpo", inputs, beta=0.2, alpha=0.0)[0], dpo_losses)
    same = PairInputs(inputs.chosen, SeqStats.of(inputs.rejected.logps, inputs.rejected.ref_logps,
                                                 inputs.chosen.lengths), inputs.labels)
    assert torch.allclose(run("r_dpo", same, beta=0.2, alpha=0.05)[0], dpo_losses)


def test_r_dpo_hand_values_length_sign():
    longer = basic_pair(chosen_lengths=[30.0], rejected_lengths=[10.0])
    # beta h = 1, alpha (|y_c| - |y_r|) = 0.05 * 20 = 1: sp(2) = 0.126928
    assert run("r_dpo", longer, beta=0.5, alpha=0.05)[0].item() == pytest.approx(SP_TWO, abs=1e-6)
    shorter = basic_pair(chosen_lengths=[10.0], rejected_lengths=[30.0])
    # 1 - 1 = 0: log 2. A shorter chosen completion must earn its preference through h.
    assert run("r_dpo", shorter, beta=0.5, alpha=0.05)[0].item() == pytest.approx(LOG2, abs=1e-6)


# --- GPO ----------------------------------------------------------------------------------------


def test_gpo_logistic_is_dpo():
    inputs = random_pairs(labels=[1.0, 0.2, 0.5, 1.0, 0.9])
    assert torch.allclose(run("gpo", inputs, beta=0.3)[0], run("dpo", inputs, beta=0.3)[0], atol=1e-6)


@pytest.mark.parametrize("kind, at_one, at_half", [
    ("logistic", SP_ONE, SP_HALF),
    ("hinge", 0.0, 0.5),                         # max(0, 1-1) = 0; max(0, 1-0.5) = 0.5
    ("squared", 0.0, 0.25),                      # (1-1)^2 = 0; (0.5-1)^2 = 0.25
    ("exponential", 0.367879, 0.606531),         # e^-1; e^-0.5
    ("truncated_quadratic", 0.0, 0.25),          # max(0, 0)^2; max(0, 0.5)^2
    ("savage", 0.072329, 0.142537),              # sigma(-1)^2 = 0.268941^2; sigma(-0.5)^2 = 0.377541^2
])
def test_gpo_hand_values(kind, at_one, at_half):
    inputs = PairInputs.of([-10.0, -10.0], [-12.0, -11.0], [-11.0, -11.0], [-11.0, -11.0])
    # h = 2 and h = 1; beta = 0.5 gives x = beta h = 1 and 0.5
    losses, _ = run("gpo", inputs, beta=0.5, kind=kind)
    assert losses.tolist() == pytest.approx([at_one, at_half], abs=1e-6)


def test_gpo_squared_is_scaled_ipo():
    inputs = random_pairs()
    tau = 0.25
    # (2 tau h - 1)^2 = 4 tau^2 (h - 1/(2 tau))^2
    squared, _ = run("gpo", inputs, beta=2 * tau, kind="squared")
    ipo_losses, _ = run("ipo", inputs, beta=tau)
    assert torch.allclose(squared, 4 * tau ** 2 * ipo_losses, rtol=1e-5)


# --- beta-DPO -----------------------------------------------------------------------------------


def margins_batch(margins, labels=None):
    """Pairs whose log-ratio margin h equals ``margins`` (rejected and both refs at -10)."""
    m = torch.as_tensor(margins, dtype=torch.float32)
    ten = torch.full_like(m, -10.0)
    return PairInputs.of(ten + m, ten, ten, ten, labels=labels)


def test_beta_dpo_beta_follows_the_batch_margin():
    spec = get_loss("beta_dpo")
    obj = spec.build(spec.parse({"beta": 0.1, "alpha": 0.5, "momentum": 0.9, "keep_fraction": 1.0}))
    losses, m = obj(margins_batch([1.0, 2.0, 3.0]))
    # first batch initialises M0 = mean = 2, sigma = std = sqrt((1 + 0 + 1)/2) = 1
    # beta = 0.1 * (1 + 0.5 * (2 - 2)) = 0.1: losses sp(0.1), sp(0.2), sp(0.3)
    assert m["beta_dpo/beta"].tolist() == pytest.approx([0.1] * 3)
    assert m["beta_dpo/margin_mean"][0].item() == pytest.approx(2.0)
    assert m["beta_dpo/margin_std"][0].item() == pytest.approx(1.0)
    assert losses.tolist() == pytest.approx([0.644397, 0.598139, 0.554355], abs=1e-6)
    losses, m = obj(margins_batch([4.0, 6.0, 8.0]))
    # batch mean 6, std 2: M0 = 0.9*2 + 0.1*6 = 2.4, sigma = 0.9*1 + 0.1*2 = 1.1
    # beta = 0.1 * (1 + 0.5 * (6 - 2.4)) = 0.1 * 2.8 = 0.28
    assert m["beta_dpo/margin_mean"][0].item() == pytest.approx(2.4)
    assert m["beta_dpo/margin_std"][0].item() == pytest.approx(1.1)
    assert m["beta_dpo/beta"][0].item() == pytest.approx(0.28)
    # sp(0.28*4) = sp(1.12) = 0.282378; sp(1.68) = 0.170902; sp(2.24) = 0.101164
    assert losses.tolist() == pytest.approx([0.282378, 0.170902, 0.101164], abs=1e-6)
    assert m["rewards/chosen"].tolist() == pytest.approx([0.4, 0.6, 0.8])  # rewards at beta_0


def test_beta_dpo_beta_is_clamped_positive():
    spec = get_loss("beta_dpo")
    obj = spec.build(spec.parse({"beta": 0.1, "alpha": 1.0, "momentum": 0.9, "keep_fraction": 1.0}))
    obj(margins_batch([10.0, 12.0]))  # M0 = 11
    _, m = obj(margins_batch([-20.0, -20.0]))
    # M0 = 0.9*11 + 0.1*(-20) = 7.9; 0.1 * (1 + (-20 - 7.9)) < 0 -> clamp at 0.01 * 0.1 = 0.001
    assert m["beta_dpo/beta"][0].item() == pytest.approx(0.001)


def test_beta_dpo_filter_keeps_fraction_and_drops_outliers():
    spec = get_loss("beta_dpo")
    params = spec.parse({"beta": 0.1, "alpha": 0.0, "keep_fraction": 0.8, "seed": 3})
    obj = spec.build(params)
    losses, m = obj(margins_batch(torch.linspace(-2, 2, 10)))
    kept = m["beta_dpo/kept"]
    assert kept.sum().item() == 8  # floor(0.8 * 10)
    assert (losses[kept == 0] == 0).all()
    # alpha = 0 keeps beta = 0.1; kept losses are scaled by B/k = 10/8 so the batch mean is
    # the mean over kept pairs
    dpo_losses, _ = run("dpo", margins_batch(torch.linspace(-2, 2, 10)), beta=0.1)
    assert torch.allclose(losses[kept == 1], dpo_losses[kept == 1] * 10 / 8)
    assert losses.mean().item() == pytest.approx(dpo_losses[kept == 1].mean().item(), rel=1e-6)

    obj(margins_batch([-1.0, 1.0]))
    _, m = obj(margins_batch([0.0, 0.0, 0.0, 0.0, 100.0]))
    # batches so far: mean 0 / std 1.3456 (linspace), mean 0 / std 1.4142, mean 20 / std 44.72:
    # M0 = 0.9*0 + 0.1*20 = 2, sigma = 0.9*(0.9*1.3456 + 0.1*1.4142) + 0.1*44.72 = 5.69;
    # the outlier sits 98/5.69 = 17 sigma out (weight e^-148) against e^-0.06 = 0.94 for the
    # others, and k = floor(0.8*5) = 4
    assert m["beta_dpo/kept"].tolist() == [1.0, 1.0, 1.0, 1.0, 0.0]


def test_beta_dpo_is_reproducible_and_resumable():
    spec = get_loss("beta_dpo")
    params = spec.parse({"keep_fraction": 0.5, "seed": 7})
    batches = [margins_batch(torch.randn(8, generator=torch.Generator().manual_seed(i)))
               for i in range(4)]
    straight = spec.build(params)
    losses = [straight(x)[0] for x in batches]
    again = spec.build(params)
    assert all(torch.equal(again(x)[0], y) for x, y in zip(batches, losses))
    other = spec.build(spec.parse({"keep_fraction": 0.5, "seed": 8}))
    assert not all(torch.equal(other(x)[0], y) for x, y in zip(batches, losses))
    # stop after two batches, carry the state over, go on: same as the uninterrupted run
    first = spec.build(params)
    first(batches[0]), first(batches[1])
    resumed = spec.build(params)
    resumed.load_state_dict(first.state_dict())
    assert torch.equal(resumed(batches[2])[0], losses[2])
    assert torch.equal(resumed(batches[3])[0], losses[3])


# --- SimPO --------------------------------------------------------------------------------------


def test_simpo_equal_mean_logps_gamma_zero_is_log2():
    inputs = PairInputs.of([-6.0], [-8.0], chosen_lengths=[3.0], rejected_lengths=[4.0])
    # both mean log-probs are -2: margin 0, gamma 0: sp(0) = log 2
    assert run("simpo", inputs, beta=2.0, gamma=0.0)[0].item() == pytest.approx(LOG2)


def test_simpo_hand_values_and_gradient():
    inputs = double_pair([-6.0], [-10.0], lengths=(3.0, 4.0))
    losses, m = run("simpo", inputs, beta=2.0, gamma=0.5)
    # rewards 2*(-6/3) = -4, 2*(-10/4) = -5; margin 1; minus gamma: sp(0.5) = 0.474077
    assert losses.item() == pytest.approx(SP_HALF, abs=1e-6)
    assert m["rewards/margin"].item() == pytest.approx(1.0)
    losses.sum().backward()
    # d l / d logp_c = -sigma(-0.5) * beta/|y_c| = -0.377541 * 2/3 = -0.251694
    # d l / d logp_r = +0.377541 * 2/4 = 0.188770
    assert inputs.chosen.logps.grad.item() == pytest.approx(-0.251694, abs=1e-6)
    assert inputs.rejected.logps.grad.item() == pytest.approx(0.188770, abs=1e-6)


# --- CPO ----------------------------------------------------------------------------------------


def test_cpo_hand_values():
    inputs = PairInputs.of([-10.0], [-15.0], chosen_lengths=[5.0], rejected_lengths=[5.0])
    losses, m = run("cpo", inputs, beta=0.1, nll_weight=1.0)
    # prefer: sp(0.1 * (-10 + 15)) = sp(0.5) = 0.474077; NLL: 10/5 = 2 -> 2.474077
    assert losses.item() == pytest.approx(SP_HALF + 2.0, abs=1e-6)
    assert m["cpo/prefer"].item() == pytest.approx(SP_HALF, abs=1e-6)
    assert run("cpo", inputs, beta=0.1, nll_weight=0.0)[0].item() == pytest.approx(SP_HALF, abs=1e-6)


def test_cpo_soft_label_moves_nll_to_the_preferred_side():
    inputs = PairInputs.of([-10.0], [-15.0], chosen_lengths=[5.0], rejected_lengths=[5.0],
                           labels=[0.0])
    # y = 0: prefer sp(-0.5) = 0.974077; NLL on rejected 15/5 = 3 -> 3.974077
    assert run("cpo", inputs, beta=0.1)[0].item() == pytest.approx(0.974077 + 3.0, abs=1e-6)


# --- ORPO ---------------------------------------------------------------------------------------


def test_orpo_hand_values_and_gradient():
    # per-token P(y_c) = 0.5 (odds 1, log odds 0), P(y_r) = 0.2 (odds 0.25, log odds -1.386294)
    inputs = double_pair([2 * math.log(0.5)], [2 * math.log(0.2)], lengths=(2.0, 2.0))
    losses, m = run("orpo", inputs, lam=0.1)
    # log odds ratio 1.386294 = log 4: sp(log 4) = log(1 + 1/4) = 0.223144
    # L = -log 0.5 + 0.1 * 0.223144 = 0.693147 + 0.022314 = 0.715461
    assert losses.item() == pytest.approx(0.715461, abs=1e-6)
    assert m["orpo/log_odds_ratio"].item() == pytest.approx(math.log(4.0))
    losses.sum().backward()
    # d log odds / d x = 1 / (1 - e^x); sigma(-log 4) = 1/5
    # d L / d x_c = -1 - 0.1 * 0.2 / (1 - 0.5) = -1.04; per summed logp (length 2): -0.52
    # d L / d x_r = 0.1 * 0.2 / (1 - 0.2) = 0.025; per summed logp: 0.0125
    assert inputs.chosen.logps.grad.item() == pytest.approx(-0.52)
    assert inputs.rejected.logps.grad.item() == pytest.approx(0.0125)


def test_orpo_stable_near_certain_sequences():
    # float32, naive log1p(-exp(-1e-8)) rounds exp to 1 and gives -inf
    assert torch.isinf(torch.log1p(-torch.exp(torch.tensor(-1e-8))))
    # -1e-4 - log(-expm1(-1e-4)) = -1e-4 - log(9.9995e-5) = 9.210290
    assert log_odds(torch.tensor([-1e-4])).item() == pytest.approx(9.210290, abs=1e-4)
    # clamped at -1e-6: -1e-6 - log(1e-6 - 5e-13) = 13.815510
    assert log_odds(torch.tensor([-1e-8, 0.0])).tolist() == pytest.approx([13.815510] * 2, abs=1e-3)
    logps = torch.tensor([-1e-8, 0.0, -3e-5], requires_grad=True)
    inputs = PairInputs(SeqStats(logps, torch.ones(3)), SeqStats(torch.tensor([-1e-7, -2.0, -1e-5]),
                                                                 torch.ones(3)), torch.ones(3))
    losses, _ = run("orpo", inputs, lam=0.1)
    losses.sum().backward()
    assert torch.isfinite(losses).all() and torch.isfinite(logps.grad).all()


# --- gradient checks and reference-freeness -----------------------------------------------------


# Gradients derived by hand on two pairs: policy log-probs c = (-3, -10), r = (-6, -7.5); reference
# rc = (-4, -9), rr = (-5, -8); lengths |c| = (3, 5), |r| = (4, 6); labels y = (1, 0.7).
# Pair 0: h = (c - rc) - (r - rr) = 1 - (-1) = 2.  Pair 1: h = -1 - 0.5 = -1.5.
#
# DPO (beta 0.3): l = -[y log s(bh) + (1-y) log s(-bh)], dl/dc = b (s(bh) - y) = -dl/dr.
#   pair 0: 0.3 (s(0.6) - 1) = 0.3 (0.645656 - 1) = -0.106303
#   pair 1: 0.3 (s(-0.45) - 0.7) = 0.3 (0.389361 - 0.7) = -0.093192
# IPO (beta 0.3, t = 1/(2b) = 5/3): l = y (h - t)^2 + (1-y)(-h - t)^2, dl/dh = 2h + 2t(1 - 2y).
#   pair 0: 4 - 10/3 = 0.666667;  pair 1: -3 + (10/3)(-0.4) = -4.333333
# SimPO (beta 2, gamma 0.5): m = b (c/|c| - r/|r|); l = y sp(-(m - g)) + (1-y) sp(m + g),
#   dl/dm = -y s(g - m) + (1-y) s(m + g); dl/dc = (b/|c|) dl/dm, dl/dr = -(b/|r|) dl/dm.
#   pair 0: m = 1, dl/dm = -s(-0.5) = -0.377541 -> dc = -0.251694, dr = 0.188771
#   pair 1: m = -1.5, dl/dm = -0.7 s(2) + 0.3 s(-1) = -0.535876 -> dc = -0.214350, dr = 0.178625
@pytest.mark.parametrize("name, raw, refs, grad_c, grad_r", [
    ("dpo", {"beta": 0.3}, True, [-0.106303, -0.093192], [0.106303, 0.093192]),
    ("ipo", {"beta": 0.3}, True, [0.666667, -4.333333], [-0.666667, 4.333333]),
    ("simpo", {"beta": 2.0, "gamma": 0.5}, False, [-0.251694, -0.214350], [0.188771, 0.178625]),
])
def test_gradients_match_hand_derivation(name, raw, refs, grad_c, grad_r):
    spec = get_loss(name)
    fn = spec.build(spec.parse(raw))
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    c = t([-3.0, -10.0]).requires_grad_()
    r = t([-6.0, -7.5]).requires_grad_()
    inputs = PairInputs(SeqStats(c, t([3.0, 5.0]), t([-4.0, -9.0]) if refs else None),
                        SeqStats(r, t([4.0, 6.0]), t([-5.0, -8.0]) if refs else None), t([1.0, 0.7]))
    fn(inputs)[0].sum().backward()
    assert c.grad.tolist() == pytest.approx(grad_c, abs=1e-6)
    assert r.grad.tolist() == pytest.approx(grad_r, abs=1e-6)


@pytest.mark.parametrize("name", REFERENCE_FREE)
def test_reference_free_losses_never_read_ref_logps(name):
    inputs = random_pairs(labels=[1.0, 0.3, 1.0, 0.0, 0.5])
    poisoned = PairInputs(
        SeqStats(inputs.chosen.logps, inputs.chosen.lengths, torch.full((5,), float("nan"))),
        SeqStats(inputs.rejected.logps, inputs.rejected.lengths, torch.full((5,), float("nan"))),
        inputs.labels)
    bare = PairInputs(SeqStats(inputs.chosen.logps, inputs.chosen.lengths),
                      SeqStats(inputs.rejected.logps, inputs.rejected.lengths), inputs.labels)
    with_nan, metrics = run(name, poisoned)
    without, _ = run(name, bare)
    assert torch.equal(with_nan, without) and torch.isfinite(without).all()
    assert all(torch.isfinite(v).all() for v in metrics.values())
