"""The ``merge`` stage: merge fine-tuned models that share a base (``alignlab merge``).

Every model in ``models`` must have the base's architecture and parameter names; its task vector is
its weights minus the base's (:mod:`alignlab.merging.methods`). Saved models of alignlab stages have
LoRA adapters already merged, so LoRA fine-tunes merge like full ones. Tensors that are not floating
point (buffers such as position ids) are taken from the base. The output is an ordinary Hugging Face
folder (safetensors) with the base's tokenizer, plus ``merge.json`` (method, weights, per-model
delta norms).

PAFT (Pentyala et al. 2024) merges an SFT model and a preference-trained model trained in parallel
from the same base; this stage is that merge step, usable for any set of fine-tunes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from alignlab.config import ModelSettings, StageConfig, StrictModel
from alignlab.merging.methods import dare_ties, task_arithmetic, ties
from alignlab.runs import RunFolder


class MergedModel(StrictModel):
    """One fine-tuned model and its weight in the merge."""

    path: str
    weight: float = 1.0


class MergeConfig(StageConfig):
    """Merge ``models`` (fine-tunes of ``base``) by task arithmetic, TIES or DARE-TIES."""

    stage: Literal["merge"] = "merge"
    base: ModelSettings
    models: list[MergedModel] = Field(min_length=1)
    method: Literal["task_arithmetic", "ties", "dare_ties"] = "task_arithmetic"
    scale: float = Field(1.0, gt=0.0, description="λ: the merged task vector's scale")
    density: float = Field(1.0, gt=0.0, le=1.0, description="TIES trim / DARE keep fraction")
    seed: int = 0


def merge_state(base: dict, others: list[dict], cfg: MergeConfig) -> tuple[dict, list[float]]:
    """The merged state dict and each model's task-vector norm."""
    weights = [m.weight for m in cfg.models]
    generator = torch.Generator().manual_seed(cfg.seed)
    merged, norms = {}, [0.0] * len(others)
    for name, theta in base.items():
        if not theta.is_floating_point():
            merged[name] = theta
            continue
        deltas = [check_tensor(o, name, theta, i) - theta for i, o in enumerate(others)]
        for i, d in enumerate(deltas):
            norms[i] += float(d.double().pow(2).sum())
        if cfg.method == "task_arithmetic":
            tau = task_arithmetic(deltas, weights)
        elif cfg.method == "ties":
            tau = ties(deltas, weights, cfg.density)
        else:
            tau = dare_ties(deltas, weights, cfg.density, generator)
        merged[name] = theta + cfg.scale * tau
    return merged, [n ** 0.5 for n in norms]


def check_tensor(state: dict, name: str, like: torch.Tensor, index: int) -> torch.Tensor:
    if name not in state or state[name].shape != like.shape:
        raise ValueError(f"models[{index}]: parameter {name!r} is missing or has another shape "
                         f"than the base's {tuple(like.shape)}; merged models must share the base")
    return state[name]


def run_merge(cfg: MergeConfig, run: RunFolder) -> Path:
    """Load the base and the models, merge, save ``model/`` and ``merge.json``."""
    from alignlab.models.loading import load_causal_lm, save_model

    base, tokenizer = load_causal_lm(cfg.base, for_training=False)
    others = [load_causal_lm(ModelSettings(path=m.path), for_training=False)[0].state_dict()
              for m in cfg.models]
    merged, norms = merge_state(base.state_dict(), others, cfg)
    base.load_state_dict(merged)
    save_model(base, tokenizer, run.model_dir)
    run.write_json("merge.json", {"method": cfg.method, "scale": cfg.scale, "density": cfg.density,
                                  "models": [{"path": m.path, "weight": m.weight, "delta_norm": n}
                                             for m, n in zip(cfg.models, norms)]})
    run.log(f"merged {len(others)} model(s) by {cfg.method} into {run.model_dir}")
    return run.model_dir
