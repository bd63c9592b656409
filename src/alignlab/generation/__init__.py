"""alignlab.generation: generation backends behind one interface (``Generator``, ``Sample``).

Names resolve lazily so that importing this package does not import torch or transformers.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "Sample": "base", "Generator": "base",
    "HFGenerator": "hf", "VLLMGenerator": "vllm",
    "make_generator": "factory", "GenerationBackendError": "base",
}


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f"alignlab.generation.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'alignlab.generation' has no attribute {name!r}")


__all__ = list(_LAZY)
