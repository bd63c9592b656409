"""RRHF, PRO and LiPO-lambda against numbers derived by hand (comments show the arithmetic)."""

import math

import pytest
import torch

import alignlab.losses.listwise  # noqa: F401  (registers the objectives)
from alignlab.losses.inputs import ListInputs, SeqStats
from alignlab.losses.listwise import (
    LiPOParams,
    PROParams,
    RRHFParams,
    lipo,
    pro,
    rank_positions,
    rrhf,
)
from alignlab.losses.registry import LOSSES

NAN = float("nan")


def softplus(x):
    return math.log1p(math.exp(x))


def padded(inputs: ListInputs, ref=False) -> ListInputs:
    """``inputs`` with one extra padding slot full of poison (NaN log-probs, zero length, top score)."""
    b = inputs.scores.shape[0]
    seqs = SeqStats(torch.cat([inputs.seqs.logps, torch.full((b, 1), NAN)], 1),
                    torch.cat([inputs.seqs.lengths, torch.zeros(b, 1)], 1),
                    ref_logps=torch.cat([inputs.seqs.ref_logps, torch.full((b, 1), NAN)], 1)
                    if ref else None)
    return ListInputs(seqs, torch.cat([inputs.scores, torch.full((b, 1), 100.0)], 1),
                      torch.cat([inputs.valid, torch.zeros(b, 1, dtype=torch.bool)], 1))


def assert_padding_is_inert(fn, inputs, params, ref=False):
    base, _ = fn(inputs, params)
    pad = padded(inputs, ref)
    pad.seqs.logps.requires_grad_(True)
    losses, _ = fn(pad, params)
    assert torch.allclose(losses, base)
    losses.sum().backward()
    assert bool(torch.isfinite(pad.seqs.logps.grad).all())
    assert bool((pad.seqs.logps.grad[:, -1] == 0).all())


