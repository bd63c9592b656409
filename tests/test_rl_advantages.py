"""Advantage estimators against numbers derived by hand (comments show the arithmetic)."""

import pytest
import torch

from alignlab.rl.advantages import (
    discounted_returns,
    expand_to_tokens,
    gae,
    grpo_advantages,
    masked_mean,
    masked_var,
    masked_whiten,
    reinforce_pp_advantages,
    rloo_advantages,
    token_rewards,
)

T = torch.tensor

# A 1x3 episode used by the GAE tests: rewards r, values V
R3 = T([[0.5, -1.0, 2.0]])
V3 = T([[1.0, 2.0, 3.0]])
M3 = T([[1.0, 1.0, 1.0]])


# ----------------------------------------------------------------------------------- masked statistics

def test_masked_mean_global_and_per_row():
    x = T([[1.0, 2.0, 3.0, 99.0], [4.0, 5.0, 6.0, 7.0]])
    mask = T([[1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    # global: (1 + 2 + 3) / 3 = 2 (99 and the second row ignored)
    assert masked_mean(x, mask).item() == pytest.approx(2.0)
    # per row: row 0 -> 2, row 1 has no entries -> 0
    assert masked_mean(x, mask, dim=1).tolist() == pytest.approx([2.0, 0.0])
    # padding may hold inf/nan without leaking
    x_bad = x.clone()
    x_bad[0, 3] = float("nan")
    assert masked_mean(x_bad, mask).item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="no entries"):
        masked_mean(x, torch.zeros_like(x))


def test_masked_var_unbiased_and_population():
    x = T([[1.0, 2.0, 3.0, 99.0], [4.0, -50.0, 0.0, 0.0]])
    mask = T([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    # entries 1,2,3,4: mean 2.5; squared deviations 2.25+0.25+0.25+2.25 = 5
    # unbiased 5/3 = 1.666667; population 5/4 = 1.25
    assert masked_var(x, mask).item() == pytest.approx(5 / 3)
    assert masked_var(x, mask, unbiased=False).item() == pytest.approx(1.25)
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(x, T([[1.0, 0, 0, 0], [0, 0, 0, 0]]))


def test_masked_whiten_hand_values_ignores_padding():
    x = T([[1.0, 2.0, 3.0, 99.0], [4.0, -50.0, 0.0, 0.0]])
    mask = T([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    # mean 2.5, std = sqrt(5/3) = 1.290994: 1.5/1.290994 = 1.161895, 0.5/1.290994 = 0.387298
    y = masked_whiten(x, mask)
    assert y.tolist()[0] == pytest.approx([-1.161895, -0.387298, 0.387298, 0.0], abs=1e-5)
    assert y.tolist()[1] == pytest.approx([1.161895, 0.0, 0.0, 0.0], abs=1e-5)
    # mean 0, unbiased variance 1 over the masked entries
    assert masked_mean(y, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert masked_var(y, mask).item() == pytest.approx(1.0, abs=1e-5)
    # changing padding values changes nothing
    x2 = x.clone()
    x2[0, 3], x2[1, 1:] = -1e6, 1e6
    assert torch.equal(masked_whiten(x2, mask), y)
    # shift_mean=False adds the mean 2.5 back on real entries
    y_keep = masked_whiten(x, mask, shift_mean=False)
    assert y_keep.tolist()[0] == pytest.approx([1.338105, 2.112702, 2.887298, 0.0], abs=1e-5)


def test_masked_whiten_population_variance_option():
    # entries 1,2,3,4, population std sqrt(1.25) = 1.118034: 1.5/1.118034 = 1.341641
    y = masked_whiten(T([1.0, 2.0, 3.0, 4.0]), T([1.0, 1.0, 1.0, 1.0]), unbiased=False)
    assert y.tolist() == pytest.approx([-1.341641, -0.447214, 0.447214, 1.341641], abs=1e-5)


def test_expand_to_tokens():
    mask = T([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert expand_to_tokens(T([2.0, -1.0]), mask).tolist() == [[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match="mask"):
        expand_to_tokens(T([2.0, -1.0, 3.0]), mask)


# ----------------------------------------------------------------------------------- token rewards

def test_token_rewards_score_on_last_real_token_of_each_row():
    # kl_coef 0.5; row 0 has 2 real tokens, row 1 has 3
    # row 0: [-0.05, -0.10 + 2, 0] = [-0.05, 1.9, 0]
    # row 1: [-0.20, -0.25, -0.30 - 3] = [-0.2, -0.25, -3.3]
    scores = T([2.0, -3.0])
    kl = T([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    mask = T([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    r = token_rewards(scores, kl, mask, kl_coef=0.5)
    assert r.tolist()[0] == pytest.approx([-0.05, 1.9, 0.0], abs=1e-6)
    assert r.tolist()[1] == pytest.approx([-0.2, -0.25, -3.3], abs=1e-6)
    # row sums = score - kl_coef * sum(kl over real tokens): 2 - 0.15 = 1.85; -3 - 0.75 = -3.75
    assert r.sum(1).tolist() == pytest.approx([1.85, -3.75], abs=1e-6)


def test_token_rewards_clipping():
    # clip 1: scores 2 -> 1, -3 -> -1: row 0 last = -0.1 + 1 = 0.9; row 1 last = -0.3 - 1 = -1.3
    scores = T([2.0, -3.0])
    kl = T([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    mask = T([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    r = token_rewards(scores, kl, mask, kl_coef=0.5, clip=1.0)
    assert r.tolist()[0] == pytest.approx([-0.05, 0.9, 0.0], abs=1e-6)
    assert r.tolist()[1] == pytest.approx([-0.2, -0.25, -1.3], abs=1e-6)
    with pytest.raises(ValueError, match="clip"):
        token_rewards(scores, kl, mask, kl_coef=0.5, clip=0.0)


def test_mask_validation():
    scores = T([1.0])
    kl = torch.zeros(1, 3)
    with pytest.raises(ValueError, match="right-padded"):
        token_rewards(scores, kl, T([[1.0, 0.0, 1.0]]), 0.1)
    with pytest.raises(ValueError, match="at least one"):
        token_rewards(scores, kl, T([[0.0, 0.0, 0.0]]), 0.1)
    with pytest.raises(ValueError, match="shape"):
        token_rewards(scores, kl, T([[1.0, 1.0]]), 0.1)
    with pytest.raises(ValueError, match="scores"):
        token_rewards(T([1.0, 2.0]), kl, T([[1.0, 1.0, 1.0]]), 0.1)


# ----------------------------------------------------------------------------------- GAE / returns

def test_gae_lambda_one_is_returns_to_go_minus_values():
    # gamma = lam = 1: returns-to-go G = [0.5 - 1 + 2, -1 + 2, 2] = [1.5, 1, 2]
    # A = G - V = [0.5, -1, -1]; returns = A + V = G
    # (via deltas: d2 = 2 + 0 - 3 = -1, d1 = -1 + 3 - 2 = 0, d0 = 0.5 + 2 - 1 = 1.5;
    #  A2 = -1, A1 = 0 - 1 = -1, A0 = 1.5 - 1 = 0.5)
    adv, ret = gae(R3, V3, M3, gamma=1.0, lam=1.0)
    assert adv.tolist() == [[0.5, -1.0, -1.0]]
    assert ret.tolist() == [[1.5, 1.0, 2.0]]
    assert torch.allclose(adv, discounted_returns(R3, M3, 1.0) - V3)


def test_gae_lambda_zero_is_one_step_td_error():
    # lam = 0, gamma = 1: A_t = r_t + V_{t+1} - V_t = [1.5, 0, -1] (V after the end is 0)
    adv, ret = gae(R3, V3, M3, gamma=1.0, lam=0.0)
    assert adv.tolist() == [[1.5, 0.0, -1.0]]
    assert ret.tolist() == [[2.5, 2.0, 2.0]]  # A + V


def test_gae_general_gamma_lambda():
    # gamma = lam = 0.5 (gamma*lam = 0.25):
    # d2 = 2 - 3 = -1; d1 = -1 + 0.5*3 - 2 = -1.5; d0 = 0.5 + 0.5*2 - 1 = 0.5
    # A2 = -1; A1 = -1.5 + 0.25*(-1) = -1.75; A0 = 0.5 + 0.25*(-1.75) = 0.0625
    adv, _ = gae(R3, V3, M3, gamma=0.5, lam=0.5)
    assert adv.tolist()[0] == pytest.approx([0.0625, -1.75, -1.0])


def test_gae_padding_gets_zero_and_does_not_leak():
    # row 0 = the 1x3 episode plus a padded 4th token holding junk reward/value;
    # row 1 = a full 4-token episode (r = 1 each, V = 0): A = G = [4, 3, 2, 1] with gamma = lam = 1
    rewards = T([[0.5, -1.0, 2.0, 100.0], [1.0, 1.0, 1.0, 1.0]])
    values = T([[1.0, 2.0, 3.0, 50.0], [0.0, 0.0, 0.0, 0.0]])
    mask = T([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert adv.tolist() == [[0.5, -1.0, -1.0, 0.0], [4.0, 3.0, 2.0, 1.0]]
    assert ret.tolist() == [[1.5, 1.0, 2.0, 0.0], [4.0, 3.0, 2.0, 1.0]]
    with pytest.raises(ValueError, match="values"):
        gae(rewards, values[:, :3], mask, 1.0, 1.0)


def test_discounted_returns_hand_values_and_padding():
    # gamma 0.5, r = [1, 2, 4]: G2 = 4, G1 = 2 + 0.5*4 = 4, G0 = 1 + 0.5*4 = 3; padding junk ignored
    rewards = T([[1.0, 2.0, 4.0, 9.0]])
    mask = T([[1.0, 1.0, 1.0, 0.0]])
    assert discounted_returns(rewards, mask, 0.5).tolist() == [[3.0, 4.0, 4.0, 0.0]]


# ----------------------------------------------------------------------------------- RLOO / GRPO

def test_rloo_k2_is_plus_minus_difference():
    # k = 2: A_1 = r1 - r2 = 2, A_2 = r2 - r1 = -2; second group [5, 5] -> 0
    assert rloo_advantages(T([3.0, 1.0, 5.0, 5.0]), k=2).tolist() == [2.0, -2.0, 0.0, 0.0]


def test_rloo_k3_leave_one_out():
    # group [1, 2, 6]: 1 - (2+6)/2 = -3; 2 - (1+6)/2 = -1.5; 6 - (1+2)/2 = 4.5
    # (= 3/2 * (r - 3) with group mean 3)
    assert rloo_advantages(T([1.0, 2.0, 6.0]), k=3).tolist() == pytest.approx([-3.0, -1.5, 4.5])
    assert rloo_advantages(T([7.0, 7.0, 7.0]), k=3).tolist() == [0.0, 0.0, 0.0]


def test_grpo_unbiased_std():
    # [1, 2, 3]: mean 2, unbiased std sqrt((1 + 0 + 1) / 2) = 1 -> (r - 2) / (1 + 1e-4)
    #   = [-0.999900, 0, 0.999900]  (population std sqrt(2/3) would give +-1.224745)
    a = grpo_advantages(T([1.0, 2.0, 3.0]), k=3)
    assert a.tolist() == pytest.approx([-0.99990001, 0.0, 0.99990001], abs=1e-7)
    # group-major: two groups normalised separately; [10, 20, 30] -> same
    b = grpo_advantages(T([1.0, 2.0, 3.0, 10.0, 20.0, 30.0]), k=3, eps=0.0)
    assert b.tolist() == pytest.approx([-1.0, 0.0, 1.0, -1.0, 0.0, 1.0], abs=1e-6)


def test_grpo_scale_none_and_equal_scores():
    # Dr. GRPO: no division, r - mean = [-1, 0, 1] and [-10, 0, 10]
    a = grpo_advantages(T([1.0, 2.0, 3.0, 10.0, 20.0, 30.0]), k=3, scale="none")
    assert a.tolist() == pytest.approx([-1.0, 0.0, 1.0, -10.0, 0.0, 10.0])
    # equal rewards: 0 / (0 + eps) = 0, no nan
    assert grpo_advantages(T([4.0, 4.0]), k=2).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="scale"):
        grpo_advantages(T([1.0, 2.0]), k=2, scale="mad")


def test_group_layout_errors():
    with pytest.raises(ValueError, match="multiple of k=2"):
        rloo_advantages(T([1.0, 2.0, 3.0]), k=2)
    with pytest.raises(ValueError, match="multiple of k=4"):
        grpo_advantages(T([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), k=4)
    with pytest.raises(ValueError, match="k must be"):
        rloo_advantages(T([1.0, 2.0]), k=1)
    with pytest.raises(ValueError, match="scores"):
        grpo_advantages(T([[1.0, 2.0]]), k=2)


# ----------------------------------------------------------------------------------- REINFORCE++

def test_reinforce_pp_global_whitening_hand_values():
    # kl_coef 0.5, gamma 1; row 0 has 2 real tokens, row 1 has 1
    # rewards: row 0 [-0.1, -0.1 + 1] = [-0.1, 0.9]; row 1 [-0.2 + 2] = [1.8]
    # returns-to-go: row 0 [0.8, 0.9]; row 1 [1.8]
    # global over the 3 real tokens: mean 3.5/3 = 1.166667; squared deviations
    #   0.134444 + 0.071111 + 0.401111 = 0.606667, unbiased var /2 = 0.303333, std 0.550757
    # A = [-0.366667, -0.266667, 0.633333] / 0.550757 = [-0.665750, -0.484182, 1.149932]
    scores = T([1.0, 2.0])
    kl = T([[0.2, 0.2], [0.4, 7.0]])
    mask = T([[1.0, 1.0], [1.0, 0.0]])
    a = reinforce_pp_advantages(scores, kl, mask, kl_coef=0.5)
    assert a.tolist()[0] == pytest.approx([-0.665750, -0.484182], abs=1e-5)
    assert a.tolist()[1] == pytest.approx([1.149932, 0.0], abs=1e-5)
    # a single-token row keeps a non-zero advantage: normalisation is batch-wide, not per row
    assert a[1, 0].item() > 1.0
