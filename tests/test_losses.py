"""Loss functions against numbers derived by hand (comments show the arithmetic)."""

import math

import pytest
import torch

from alignlab.losses.reward import bradley_terry_loss, calibration_error
from alignlab.losses.sft import nll_sum

LOG2 = math.log(2.0)


def test_nll_sum_counts_only_target_tokens():
    logps = torch.tensor([[-1.0, -2.0, -0.5], [-0.1, -3.0, -4.0]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 0]])
    total, n = nll_sum(logps, mask)
    # targets: 2 + 0.5 + 0.1 + 3 = 5.6 over 4 tokens
    assert total.item() == pytest.approx(5.6)
    assert n.item() == 4


def test_nll_sum_gradient_is_minus_mask():
    logps = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    total, _ = nll_sum(logps, torch.tensor([[0, 1, 1]]))
    total.backward()
    assert logps.grad.tolist() == [[0.0, -1.0, -1.0]]


def test_nll_sum_shape_mismatch_is_clear():
    with pytest.raises(ValueError, match="same shape"):
        nll_sum(torch.zeros(2, 3), torch.ones(2, 4))


def test_bradley_terry_equal_rewards_is_log2():
    # sigma(0) = 1/2, so -log sigma(0) = log 2 whatever the label
    losses, m = bradley_terry_loss(torch.tensor([0.3, -1.0]), torch.tensor([0.3, -1.0]),
                                   torch.tensor([1.0, 0.2]))
    assert losses.tolist() == pytest.approx([LOG2, LOG2])
    assert m["accuracy"].tolist() == [0.5, 0.5]  # ties count half


def test_bradley_terry_hand_values_and_gradient():
    rc = torch.tensor([2.0, 2.0], requires_grad=True)
    rr = torch.tensor([0.0, 0.0], requires_grad=True)
    losses, m = bradley_terry_loss(rc, rr, torch.tensor([1.0, 0.25]))
    # y=1: log(1+e^-2) = 0.126928
    # y=0.25: 0.25*log(1+e^-2) + 0.75*log(1+e^2) = 0.25*0.126928 + 0.75*2.126928 = 1.626928
    assert losses.tolist() == pytest.approx([0.126928, 1.626928], abs=1e-6)
    losses.sum().backward()
    # d l / d r_c = sigma(m) - y; sigma(2) = 0.880797
    assert rc.grad.tolist() == pytest.approx([0.880797 - 1.0, 0.880797 - 0.25], abs=1e-6)
    assert rr.grad.tolist() == pytest.approx([1.0 - 0.880797, 0.25 - 0.880797], abs=1e-6)
    assert m["margin"].tolist() == [2.0, 2.0]
    assert m["accuracy"].tolist() == [1.0, 0.0]  # y=0.25 says rejected is better


def test_bradley_terry_accuracy_sides():
    _, m = bradley_terry_loss(torch.tensor([2.0, -1.0, 0.0, -1.0]), torch.zeros(4),
                              torch.tensor([1.0, 1.0, 1.0, 0.2]))
    assert m["accuracy"].tolist() == [1.0, 0.0, 0.5, 1.0]


def test_soft_label_half_is_symmetric():
    margin = torch.tensor([1.7, -0.4])
    half = torch.full((2,), 0.5)
    a, _ = bradley_terry_loss(margin, torch.zeros(2), half)
    b, _ = bradley_terry_loss(-margin, torch.zeros(2), half)
    assert torch.allclose(a, b)
    # 0.5*log(1+e^-1.7) + 0.5*log(1+e^1.7) = 0.5*(0.167786 + 1.867786) = 1.017786
    assert a[0].item() == pytest.approx(1.017786, abs=1e-6)


def test_labels_out_of_range_rejected():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bradley_terry_loss(torch.zeros(1), torch.zeros(1), torch.tensor([1.5]))


def test_calibration_error_hand_value():
    probs = torch.tensor([0.05, 0.15, 0.92, 0.97])
    labels = torch.tensor([0.0, 0.0, 1.0, 1.0])
    # bins: [0,.1): |.05-0| w 1/4; [.1,.2): |.15-0| w 1/4; [.9,1]: |.945-1| w 2/4
    # ECE = .0125 + .0375 + .0275 = .0775
    assert calibration_error(probs, labels) == pytest.approx(0.0775)


def test_calibration_error_zero_when_calibrated():
    probs = torch.full((10,), 0.7)
    labels = torch.tensor([1.0] * 7 + [0.0] * 3)
    assert calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-6)
    # soft labels: the empirical preference frequency is the label mean
    assert calibration_error(torch.full((4,), 0.6), torch.full((4,), 0.6)) == pytest.approx(0.0, abs=1e-6)
    assert calibration_error(torch.ones(1), torch.zeros(1)) == pytest.approx(1.0)  # p=1 in last bin
