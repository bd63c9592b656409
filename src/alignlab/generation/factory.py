"""Pick a generation backend by name."""

from __future__ import annotations

import importlib.util

BACKENDS = ("hf", "vllm")


class GenerationBackendError(ValueError):
    """An unknown or unavailable generation backend."""


def make_generator(backend: str = "hf", model=None, tokenizer=None, **kwargs):
    """Build a generator: ``"hf"`` wraps ``(model, tokenizer)`` in :class:`HFGenerator`.

    ``"vllm"`` is reserved for the vLLM backend: without the ``vllm`` package it fails with the
    install command; the backend itself is not implemented yet.
    """
    if backend == "hf":
        if model is None or tokenizer is None:
            raise GenerationBackendError("backend 'hf' needs a loaded model and tokenizer")
        from alignlab.generation.hf import HFGenerator

        return HFGenerator(model, tokenizer, **kwargs)
    if backend == "vllm":
        if importlib.util.find_spec("vllm") is None:
            raise GenerationBackendError(
                "generation backend 'vllm' needs the vllm package: pip install 'alignlab[vllm]' "
                "(or use backend 'hf')")
        raise GenerationBackendError("generation backend 'vllm' is not implemented yet; use 'hf'")
    raise GenerationBackendError(f"unknown generation backend {backend!r}; choose one of {BACKENDS}")
