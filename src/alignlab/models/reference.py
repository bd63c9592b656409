"""The frozen reference policy π_ref of KL-regularised methods (DPO, PPO, ...).

Under LoRA the reference is the policy with its adapter switched off (no second copy of the weights);
otherwise it is a separate frozen model. Offline methods compute reference log-probs once, up front,
with :func:`precompute_logprobs`, so training never runs the reference again.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch

from alignlab.models.shared_prefix import grouped_sequence_logprobs


class ReferenceModelError(ValueError):
    """The reference cannot be formed from the given model."""


def has_adapter(model) -> bool:
    """True for a peft model whose adapter can be disabled."""
    return hasattr(model, "peft_config") and callable(getattr(model, "disable_adapter", None))


@contextmanager
def adapter_disabled(model) -> Iterator:
    """Inside the block ``model`` behaves as its base model (peft ``disable_adapter()``).

    A model without an adapter has no built-in reference: load a separate frozen reference model
    (e.g. ``ref_model:`` in a DPO config) instead.
    """
    if not has_adapter(model):
        raise ReferenceModelError(
            f"{type(model).__name__} has no LoRA adapter to disable, so it cannot serve as its own "
            "reference; load a separate frozen reference model (ref_model in the config) or train "
            "with model.lora set")
    with model.disable_adapter():
        yield model


@contextmanager
def eval_mode(model) -> Iterator:
    """Temporarily put ``model`` in eval mode (no dropout), restoring its mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def model_device(model) -> torch.device:
    """The device of the model's first parameter."""
    return next(model.parameters()).device


def reference_logprobs(policy, batch: dict, ref_model=None, average: bool = False,
                       slots: int = 1) -> torch.Tensor:
    """``[B]`` reference sequence log-probs of ``batch`` under ``torch.no_grad()`` in eval mode.

    Uses ``ref_model`` when given, else ``policy`` with its adapter disabled. ``slots`` > 1: the
    rows are slot-major groups that share a prompt, computed once per group
    (:mod:`alignlab.models.shared_prefix`).
    """
    with torch.no_grad():
        if ref_model is not None:
            with eval_mode(ref_model):
                moved = _to_device(batch, model_device(ref_model))
                return grouped_sequence_logprobs(ref_model, moved, slots, average)
        with adapter_disabled(policy), eval_mode(policy):
            moved = _to_device(batch, model_device(policy))
            return grouped_sequence_logprobs(policy, moved, slots, average)


def precompute_logprobs(model_or_ref, batches: Iterable[dict], average: bool = False,
                        disable_adapter: bool = False, slots: int = 1) -> torch.Tensor:
    """Sequence log-probs of every row of every batch, concatenated in order, on the CPU.

    ``model_or_ref`` is a frozen reference model, or (``disable_adapter=True``) a LoRA policy whose
    adapter-free base is the reference. Runs under ``torch.no_grad()`` in eval mode. ``slots`` as in
    :func:`reference_logprobs`.
    """
    values = []
    for batch in batches:
        if disable_adapter:
            values.append(reference_logprobs(model_or_ref, batch, average=average,
                                             slots=slots).cpu())
        else:
            values.append(reference_logprobs(None, batch, ref_model=model_or_ref,
                                             average=average, slots=slots).cpu())
    return torch.cat(values) if values else torch.zeros(0)


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
