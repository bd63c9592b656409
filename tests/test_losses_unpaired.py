"""KTO, NPO and CRINGE against numbers derived by hand (comments show the arithmetic)."""

import math

import pytest
import torch

import alignlab.losses.unpaired  # noqa: F401  (registers the objectives)
from alignlab.losses.inputs import BinaryInputs, SeqStats
from alignlab.losses.registry import LOSSES
from alignlab.losses.unpaired import (
    Cringe,
    CringeParams,
    KTOParams,
    NPOParams,
    kto,
    npo,
    positive_weights,
)

LOG2 = math.log(2.0)


# --------------------------------------------------------------------------------------------- KTO

def test_kto_hand_values():
    # KL pairs: ratios (0 - -1, -1 - -2) = (1, 1) -> z0 = 1
    # r = (2, 1, 0); beta = 0.5; lambda_D = 1, lambda_U = 2; sigma(0.5) = 0.622459
    # desirable r=2: 1 * (1 - sigma(0.5 * (2 - 1))) = 0.377541
    # desirable r=1=z0: 1 * (1 - sigma(0)) = 0.5
    # undesirable r=0: 2 * (1 - sigma(0.5 * (1 - 0))) = 0.755081
    inputs = BinaryInputs.of([2.0, 1.0, 0.0], [True, True, False], ref_logps=[0.0, 0.0, 0.0],
                             kl_logps=[0.0, -1.0], kl_ref_logps=[-1.0, -2.0])
    params = KTOParams(beta=0.5, desirable_weight=1.0, undesirable_weight=2.0)
    losses, m = kto(inputs, params)
    assert losses.tolist() == pytest.approx([0.377541, 0.5, 0.755081], abs=1e-6)
    assert m["kl"].tolist() == [1.0, 1.0, 1.0]
    assert m["rewards"].tolist() == [1.0, 0.5, 0.0]
    assert m["desirable"].tolist() == [1.0, 1.0, 0.0]


def test_kto_value_at_reference_point_is_half_lambda():
    # r = z0 = 0 -> lambda_y - lambda_y * sigma(0) = lambda_y / 2
    inputs = BinaryInputs.of([0.0, 0.0], [True, False], ref_logps=[0.0, 0.0],
                             kl_logps=[0.0], kl_ref_logps=[0.0])
    losses, _ = kto(inputs, KTOParams(desirable_weight=3.0, undesirable_weight=1.5))
    assert losses.tolist() == pytest.approx([1.5, 0.75])


def test_kto_negative_kl_estimate_is_clamped_to_zero():
    # KL ratios (-1, -3) -> mean -2 -> z0 = max(0, -2) = 0; r = 0 -> loss 1/2 (not 1 - sigma(2 beta))
    inputs = BinaryInputs.of([0.0], [True], ref_logps=[0.0], kl_logps=[-2.0, -5.0],
                             kl_ref_logps=[-1.0, -2.0])
    losses, m = kto(inputs, KTOParams(beta=1.0))
    assert m["kl"].item() == 0.0
    assert losses.item() == pytest.approx(0.5)


def test_kto_reference_point_is_detached_and_gradient_hand_checked():
    logps = torch.tensor([1.0], requires_grad=True)
    kl_logps = torch.tensor([1.0, 1.0], requires_grad=True)
    inputs = BinaryInputs(SeqStats(logps, torch.ones(1), ref_logps=torch.zeros(1)),
                          torch.tensor([True]),
                          SeqStats(kl_logps, torch.ones(2), ref_logps=torch.zeros(2)))
    losses, _ = kto(inputs, KTOParams(beta=1.0))
    losses.sum().backward()
    assert kl_logps.grad is None
    # l = 1 - sigma(r - z0) with r = z0 = 1: dl/dr = -sigma'(0) = -0.25
    assert logps.grad.item() == pytest.approx(-0.25)


