"""TDPO and the sequential KL against numbers derived by hand (comments show the arithmetic)."""

import math

import pytest
import torch
import torch.nn.functional as F

import alignlab.losses.token_level  # noqa: F401  (registers the objectives)
from alignlab.losses.inputs import PairInputs, SeqStats
from alignlab.losses.registry import LOSSES
from alignlab.losses.token_level import TDPOParams, sequential_kl, tdpo

LOG2 = math.log(2.0)


# ----------------------------------------------------------------------------------- sequential KL

def test_sequential_kl_hand_value_and_direction():
    # t=0: ref (1/2, 1/2), policy (1/4, 3/4):
    #   KL(ref || pi) = 0.5 log(0.5/0.25) + 0.5 log(0.5/0.75) = 0.346574 - 0.202733 = 0.143841
    #   (the other direction would be 0.25 log(0.5) + 0.75 log(1.5) = 0.130812)
    # t=1: ref (1, 0), policy (1/2, 1/2): 1 * log(1 / 0.5) = 0.693147; the zero-prob term is 0
    # t=2: masked out. Total 0.836988
    ref = torch.log(torch.tensor([[[0.5, 0.5], [1.0, 0.0], [0.1, 0.9]]]))
    pol = torch.log(torch.tensor([[[0.25, 0.75], [0.5, 0.5], [0.9, 0.1]]])).requires_grad_(True)
    kl = sequential_kl(ref, pol, torch.tensor([[1, 1, 0]]))
    assert kl.tolist() == pytest.approx([0.836988], abs=1e-6)
    kl.sum().backward()
    # d/d log pi(v) = -pi_ref(v): finite even where pi_ref = 0, zero on the masked position
    assert pol.grad.flatten().tolist() == pytest.approx([-0.5, -0.5, -1.0, 0.0, 0.0, 0.0])


def test_sequential_kl_is_zero_for_identical_distributions():
    logits = torch.randn(2, 4, 7, generator=torch.Generator().manual_seed(0))
    lp = F.log_softmax(logits, -1)
    assert torch.allclose(sequential_kl(lp, lp, torch.ones(2, 4)), torch.zeros(2), atol=1e-6)


def test_sequential_kl_shape_errors():
    with pytest.raises(ValueError, match="one shape"):
        sequential_kl(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4), torch.ones(1, 2))
    with pytest.raises(ValueError, match="mask"):
        sequential_kl(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), torch.ones(1, 3))


# -------------------------------------------------------------------------------------------- TDPO

def pair(chosen, rejected, ref_chosen, ref_rejected, kl_chosen, kl_rejected, labels=None):
    def stats(logps, ref, kl):
        logps = torch.as_tensor(logps, dtype=torch.float32)
        return SeqStats(logps, torch.ones_like(logps), ref_logps=torch.as_tensor(ref),
                        token_kl=torch.as_tensor(kl, dtype=torch.float32))
    c, r = stats(chosen, ref_chosen, kl_chosen), stats(rejected, ref_rejected, kl_rejected)
    y = torch.ones_like(c.logps) if labels is None else torch.as_tensor(labels)
    return PairInputs(c, r, y)


def test_tdpo_hand_values_for_both_variants():
    # beta 0.5: h_c = -1 + 2 = 1, h_r = -3 + 2 = -1 -> u = 0.5 * 2 = 1
    # delta = 0.5 * 2.4 - 0.5 * 0.4 = 1.0
    # tdpo2 (alpha 0.5): -log sigma(1 - 0.5) = log(1 + e^-0.5) = 0.474077
    # tdpo1 (alpha 1):   -log sigma(1 - 1) = log 2
    inputs = pair([-1.0], [-3.0], [-2.0], [-2.0], [0.4], [2.4])
    two, m = tdpo(inputs, TDPOParams(beta=0.5))
    one, _ = tdpo(inputs, TDPOParams(beta=0.5, variant="tdpo1"))
    assert two.item() == pytest.approx(0.474077, abs=1e-6)
    assert one.item() == pytest.approx(LOG2, abs=1e-6)
    assert m["rewards/margin"].item() == pytest.approx(1.0)
    assert (m["kl/chosen"].item(), m["kl/rejected"].item()) == pytest.approx((0.4, 2.4))


