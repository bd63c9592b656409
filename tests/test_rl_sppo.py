"""SPPO (Wu et al. 2024): win rates, targets and the squared loss by hand, and a first step."""

import math

import pytest
import torch
from test_rl_trainer import _config, _run, prompt_file, reward_fn  # noqa: F401
from test_train_stages import tiny_model  # noqa: F401

from alignlab.rl.algorithms import prepare_sppo, sppo_loss, sppo_targets, sppo_win_rates
from alignlab.rl.experience import Experience, ResponseIndex
from alignlab.rl.settings import RLSettings


def test_win_rates_by_hand():
    # one group of 2 with scores 0 and ln 3: P(1 > 0) = sigma(ln 3) = 0.75; with the self term 1/2,
    # P_hat(1) = (0.5 + 0.75) / 2 = 0.625 and P_hat(0) = (0.5 + 0.25) / 2 = 0.375
    win = sppo_win_rates(torch.tensor([0.0, math.log(3)]), 2)
    assert win.tolist() == pytest.approx([0.375, 0.625])
    # groups of 3 with equal scores: every win rate is 1/2
    assert sppo_win_rates(torch.zeros(6), 3).tolist() == pytest.approx([0.5] * 6)


def test_targets_soft_and_hard():
    win = torch.tensor([0.375, 0.625, 0.5])
    order = torch.tensor([1, 0])  # winner row 1, loser row 0; row 2 not in a pair
    assert sppo_targets(win, order, 2.0, "soft").tolist() == pytest.approx([-0.25, 0.25, 0.0])
    assert sppo_targets(win, order, 2.0, "hard").tolist() == pytest.approx([-1.0, 1.0, 0.0])


def _experience(logp_rows, ref_rows, scores, k, opponent=None):
    """An experience of 1-token-per-column rows (``opponent``: 1 on an opponent's rows)."""
    logp = torch.tensor(logp_rows)
    mask = torch.ones_like(logp)
    where = ResponseIndex(torch.zeros_like(logp, dtype=torch.long), mask)
    batch = {"input_ids": torch.zeros(len(logp_rows), 4, dtype=torch.long),
             "attention_mask": torch.ones(len(logp_rows), 4, dtype=torch.long)}
    return Experience(batch=batch, where=where, old_logp=logp, ref_logp=torch.tensor(ref_rows),
                      scores=torch.tensor(scores), k=k,
                      opponent=None if opponent is None else torch.tensor(opponent))


@pytest.mark.parametrize("mode,expected", [("soft", 0.125), ("hard", 1.25)])
def test_loss_by_hand(mode, expected):
    # scores (0, ln 3): winner row 1, loser row 0; log-ratios: winner 0.5 (two tokens 0.25 each
    # over a zero reference), loser 0. eta = 2:
    # soft: (0.5 - 0.25)^2 + (0 + 0.25)^2 = 0.125;  hard: (0.5 - 1)^2 + (0 + 1)^2 = 1.25
    exp = _experience([[-1.0, -1.0], [-0.75, -0.75]], [[-1.0, -1.0], [-1.0, -1.0]],
                      [0.0, math.log(3)], 2)
    metrics = prepare_sppo(exp, RLSettings(sppo_eta=2.0, sppo_mode=mode), beta=0.0)
    assert metrics["pairs"] == 1 and metrics["win_rate_gap"] == pytest.approx(0.25)
    pair = exp.select(exp.extra["units"])
    loss, parts = sppo_loss(pair.old_logp, pair, ctx=None)
    assert float(loss) == pytest.approx(expected)
    assert float(parts["log_ratio/winner"]) == pytest.approx(0.5)


def test_first_sppo_step_is_the_squared_target(tiny_model, prompt_file, reward_fn, tmp_path):  # noqa: F811
    """At step one the policy is its reference (log-ratio 0), so the loss is the sum of the
    squared targets: with the hard form exactly 2 * (eta / 2)^2 per pair."""
    cfg = _config(tiny_model, prompt_file, reward_fn, tmp_path / "s", "sppo",
                  train={"max_steps": 1}, rl={"sppo_eta": 4.0, "sppo_mode": "hard"})
    _, rows = _run(cfg)
    assert rows[0]["pairs"] >= 1
    assert rows[0]["policy/loss"] == pytest.approx(8.0, abs=1e-4)