def test_kto_without_kl_pairs_is_a_clear_error():
    inputs = BinaryInputs.of([0.0], [True], ref_logps=[0.0])
    with pytest.raises(ValueError, match="kl_seqs"):
        kto(inputs, KTOParams())


def test_kto_registration_and_bad_params():
    spec = LOSSES["kto"]
    assert (spec.data_kind, spec.reference, spec.needs) == ("binary", "cached",
                                                            frozenset({"kl_pairs"}))
    with pytest.raises(ValueError, match="desirable_weight"):
        spec.parse({"desirable_weight": -1.0})
    with pytest.raises(ValueError, match="beta"):
        spec.parse({"beta": 0.0})
    with pytest.raises(ValueError, match="gamma"):
        spec.parse({"gamma": 1.0})


# --------------------------------------------------------------------------------------------- NPO

def test_npo_hand_values():
    # beta = 0.5, undesirable: (2/beta) log(1 + e^(beta h)) = 4 log(1 + e^(0.5 h))
    # h = 0: 4 log 2 = 2.772589; h = 2: 4 log(1 + e) = 4 * 1.313262 = 5.253047
    # desirable with retain_weight 0.5: logps -6 over 3 tokens -> NLL 2 -> 0.5 * 2 = 1.0
    inputs = BinaryInputs.of([0.0, 2.0, -6.0], [False, False, True], ref_logps=[0.0, 0.0, 0.0],
                             lengths=[1.0, 1.0, 3.0])
    losses, m = npo(inputs, NPOParams(beta=0.5, retain_weight=0.5))
    assert losses.tolist() == pytest.approx([4 * LOG2, 5.253047, 1.0], abs=1e-5)
    assert m["retain_nll"].tolist() == pytest.approx([0.0, 0.0, 2.0])
    assert m["forget_loss"].tolist() == pytest.approx([4 * LOG2, 5.253047, 0.0], abs=1e-5)


def test_npo_ignores_desirable_items_without_retain_weight():
    logps = torch.tensor([0.0, -4.0], requires_grad=True)
    inputs = BinaryInputs(SeqStats(logps, torch.ones(2), ref_logps=torch.zeros(2)),
                          torch.tensor([False, True]))
    losses, _ = npo(inputs, NPOParams(beta=0.5))
    assert losses[1].item() == 0.0
    losses.sum().backward()
    # d/dh (2/beta) log(1 + e^(beta h)) = 2 sigma(beta h) = 2 * 1/2 = 1 at h = 0; desirable: 0
    assert logps.grad.tolist() == pytest.approx([1.0, 0.0])


def test_npo_small_beta_limit_is_log_ratio_plus_constant():
    # (2/beta) log(1 + e^(beta h)) = (2/beta) log 2 + h + beta h^2 / 4 + O(beta^3)
    beta, h = 1e-4, 0.7
    seqs = SeqStats(torch.tensor([h], dtype=torch.float64), torch.ones(1, dtype=torch.float64),
                    ref_logps=torch.zeros(1, dtype=torch.float64))
    losses, _ = npo(BinaryInputs(seqs, torch.tensor([False])), NPOParams(beta=beta))
    assert losses.item() - 2 / beta * LOG2 == pytest.approx(h, abs=1e-4)


def test_npo_registration_and_bad_params():
    spec = LOSSES["npo"]
    assert (spec.data_kind, spec.reference) == ("binary", "cached")
    with pytest.raises(ValueError, match="retain_weight"):
        spec.parse({"retain_weight": -0.1})


# ------------------------------------------------------------------------------------------ CRINGE

def cringe_inputs(token_logps, target_ids, topk_logps, topk_ids, desirable, mask=None):
    token_logps = torch.as_tensor(token_logps, dtype=torch.float32)
    mask = torch.ones_like(token_logps) if mask is None else torch.as_tensor(mask)
    seqs = SeqStats(logps=(token_logps * mask).sum(-1), lengths=mask.sum(-1), token_logps=token_logps,
                    token_mask=mask, target_ids=torch.as_tensor(target_ids),
                    topk_logps=torch.as_tensor(topk_logps, dtype=torch.float32),
                    topk_ids=torch.as_tensor(topk_ids))
    return BinaryInputs(seqs, torch.as_tensor(desirable))


