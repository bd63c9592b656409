"""Pick a generation backend by name."""

from __future__ import annotations

import importlib.util

from alignlab.generation.base import GenerationBackendError

BACKENDS = ("hf", "vllm")


def make_generator(backend: str = "hf", model=None, tokenizer=None, **kwargs):
    """Build a generator: ``"hf"`` wraps ``(model, tokenizer)`` in :class:`HFGenerator`.

    ``"vllm"`` builds :class:`~alignlab.generation.vllm.VLLMGenerator` from ``model_path`` (default:
    ``model.name_or_path``), the folder with the policy's safetensors and tokenizer; the trainer then
    pushes its live weights with ``generator.sync_weights(model)``. It needs the ``vllm`` package and
    a CUDA GPU; without either it fails with what is missing and suggests backend ``"hf"``.
    """
    if backend == "hf":
        if model is None or tokenizer is None:
            raise GenerationBackendError("backend 'hf' needs a loaded model and tokenizer")
        from alignlab.generation.hf import HFGenerator

        return HFGenerator(model, tokenizer, **kwargs)
    if backend == "vllm":
        return _make_vllm(model, tokenizer, **kwargs)
    raise GenerationBackendError(f"unknown generation backend {backend!r}; choose one of {BACKENDS}")


def _make_vllm(model, tokenizer, model_path=None, **kwargs):
    if importlib.util.find_spec("vllm") is None:
        raise GenerationBackendError(
            "generation backend 'vllm' needs the vllm package, which is not installed: "
            "pip install vllm (or pip install 'alignlab[vllm]'); or use backend 'hf'")
    import torch

    if not torch.cuda.is_available():
        raise GenerationBackendError(
            "generation backend 'vllm' needs a CUDA GPU (torch.cuda.is_available() is False); "
            "use backend 'hf'")
    model_path = model_path or getattr(model, "name_or_path", None)
    if not model_path or tokenizer is None:
        raise GenerationBackendError(
            "backend 'vllm' needs model_path (a folder with the model's safetensors and tokenizer) "
            "and the tokenizer")
    from alignlab.generation.vllm import VLLMGenerator

    return VLLMGenerator(model_path, tokenizer, **kwargs)
