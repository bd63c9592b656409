"""alignlab.models: loading (hub name, folder, GGUF), LoRA, memory-lean log-probs, the reference.

Submodules import torch/transformers; this package itself stays light and resolves names lazily.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "load_causal_lm": "loading", "load_reward_model": "loading", "save_model": "loading",
    "resolve_model_source": "loading", "ModelLoadError": "loading",
    "token_logprobs": "logprobs", "sequence_logprobs": "logprobs", "reward_scores": "logprobs",
    "adapter_disabled": "reference", "reference_logprobs": "reference",
    "precompute_logprobs": "reference",
}


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f"alignlab.models.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'alignlab.models' has no attribute {name!r}")


__all__ = list(_LAZY)