def two_examples():
    """Example 0 desirable; example 1 undesirable with one admissible positive per position."""
    return cringe_inputs(
        token_logps=[[-1.0, -3.0], [-0.5, -4.0]],
        target_ids=[[1, 2], [7, 5]],
        # example 1, t=0: negative 7 is top-1; only id 3 (-1.0) is admissible
        # example 1, t=1: negative 5 is not in the top-k; -inf slot 9 has zero weight
        topk_logps=[[[-0.1, -2.0], [-0.2, -1.0]], [[-0.5, -1.0], [-2.0, -float("inf")]]],
        topk_ids=[[[1, 4], [2, 6]], [[7, 3], [8, 9]]],
        desirable=[True, False])


def test_cringe_hand_values_sampled():
    # desirable: NLL mean (1 + 3) / 2 = 2
    # undesirable t=0: -log sigma(-1.0 - -0.5) = log(1 + e^0.5) = 0.974077
    #             t=1: -log sigma(-2.0 - -4.0) = log(1 + e^-2) = 0.126928
    # mean (0.974077 + 0.126928) / 2 = 0.550503; alpha = 2 -> 1.101005
    obj = LOSSES["cringe"].build(CringeParams(alpha=2.0, k=2))
    losses, m = obj(two_examples())
    assert losses.tolist() == pytest.approx([2.0, 1.101005], abs=1e-5)
    assert m["nll"].tolist() == pytest.approx([2.0, 0.0])
    assert m["contrast"].tolist() == pytest.approx([0.0, 0.550503], abs=1e-5)


def test_cringe_expected_positive_hand_value():
    # one undesirable token: s- = -4, top-k log-probs (-0.2, -2.0), neither is the negative
    # weights softmax(-0.2, -2.0) = (1/(1+e^-1.8), e^-1.8/(1+e^-1.8)) = (0.858149, 0.141851)
    # pair losses log(1+e^-3.8) = 0.022124, log(1+e^-2) = 0.126928
    # expectation 0.858149 * 0.022124 + 0.141851 * 0.126928 = 0.036991
    inputs = cringe_inputs([[-4.0]], [[5]], [[[-0.2, -2.0]]], [[[2, 9]]], [False])
    losses, _ = Cringe(CringeParams(k=2, positive="expected"))(inputs)
    assert losses.item() == pytest.approx(0.036991, abs=1e-5)


def test_cringe_never_samples_the_negative_token():
    # negative id 0 holds almost all the top-k mass; the others: probs 0.6 and 0.2 -> 3/4 and 1/4
    topk_logps = torch.log(torch.tensor([[[0.19, 0.6, 0.2]]])).expand(1, 4000, 3)
    topk_ids = torch.tensor([[[0, 1, 2]]]).expand(1, 4000, 3)
    topk_logps = topk_logps.clone()
    topk_logps[..., 0] = math.log(0.99)  # negative token dominates the top-k
    targets = torch.zeros(1, 4000, dtype=torch.long)
    weights = positive_weights(topk_logps, topk_ids, targets)
    ids = topk_ids.gather(-1, Cringe(CringeParams(k=3)).draw(weights).unsqueeze(-1)).squeeze(-1)
    assert not bool((ids == 0).any())
    # 4000 draws: sd of the frequency is sqrt(0.75 * 0.25 / 4000) = 0.0068; allow 0.03
    assert (ids == 1).float().mean().item() == pytest.approx(0.75, abs=0.03)


