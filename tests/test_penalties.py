"""PAFT's L1 penalty on the SFT delta (Pentyala et al. 2024): the subgradient by hand, and an SFT run
whose delta it shrinks."""

import pytest
import torch
from safetensors.torch import load_file
from test_train_stages import _sft_config, tiny_model  # noqa: F401

from alignlab.runs import RunFolder, read_metrics
from alignlab.train.penalties import DeltaL1
from alignlab.train.sft import SFTConfig, run_sft


def test_subgradient_and_metrics_by_hand():
    # theta_0 = (1, -1, 0.5) -> theta = (1.5, -1, 0): delta (0.5, 0, -0.5), |delta|_1 = 1,
    # one entry of three unchanged; lambda = 0.1 adds (0.1, 0, -0.1) to the gradient (1, 1, 1)
    layer = torch.nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -1.0, 0.5]]))
    penalty = DeltaL1(layer, 0.1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.5, -1.0, 0.0]]))
    layer.weight.grad = torch.ones(1, 3)
    metrics = penalty(layer)
    assert layer.weight.grad.tolist() == [pytest.approx([1.1, 1.0, 0.9])]
    assert metrics == {"delta_l1": pytest.approx(1.0), "delta_zero_fraction": pytest.approx(1 / 3)}


def test_frozen_parameters_are_not_penalised():
    layer = torch.nn.Linear(2, 2)
    layer.bias.requires_grad_(False)
    assert [p.shape for p, _ in DeltaL1(layer, 1.0).pairs] == [torch.Size([2, 2])]
    with pytest.raises(ValueError, match=">= 0"):
        DeltaL1(layer, -1.0)


def _delta_l1(model_dir, start_dir) -> float:
    trained = load_file(f"{model_dir}/model.safetensors")
    start = load_file(f"{start_dir}/model.safetensors")
    return sum(float((trained[k] - start[k]).abs().sum()) for k in start)


def test_sft_with_the_penalty_moves_less_from_its_start(tiny_model, tmp_path):  # noqa: F811
    """Same data, seed and steps: the penalised run's ‖θ − θ_0‖₁ is smaller, and the logged
    metric is that norm."""
    deltas = {}
    for weight in (0.0, 0.05):
        base = _sft_config(tiny_model, tmp_path, tmp_path / f"run{weight}", max_steps=8,
                           learning_rate=1e-2)
        cfg = SFTConfig(**{**base.model_dump(), "delta_l1": weight})
        model_dir = run_sft(cfg, RunFolder(cfg.out, cfg, echo=False))
        deltas[weight] = _delta_l1(model_dir, tiny_model)
        rows = [r for r in read_metrics(cfg.out) if "loss" in r]
        if weight:
            # the metric is measured before the last step's update: below the final norm
            assert 0 < rows[-1]["delta_l1"] <= deltas[weight]
    assert deltas[0.05] < 0.8 * deltas[0.0], deltas