def test_empty_list_and_shape_errors():
    with pytest.raises(ValueError, match="at least one valid"):
        rrhf(ListInputs.of([[1.0, 2.0]], [[1.0, 2.0]], valid=[[False, False]]), RRHFParams())
    bad = ListInputs(SeqStats.of([[1.0, 2.0]]), torch.tensor([[1.0, 2.0, 3.0]]),
                     torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\[B, K\]"):
        pro(bad, PROParams())


# -------------------------------------------------------------------------------------------- RRHF

def rrhf_example():
    # p = logps / lengths = (-2/2, -4/2, -9/3) = (-1, -2, -3); scores (3, 1, 2)
    return ListInputs.of([[-2.0, -4.0, -9.0]], [[3.0, 1.0, 2.0]], lengths=[[2.0, 2.0, 3.0]])


def test_rrhf_hand_values():
    # ordered pairs (better, worse): (0,1): max(0, p1 - p0) = max(0, -1) = 0
    #   (0,2): max(0, -3 + 1) = 0;  (2,1): max(0, p1 - p2) = max(0, -2 + 3) = 1  -> L_rank = 1
    # best by score is item 0: L_ft = -p0 = 1; sft_weight 0.5 -> 1 + 0.5 = 1.5
    losses, m = rrhf(rrhf_example(), RRHFParams(sft_weight=0.5))
    assert losses.tolist() == pytest.approx([1.5])
    assert m["rank_loss"].tolist() == [1.0]
    assert m["sft_nll"].tolist() == [1.0]
    assert m["accuracy"].tolist() == pytest.approx([2 / 3])  # (0,1), (0,2) agree; (2,1) does not


def test_rrhf_gradient_of_the_violated_pair():
    # only (2,1) is violated: d/dp1 = +1, d/dp2 = -1; dp/dlogps = 1/length -> (0, 1/2, -1/3)
    inputs = rrhf_example()
    inputs.seqs.logps.requires_grad_(True)
    losses, _ = rrhf(inputs, RRHFParams(sft_weight=0.0))
    losses.sum().backward()
    assert inputs.seqs.logps.grad[0].tolist() == pytest.approx([0.0, 0.5, -1 / 3])


def test_rrhf_zero_rank_loss_when_model_agrees_with_scores():
    # p = (-1, -3, -2) orders like scores (3, 1, 2): no hinge is active; L = 0.5 * 1
    inputs = ListInputs.of([[-1.0, -3.0, -2.0]], [[3.0, 1.0, 2.0]])
    losses, m = rrhf(inputs, RRHFParams(sft_weight=0.5))
    assert m["rank_loss"].item() == 0.0
    assert losses.item() == pytest.approx(0.5)


def test_rrhf_ties_give_no_pair_and_share_the_sft_term():
    # scores tie: no ordered pair; both are best -> L_ft = (2 + 1) / 2 = 1.5
    losses, m = rrhf(ListInputs.of([[-2.0, -1.0]], [[1.0, 1.0]]), RRHFParams())
    assert m["rank_loss"].item() == 0.0
    assert losses.item() == pytest.approx(1.5)
    assert m["accuracy"].item() == 0.5


def test_rrhf_padding_is_inert():
    assert_padding_is_inert(rrhf, rrhf_example(), RRHFParams())


# --------------------------------------------------------------------------------------------- PRO

def test_pro_two_items_is_logistic_plus_sft():
    # -log sigma(p1 - p2) = log(1 + e^-1) = 0.313262; SFT -p_best = 1; 0.313262 + 0.1 * 1 = 0.413262
    losses, m = pro(ListInputs.of([[-1.0, -2.0]], [[2.0, 1.0]]), PROParams(sft_weight=0.1))
    assert losses.item() == pytest.approx(0.413262, abs=1e-6)
    assert m["rank_loss"].item() == pytest.approx(0.313262, abs=1e-6)


def test_pro_three_items_and_temperature():
    # scores (1, 3, 2) -> order: item1 (p=0), item2 (p=-1), item0 (p=-2)
    # step 1: log(1 + e^-1 + e^-2) = log(1.503215) = 0.407606; step 2: log(1 + e^-1) = 0.313262
    inputs = ListInputs.of([[-2.0, 0.0, -1.0]], [[1.0, 3.0, 2.0]])
    losses, _ = pro(inputs, PROParams(sft_weight=0.0))
    assert losses.item() == pytest.approx(0.407606 + 0.313262, abs=1e-6)
    # T = 2 halves the logits: log(1 + e^-0.5 + e^-1) = 0.680270 and log(1 + e^-0.5) = 0.474077
    losses, _ = pro(inputs, PROParams(sft_weight=0.0, temperature=2.0))
    assert losses.item() == pytest.approx(0.680270 + 0.474077, abs=1e-6)


def test_pro_score_temperature():
    # scores (3, 2, 1), p (0, -1, -2). Step 1: gaps 1, 2 -> logits self 0 * 2, -1 * 1, -2 * 2
    #   log(1 + e^-1 + e^-4) = log(1.386195) = 0.326563. Step 2: gap 1: log(1 + e^-1) = 0.313262
    inputs = ListInputs.of([[0.0, -1.0, -2.0]], [[3.0, 2.0, 1.0]])
    losses, _ = pro(inputs, PROParams(sft_weight=0.0, score_temperature=True))
    assert losses.item() == pytest.approx(0.326563 + 0.313262, abs=1e-6)


def test_pro_ties_do_not_compete():
    # scores (2, 2, 1), p (0, -1, -2): item0 vs {item2}: log(1 + e^-2) = 0.126928
    #   item1 vs {item2}: log(1 + e^-1) = 0.313262; item2: nothing below -> 0
    losses, _ = pro(ListInputs.of([[0.0, -1.0, -2.0]], [[2.0, 2.0, 1.0]]), PROParams(sft_weight=0.0))
    assert losses.item() == pytest.approx(0.126928 + 0.313262, abs=1e-6)


def test_pro_padding_is_inert():
    inputs = ListInputs.of([[-2.0, 0.0, -1.0], [-1.0, -1.5, 0.0]], [[1.0, 3.0, 2.0], [0.0, 1.0, 1.0]],
                           lengths=[[2.0, 1.0, 1.0], [1.0, 3.0, 1.0]])
    assert_padding_is_inert(pro, inputs, PROParams())
    assert_padding_is_inert(pro, inputs, PROParams(score_temperature=True))


# -------------------------------------------------------------------------------------------- LiPO

def test_lipo_two_items_is_weighted_dpo():
    # s = beta * (logps - ref) = 0.5 * ((-1 + 2), (-3 + 2)) = (0.5, -0.5); minmax psi = (1, 0)
    # G = (1, 0); tau = (1, 2); 1/D = (1, 1/log2 3 = 0.630930); Delta = 1 * 0.369070
    # loss = 0.369070 * log(1 + e^-1) = 0.369070 * 0.313262 = 0.115616
    inputs = ListInputs.of([[-1.0, -3.0]], [[2.0, 1.0]], ref_logps=[[-2.0, -2.0]])
    losses, m = lipo(inputs, LiPOParams(beta=0.5))
    assert losses.item() == pytest.approx(0.115616, abs=1e-6)
    dpo = -torch.nn.functional.logsigmoid(torch.tensor(0.5 * ((-1 + 2) - (-3 + 2))))
    assert losses.item() == pytest.approx((1 - 1 / math.log2(3)) * dpo.item(), abs=1e-6)
    assert m["accuracy"].item() == 1.0
    # raw labels: G = (2^2 - 1, 2^1 - 1) = (3, 1) -> |dG| = 2, twice the loss
    raw, _ = lipo(inputs, LiPOParams(beta=0.5, labels="raw"))
    assert raw.item() == pytest.approx(2 * 0.115616, abs=1e-6)


def test_lipo_misranked_pair_keeps_the_weight():
    # s = (-0.5, 0.5): tau = (2, 1), same |1/D| difference; loss = 0.369070 * log(1 + e) = 0.484686
    inputs = ListInputs.of([[-3.0, -1.0]], [[2.0, 1.0]], ref_logps=[[-2.0, -2.0]])
    losses, m = lipo(inputs, LiPOParams(beta=0.5))
    assert losses.item() == pytest.approx(0.484686, abs=1e-6)
    assert m["accuracy"].item() == 0.0


def test_lipo_three_items_hand_value():
    # scores (3, 2, 1) -> psi (1, 0.5, 0) -> G (1, sqrt2 - 1 = 0.414214, 0); beta 1, ref 0: s = (0, 1, -1)
    # model ranks: item1 first, item0 second, item2 third -> 1/D = (0.630930, 1, 0.5)
    # (0,1): 0.585786 * 0.369070 * log(1 + e^1)  = 0.283922
    # (0,2): 1 * 0.130930 * log(1 + e^-1)          = 0.041015
    # (1,2): 0.414214 * 0.5 * log(1 + e^-2)         = 0.026288     total 0.351225
    inputs = ListInputs.of([[0.0, 1.0, -1.0]], [[3.0, 2.0, 1.0]], ref_logps=[[0.0, 0.0, 0.0]])
    losses, _ = lipo(inputs, LiPOParams(beta=1.0))
    assert losses.item() == pytest.approx(0.351225, abs=1e-5)


def test_lipo_weights_carry_no_gradient():
    # d/ds0 of Delta * log(1 + e^-(s0 - s1)) with Delta constant: -Delta * sigma(-(s0 - s1))
    # s0 - s1 = 1: -0.369070 * 0.268941 = -0.099258; ds0/dlogps0 = beta = 0.5 -> -0.049629
    inputs = ListInputs.of([[-1.0, -3.0]], [[2.0, 1.0]], ref_logps=[[-2.0, -2.0]])
    inputs.seqs.logps.requires_grad_(True)
    losses, _ = lipo(inputs, LiPOParams(beta=0.5))
    losses.sum().backward()
    assert inputs.seqs.logps.grad[0].tolist() == pytest.approx([-0.049629, 0.049629], abs=1e-6)


def test_lipo_ties_and_padding():
    # tied scores: no pair, zero loss
    tied, _ = lipo(ListInputs.of([[-1.0, -3.0]], [[1.0, 1.0]], ref_logps=[[-2.0, -2.0]]), LiPOParams())
    assert tied.item() == 0.0
    inputs = ListInputs.of([[0.0, 1.0, -1.0]], [[3.0, 2.0, 1.0]], ref_logps=[[0.0, 0.0, 0.0]])
    assert_padding_is_inert(lipo, inputs, LiPOParams(), ref=True)


def test_rank_positions_ignore_padding_and_break_ties_by_slot():
    pos = rank_positions(torch.tensor([[0.0, 5.0, 0.0, 9.0]]), torch.tensor([[True, True, True, False]]))
    assert pos.tolist() == [[2.0, 1.0, 3.0, 4.0]]


def test_lipo_needs_reference():
    with pytest.raises(ValueError, match="ref_logps"):
        lipo(ListInputs.of([[-1.0, -3.0]], [[2.0, 1.0]]), LiPOParams())


# ------------------------------------------------------------------------------------ registration

def test_registration_and_bad_params():
    assert {n: (LOSSES[n].data_kind, LOSSES[n].reference) for n in ("rrhf", "pro", "lipo")} == {
        "rrhf": ("ranked", "none"), "pro": ("ranked", "none"), "lipo": ("ranked", "cached")}
    with pytest.raises(ValueError, match="sft_weight"):
        LOSSES["rrhf"].parse({"sft_weight": -1.0})
    with pytest.raises(ValueError, match="temperature"):
        LOSSES["pro"].parse({"temperature": 0.0})
    with pytest.raises(ValueError, match="beta"):
        LOSSES["lipo"].parse({"beta": -0.1})
    with pytest.raises(ValueError, match="labels"):
        LOSSES["lipo"].parse({"labels": "softmax"})
