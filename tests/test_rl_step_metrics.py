"""Pieces of the online update that make one process and several agree: step metrics weighted over
chunks and processes, explained variance from summed moments, the dropout check and the
conditions under which the update's forward replaces the rollout's no-grad forward."""

from __future__ import annotations

import pytest
import torch
from test_models_tiny import make_tiny_lm

from alignlab.rl.objectives import (
    explained_variance_from_sums,
    explained_variance_sums,
    value_loss,
)
from alignlab.rl.onpolicy import LiveForward, has_dropout, reuses_update_forward
from alignlab.rl.processes import ALONE
from alignlab.rl.step_metrics import StepMetrics


class TwoProcesses:
    """Stands in for two processes whose partners hold ``other``: ``sum`` adds it."""

    rank, size = 0, 2

    def __init__(self, other: torch.Tensor):
        self.other = other

    def sum(self, tensor):
        return tensor + self.other


def test_step_metrics_are_weighted_means_over_chunks_and_processes():
    here, there = StepMetrics(), StepMetrics()
    here.add("policy", {"loss": 1.0, "clip_fraction": 0.5}, 3.0)   # 3 tokens
    here.add("policy", {"loss": 4.0, "clip_fraction": float("nan")}, 1.0)
    there.add("policy", {"loss": 2.0, "clip_fraction": 0.0}, 0.0)  # a process without units
    there.add("policy", {"loss": 0.0, "clip_fraction": 0.25}, 4.0)
    partner = torch.tensor([there.totals[k] for k in sorted(there.totals)]
                           + [there.weights[k] for k in sorted(there.totals)], dtype=torch.float64)
    means = here.global_means(TwoProcesses(partner))
    assert means["policy/loss"] == pytest.approx((3 * 1.0 + 4.0 + 0.0) / 8)
    assert means["policy/clip_fraction"] == pytest.approx((3 * 0.5 + 4 * 0.25) / 7)  # nan left out
    assert StepMetrics().global_means(ALONE) == {}


def test_explained_variance_from_moments_of_chunks_equals_the_whole():
    gen = torch.Generator().manual_seed(0)
    values, returns = torch.randn(4, 5, generator=gen), torch.randn(4, 5, generator=gen)
    mask = torch.tensor([[1., 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]])
    whole = float(value_loss(values, values, returns, mask)[1]["explained_variance"])
    parts = sum(explained_variance_sums(values[i:i + 2], returns[i:i + 2], mask[i:i + 2])
                for i in (0, 2))
    assert explained_variance_from_sums(parts) == pytest.approx(whole, rel=1e-6)
    flat = explained_variance_sums(values, torch.full_like(values, 0.3), mask)
    assert explained_variance_from_sums(flat) != explained_variance_from_sums(flat)  # nan: Var(R) 0


def test_value_clip_fraction_counts_only_moves_beyond_the_clip_range():
    # token 0 moves 0.16 < 0.2, but in float32 old + (v - old) != v and the "clipped" square comes
    # out larger by rounding: not clipped. Tokens 1 and 2 move 0.5 and are clipped toward old,
    # which is the larger loss when the return lies beyond v (R = 5 and -5), not when it lies
    # behind old (R = -5 and 5).
    old = torch.tensor([[-0.13245642185211182, 0.2, 0.3]])
    values = torch.tensor([[0.028490161523222923, 0.7, -0.2]])
    for far, expected in ((5.0, 2 / 3), (-5.0, 0.0)):
        returns = torch.tensor([[0.042978089302778244, far, -far]])
        _, metrics = value_loss(values, old, returns, torch.ones(1, 3), clip_range=0.2)
        assert float(metrics["clip_fraction"]) == pytest.approx(expected)


def test_dropout_is_found_in_modules_and_in_config_fields():
    assert not has_dropout(make_tiny_lm(0))
    assert has_dropout(make_tiny_lm(0, attention_dropout=0.1))  # functional, config only
    assert has_dropout(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.1)))
    assert not has_dropout(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.0)))
    assert not has_dropout(None)


@pytest.mark.parametrize("epochs, minibatches, micro_rows, models, expected", [
    (1, 1, None, (None,), True),
    (1, 1, 8, (None,), True),        # micro-batches of 8 units x 2 rows hold all 16 rows
    (1, 1, 4, (None,), False),       # the rollout would be split
    (2, 1, None, (None,), False),    # a second epoch sees moved weights
    (1, 2, None, (None,), False),    # so does a second minibatch
    (1, 1, None, (torch.nn.Dropout(0.1),), False),
])
def test_the_update_forward_is_reused_only_for_one_unsplit_step(epochs, minibatches, micro_rows,
                                                                models, expected):
    assert reuses_update_forward(epochs, minibatches, micro_rows, 16, 2, models) is expected


def test_live_forward_rows_are_trimmed_like_a_selected_minibatch():
    live = LiveForward(torch.arange(12.).view(3, 4), torch.ones(3, 4))
    picked = live.rows(torch.tensor([2, 0]), 2)
    assert picked.logp.tolist() == [[8., 9.], [0., 1.]] and picked.values.shape == (2, 2)
