"""KL estimators and KL controllers against numbers derived by hand (comments show the arithmetic)."""

import math

import pytest
import torch

from alignlab.rl.kl import AdaptiveKLController, FixedKLController, kl_estimate

# log r = ref_logp - logp = +0.5 and -0.5 (all values exact in binary floating point)
LOGP = torch.tensor([-1.5, -1.0])
REF = torch.tensor([-1.0, -1.5])   # log r = [+0.5, -0.5]


# ----------------------------------------------------------------------------------- estimators

def test_k1_is_logp_minus_ref():
    # k1 = -log r = [-0.5, +0.5]: can be negative
    assert kl_estimate(LOGP, REF, "k1").tolist() == pytest.approx([-0.5, 0.5], abs=1e-7)


def test_k2_is_half_squared_log_ratio():
    # k2 = (±0.5)^2 / 2 = 0.125 for both signs
    assert kl_estimate(LOGP, REF, "k2").tolist() == pytest.approx([0.125, 0.125], abs=1e-7)


def test_k3_hand_values():
    # log r = +0.5: r = e^0.5 = 1.648721; k3 = 0.648721 - 0.5 = 0.148721
    # log r = -0.5: r = e^-0.5 = 0.606531; k3 = -0.393469 + 0.5 = 0.106531
    assert kl_estimate(LOGP, REF, "k3").tolist() == pytest.approx([0.148721, 0.106531], abs=1e-6)


def test_k2_k3_non_negative_and_zero_at_equal_policies():
    torch.manual_seed(0)
    logp = torch.randn(1000) * 3
    ref = torch.randn(1000) * 3
    assert (kl_estimate(logp, ref, "k3") >= 0).all()
    assert (kl_estimate(logp, ref, "k2") >= 0).all()
    assert (kl_estimate(logp, ref, "k1") < 0).any()  # k1 is not
    for kind in ("k1", "k2", "k3"):
        assert kl_estimate(logp, logp, kind).abs().max().item() == 0.0


def test_k1_k3_unbiased_k2_biased_on_exact_expectation():
    # pi = (0.25, 0.75), pi_ref = (0.5, 0.5); KL(pi || ref) = 0.25 log 0.5 + 0.75 log 1.5
    #   = -0.173287 + 0.304099 = 0.130812
    # Exact expectation under pi (weights, not sampling), per token value:
    #   E[k1] = KL = 0.130812
    #   E[k3] = E[r - 1] + KL = (0.25*2 + 0.75*(2/3) - 1) + KL = 0 + 0.130812
    #   E[k2] = 0.25 * (log 2)^2 / 2 + 0.75 * (log(2/3))^2 / 2 = 0.060057 + 0.061651 = 0.121707 (biased)
    pi = torch.tensor([0.25, 0.75])
    ref = torch.tensor([0.5, 0.5])
    expect = {kind: (pi * kl_estimate(pi.log(), ref.log(), kind)).sum().item() for kind in ("k1", "k2", "k3")}
    assert expect["k1"] == pytest.approx(0.130812, abs=1e-6)
    assert expect["k3"] == pytest.approx(0.130812, abs=1e-6)
    assert expect["k2"] == pytest.approx(0.121707, abs=1e-6)


def test_kl_estimate_errors():
    with pytest.raises(ValueError, match="kind"):
        kl_estimate(LOGP, REF, "k4")
    with pytest.raises(ValueError, match="shape"):
        kl_estimate(LOGP, REF[:1], "k1")


# ----------------------------------------------------------------------------------- controllers

def test_fixed_controller_never_moves_and_round_trips():
    c = FixedKLController(0.05)
    assert c.update(100.0, 256) == 0.05
    assert c.value == 0.05
    d = FixedKLController(1.0)
    d.load_state_dict(c.state_dict())
    assert d.value == 0.05
    with pytest.raises(ValueError, match="coef"):
        FixedKLController(-0.1)


def test_adaptive_controller_clipped_increase():
    # target 6, KL 9: e = clip(9/6 - 1 = 0.5) = 0.2; n=256, horizon 10000:
    #   mult = 1 + 0.2 * 256 / 10000 = 1.00512; coef 0.1 -> 0.100512
    c = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    assert c.update(9.0, 256) == pytest.approx(0.100512, rel=1e-12)
    assert c.value == pytest.approx(0.100512, rel=1e-12)


def test_adaptive_controller_unclipped_and_negative_error():
    # target 6, KL 5.4: e = 5.4/6 - 1 = -0.1 (inside the clip); n=1000, horizon 10000:
    #   mult = 1 - 0.1 * 0.1 = 0.99; coef 0.2 -> 0.198
    c = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    assert c.update(5.4, 1000) == pytest.approx(0.198, rel=1e-12)
    # then KL 0: e = clip(-1) = -0.2; mult = 1 - 0.2 * 0.1 = 0.98; 0.198 -> 0.19404
    assert c.update(0.0, 1000) == pytest.approx(0.19404, rel=1e-12)
    # on target: e = 0, no change
    assert c.update(6.0, 1000) == pytest.approx(0.19404, rel=1e-12)


def test_adaptive_controller_state_round_trip():
    c = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    c.update(9.0, 256)
    state = c.state_dict()
    d = AdaptiveKLController(1.0, target=1.0, horizon=1.0)
    d.load_state_dict(state)
    assert (d.value, d.target, d.horizon) == (c.value, 6.0, 10000.0)
    # both continue identically: 0.100512 * 1.00512 = 0.101026621...
    assert d.update(9.0, 256) == c.update(9.0, 256) == pytest.approx(0.100512 * 1.00512, rel=1e-12)
    with pytest.raises(ValueError, match="adaptive"):
        FixedKLController(0.1).load_state_dict(state)


def test_adaptive_controller_validation():
    with pytest.raises(ValueError, match="target"):
        AdaptiveKLController(0.1, target=0.0, horizon=100)
    with pytest.raises(ValueError, match="horizon"):
        AdaptiveKLController(0.1, target=6.0, horizon=-1)
    c = AdaptiveKLController(0.1, target=6.0, horizon=100)
    with pytest.raises(ValueError, match="n_steps"):
        c.update(1.0, -3)
    with pytest.raises(ValueError, match="current_kl"):
        c.update(math.nan, 3)
