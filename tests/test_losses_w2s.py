"""Weak-to-strong transfer losses against hand-derived numbers."""

import math

import pytest
import torch

from alignlab.losses.w2s import (
    aux_confidence_loss,
    balanced_hardening,
    confidence_window_loss,
    linear_warmup,
    product_loss,
    soft_label_ce,
    transfer_loss,
)


def _binary_logits(p1):
    """Two-class logits whose softmax gives P(class 1) = p1."""
    return torch.tensor([[0.0, math.log(p / (1 - p))] for p in p1])


def _weak(q1):
    return torch.tensor([[1 - q, q] for q in q1])


def test_soft_label_ce_by_hand():
    assert soft_label_ce(torch.zeros(1, 2), _weak([0.75])).item() == pytest.approx(math.log(2))
    # p = (0.75, 0.25), target class 0 -> -ln 0.75
    logits = torch.tensor([[math.log(3.0), 0.0]])
    assert soft_label_ce(logits, _weak([0.0])).item() == pytest.approx(0.2876820724517809)
    with pytest.raises(ValueError, match="probabilities"):
        soft_label_ce(logits, torch.tensor([[0.5, 0.6]]))


def test_linear_warmup_ramps_instead_of_jumping():
    assert linear_warmup(0.0, 0.2) == 0.0
    assert linear_warmup(0.1, 0.2) == pytest.approx(0.5)
    assert linear_warmup(0.05, 0.2) == pytest.approx(0.25)
    assert linear_warmup(0.3, 0.2) == 1.0
    assert linear_warmup(0.0, 0.0) == 1.0


def test_hardening_keeps_the_weak_labels_class_balance():
    probs = _binary_logits([0.1, 0.4, 0.6, 0.9]).softmax(-1)
    # weak labels: half positive -> threshold = median of P(1) = 0.5 -> the top two are class 1
    hard = balanced_hardening(probs, _weak([0.0, 1.0, 0.0, 1.0]))
    assert hard[:, 1].tolist() == [0.0, 0.0, 1.0, 1.0]
    # a quarter positive -> only the most confident one
    hard = balanced_hardening(probs, _weak([0.0, 1.0, 0.0, 0.0]))
    assert hard[:, 1].tolist() == [0.0, 0.0, 0.0, 1.0]
    three = torch.tensor([[0.2, 0.5, 0.3]])
    assert balanced_hardening(three, three).tolist() == [[0.0, 1.0, 0.0]]


def test_aux_confidence_loss_by_hand():
    logits = _binary_logits([0.1, 0.4, 0.6, 0.9])
    weak = _weak([0.0, 1.0, 0.0, 1.0])
    # step 10 % of training, warm-up 20 %, alpha 0.5 -> weight 0.25; hardened [0, 0, 1, 1];
    # targets P(1) = 0.75 * weak + 0.25 * hard = [0, 0.75, 0.25, 1]
    losses = aux_confidence_loss(logits, weak, step_frac=0.1, alpha=0.5, warmup_frac=0.2)
    by_hand = [-math.log(0.9), -(0.75 * math.log(0.4) + 0.25 * math.log(0.6)),
               -(0.25 * math.log(0.6) + 0.75 * math.log(0.4)), -math.log(0.9)]
    assert losses.tolist() == pytest.approx(by_hand, abs=1e-6)
    assert losses.mean().item() == pytest.approx(0.4601424, abs=1e-6)
    # at the start of training the target is the weak labels alone
    assert aux_confidence_loss(logits, weak, 0.0).tolist() == \
        pytest.approx(soft_label_ce(logits, weak).tolist())


def test_aux_confidence_gradient_is_softmax_minus_the_mixed_target():
    logits = _binary_logits([0.3, 0.8]).requires_grad_()
    aux_confidence_loss(logits, _weak([1.0, 0.0]), 1.0, alpha=1.0).sum().backward()
    # after warm-up with alpha 1 the target is the hardened prediction alone: the weak labels'
    # share of class 1 is 0.5, the threshold the median 0.55, so targets [1, 0] and [0, 1]; the
    # gradient of softmax cross-entropy is softmax - target (the hardened targets are constants)
    assert logits.grad.tolist() == [pytest.approx([-0.3, 0.3]), pytest.approx([0.2, -0.2])]


def test_confidence_window_loss_by_hand():
    logits = _binary_logits([0.1, 0.45, 0.6, 0.9])
    weak = _weak([1.0, 0.0, 1.0, 0.0])
    # inside the window (|p - 0.5| < 0.15): examples 1 and 2 -> -ln 0.55, -ln 0.6
    losses = confidence_window_loss(logits, weak, radius=0.15)
    assert losses.tolist() == pytest.approx([0.0, -math.log(0.55), -math.log(0.6), 0.0], abs=1e-6)


def test_product_loss_by_hand():
    # weak (0.8, 0.2), student p = (0.25, 0.75): product (0.2, 0.15) -> target (4/7, 3/7);
    # loss = -(4/7) ln 0.25 - (3/7) ln 0.75
    logits = _binary_logits([0.75])
    expected = -(4 / 7) * math.log(0.25) - (3 / 7) * math.log(0.75)
    assert product_loss(logits, _weak([0.2])).item() == pytest.approx(expected)
    # the target is detached: the gradient is softmax(logits) - target = (0.25 - 4/7, 0.75 - 3/7)
    logits.requires_grad_(True)
    product_loss(logits, _weak([0.2])).sum().backward()
    assert logits.grad[0].tolist() == pytest.approx([0.25 - 4 / 7, 0.75 - 3 / 7])


def test_product_loss_falls_back_to_weak_labels_when_the_product_vanishes():
    # weak says class 1 for sure, the student class 0 for sure (p1 underflows to exactly 0)
    logits = torch.tensor([[0.0, -200.0]])
    loss = product_loss(logits, _weak([1.0]))
    assert loss.item() == pytest.approx(200.0, rel=1e-4)  # CE to the weak label (class 1)


def test_transfer_loss_dispatch_and_unknown_name():
    logits, weak = _binary_logits([0.6, 0.3]), _weak([0.9, 0.1])
    assert torch.allclose(transfer_loss("ce", logits, weak, 0.5), soft_label_ce(logits, weak))
    assert torch.allclose(transfer_loss("aux_conf", logits, weak, 0.1, alpha=0.5, warmup_frac=0.2),
                          aux_confidence_loss(logits, weak, 0.1, 0.5, 0.2))
    with pytest.raises(ValueError, match="unknown transfer loss"):
        transfer_loss("bogus", logits, weak, 0.0)
