"""Model merging by hand: task arithmetic, TIES (trim, elect, disjoint mean), DARE, and the stage."""

import json

import pytest
import torch
from test_models_tiny import save_tiny_lm

from alignlab.merging.methods import dare, dare_ties, task_arithmetic, ties, trim
from alignlab.stages import build_stage_config, run_stage

T1, T2 = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([3.0, 1.0, -0.5])


def test_task_arithmetic_by_hand():
    assert task_arithmetic([T1, T2], [0.5, 0.5]).tolist() == [2.0, -0.5, 0.0]


def test_ties_by_hand():
    # trim to 2 of 3 entries: [1, -2, 0] and [3, 1, 0]; elected sign of the sum [4, -1, 0]: +, -, 0;
    # disjoint mean: entry 0 (1 + 3) / 2 = 2, entry 1 only -2 agrees, entry 2 nothing -> 0
    assert trim(T1, 2 / 3).tolist() == [1.0, -2.0, 0.0]
    assert ties([T1, T2], [1.0, 1.0], 2 / 3).tolist() == [2.0, -2.0, 0.0]
    # density 1 keeps everything: entry 2 sums to 0, so no sign is elected and it stays 0
    assert ties([T1, T2], [1.0, 1.0], 1.0).tolist() == [2.0, -2.0, 0.0]


def test_dare_drops_and_rescales_with_the_generator():
    delta = torch.ones(10000)
    out = dare(delta, 0.25, torch.Generator().manual_seed(0))
    kept = out[out != 0]
    assert torch.all(kept == 4.0)  # survivors rescaled by 1 / 0.25
    assert abs(kept.numel() - 2500) < 150
    assert abs(float(out.mean()) - 1.0) < 0.06  # the rescale keeps the expected delta
    same = dare_ties([T1, T2], [1.0, 1.0], 1.0, torch.Generator().manual_seed(0))
    assert same.tolist() == ties([T1, T2], [1.0, 1.0], 1.0).tolist()


def _shifted(base_dir, out_dir, shift, seed):
    """A copy of the tiny LM at ``base_dir`` with ``shift`` added to one weight matrix."""
    from safetensors.torch import load_file, save_file

    save_tiny_lm(out_dir, seed=seed)
    state = load_file(base_dir / "model.safetensors")
    name = next(k for k in state if k.endswith("q_proj.weight"))
    state[name] = state[name] + shift
    save_file(state, out_dir / "model.safetensors", metadata={"format": "pt"})
    return name


def test_merge_stage_is_the_weighted_task_vector(tmp_path):
    from safetensors.torch import load_file

    base = save_tiny_lm(tmp_path / "base", seed=0)
    name = _shifted(base, tmp_path / "a", 1.0, 0)
    _shifted(base, tmp_path / "b", -3.0, 0)
    cfg = build_stage_config({"stage": "merge", "out": str(tmp_path / "m"),
                              "base": {"path": str(base)},
                              "models": [{"path": str(tmp_path / "a"), "weight": 0.5},
                                         {"path": str(tmp_path / "b"), "weight": 0.25}]},
                             source="test")
    model_dir = run_stage(cfg)
    before, after = load_file(base / "model.safetensors"), load_file(model_dir / "model.safetensors")
    # 0.5 * 1 + 0.25 * (-3) = -0.25 on the shifted matrix, nothing elsewhere
    assert torch.allclose(after[name], before[name] - 0.25, atol=1e-6)
    other = next(k for k in before if k.endswith("k_proj.weight"))
    assert torch.equal(after[other], before[other])
    report = json.loads((tmp_path / "m" / "merge.json").read_text())
    assert report["models"][0]["delta_norm"] == pytest.approx(before[name].numel() ** 0.5, rel=1e-4)


def test_merge_refuses_models_of_another_shape(tmp_path):
    base = save_tiny_lm(tmp_path / "base", seed=0)
    save_tiny_lm(tmp_path / "wide", seed=0, hidden_size=64, intermediate_size=128)
    cfg = build_stage_config({"stage": "merge", "out": str(tmp_path / "m"),
                              "base": {"path": str(base)},
                              "models": [{"path": str(tmp_path / "wide")}]},
                             source="test")
    with pytest.raises(ValueError, match=r"models\[0\]: parameter .* another shape"):
        run_stage(cfg)