def test_tdpo_alpha_zero_is_dpo():
    g = torch.Generator().manual_seed(1)
    c, r, rc, rr = (torch.randn(5, generator=g) for _ in range(4))
    kl_c, kl_r = torch.rand(5, generator=g), torch.rand(5, generator=g)
    inputs = pair(c, r, rc, rr, kl_c, kl_r)
    for variant in ("tdpo1", "tdpo2"):
        losses, _ = tdpo(inputs, TDPOParams(beta=0.3, alpha=0.0, variant=variant))
        dpo = -F.logsigmoid(0.3 * ((c - rc) - (r - rr)))
        assert torch.allclose(losses, dpo, atol=1e-6)


def test_tdpo2_stops_the_gradient_through_the_chosen_kl():
    # x = u - alpha * beta * (KL_r - KL_c) = 0.5; dl/dx = -sigma(-0.5) = -0.377541
    # dl/dKL_r = 0.377541 * alpha * beta = 0.377541 * 0.25 = 0.094385; KL_c: stop-gradient
    inputs = pair([-1.0], [-3.0], [-2.0], [-2.0], [0.4], [2.4])
    inputs.chosen.token_kl.requires_grad_(True)
    inputs.rejected.token_kl.requires_grad_(True)
    losses, _ = tdpo(inputs, TDPOParams(beta=0.5))
    losses.sum().backward()
    assert inputs.chosen.token_kl.grad is None or inputs.chosen.token_kl.grad.abs().sum() == 0
    assert inputs.rejected.token_kl.grad.item() == pytest.approx(0.094385, abs=1e-6)


def test_tdpo1_gradient_flows_through_both_kls():
    # tdpo1, alpha 1: x = 0, dl/dx = -1/2; dl/dKL_c = -1/2 * beta = -0.25, dl/dKL_r = +0.25
    inputs = pair([-1.0], [-3.0], [-2.0], [-2.0], [0.4], [2.4])
    inputs.chosen.token_kl.requires_grad_(True)
    inputs.rejected.token_kl.requires_grad_(True)
    losses, _ = tdpo(inputs, TDPOParams(beta=0.5, variant="tdpo1"))
    losses.sum().backward()
    assert inputs.chosen.token_kl.grad.item() == pytest.approx(-0.25)
    assert inputs.rejected.token_kl.grad.item() == pytest.approx(0.25)


def test_tdpo_label_zero_swaps_the_roles():
    a = pair([-1.0], [-3.0], [-2.0], [-2.5], [0.4], [2.4], labels=[0.0])
    b = pair([-3.0], [-1.0], [-2.5], [-2.0], [2.4], [0.4])
    for variant in ("tdpo1", "tdpo2"):
        la, _ = tdpo(a, TDPOParams(variant=variant))
        lb, _ = tdpo(b, TDPOParams(variant=variant))
        assert la.item() == pytest.approx(lb.item(), abs=1e-6)


def test_tdpo_needs_token_kl_and_registration():
    inputs = PairInputs.of([-1.0], [-2.0], [-1.0], [-2.0])
    with pytest.raises(ValueError, match="token_kl"):
        tdpo(inputs, TDPOParams())
    spec = LOSSES["tdpo"]
    assert (spec.data_kind, spec.reference, spec.needs) == ("pair", "online", frozenset({"token_kl"}))
    assert spec.parse({}).kl_weight == 0.5
    assert spec.parse({"variant": "tdpo1"}).kl_weight == 1.0
    with pytest.raises(ValueError, match="alpha"):
        spec.parse({"alpha": -0.5})
    with pytest.raises(ValueError, match="variant"):
        spec.parse({"variant": "tdpo3"})