def test_cringe_positive_below_negative_costs_more_than_log2():
    # s- = -0.1 beats every top-k entry, so every sampled s+ - s- < 0 and -log sigma(.) > log 2
    inputs = cringe_inputs([[-0.1, -0.1]], [[5, 5]], [[[-1.0, -2.0, -3.0]] * 2],
                           [[[1, 2, 3]] * 2], [False])
    losses, _ = Cringe(CringeParams(k=3, seed=3))(inputs)
    assert losses.item() > LOG2
    # and no more than the worst slot: log(1 + e^(3 - 0.1)) = 2.950 (s+ = -3)
    assert losses.item() <= math.log(1 + math.exp(2.9)) + 1e-6


def test_cringe_is_seeded_and_uses_only_top_k():
    g = torch.Generator().manual_seed(0)
    topk = torch.randn(3, 6, 5, generator=g).sort(-1, descending=True).values
    ids = torch.arange(5).expand(3, 6, 5) + 10
    inputs = cringe_inputs(torch.randn(3, 6, generator=g), torch.full((3, 6), 11), topk, ids,
                           [False] * 3)
    a, _ = Cringe(CringeParams(k=3, seed=7))(inputs)
    b, _ = Cringe(CringeParams(k=3, seed=7))(inputs)
    assert torch.equal(a, b)
    # k = 2 with the negative (id 11) in slot 2: the only admissible positive is slot 1
    only, _ = Cringe(CringeParams(k=2))(inputs)
    expected = -torch.nn.functional.logsigmoid(topk[..., 0] - inputs.seqs.token_logps).mean(-1)
    assert torch.allclose(only, expected)


def test_cringe_padding_positions_change_nothing():
    base = two_examples()
    padded = cringe_inputs(
        token_logps=[[-1.0, -3.0, -50.0], [-0.5, -4.0, 7.0]],
        target_ids=[[1, 2, 0], [7, 5, 0]],
        topk_logps=[[[-0.1, -2.0], [-0.2, -1.0], [-float("inf")] * 2],
                    [[-0.5, -1.0], [-2.0, -float("inf")], [-float("inf")] * 2]],
        topk_ids=[[[1, 4], [2, 6], [0, 0]], [[7, 3], [8, 9], [0, 0]]],
        desirable=[True, False], mask=[[1, 1, 0], [1, 1, 0]])
    a, _ = Cringe(CringeParams(k=2))(base)
    b, _ = Cringe(CringeParams(k=2))(padded)
    assert torch.allclose(a, b)


def test_cringe_gradient_reaches_both_scores():
    # l = -log sigma(s+ - s-) at s+ - s- = -0.5: dl/ds+ = -sigma(0.5) = -0.622459, dl/ds- = +0.622459
    token_logps = torch.tensor([[-0.5]], requires_grad=True)
    topk = torch.tensor([[[-0.5, -1.0]]], requires_grad=True)
    seqs = SeqStats(token_logps.sum(-1), torch.ones(1), token_logps=token_logps,
                    token_mask=torch.ones(1, 1), target_ids=torch.tensor([[7]]), topk_logps=topk,
                    topk_ids=torch.tensor([[[7, 3]]]))
    losses, _ = Cringe(CringeParams(k=2))(BinaryInputs(seqs, torch.tensor([False])))
    losses.sum().backward()
    assert token_logps.grad.item() == pytest.approx(0.622459, abs=1e-6)
    assert topk.grad.flatten().tolist() == pytest.approx([0.0, -0.622459], abs=1e-6)


def test_cringe_errors():
    spec = LOSSES["cringe"]
    assert (spec.reference, spec.needs) == ("none", frozenset({"token_logps", "topk"}))
    with pytest.raises(ValueError, match="k"):
        spec.parse({"k": 1})
    with pytest.raises(ValueError, match="alpha"):
        spec.parse({"alpha": -1.0})
    with pytest.raises(ValueError, match="positive"):
        spec.parse({"positive": "argmax"})
    with pytest.raises(ValueError, match="k=5"):
        Cringe(CringeParams(k=5))(two_examples())
    with pytest.raises(ValueError, match="topk"):
        Cringe(CringeParams())(BinaryInputs.of([0.0], [False]))
