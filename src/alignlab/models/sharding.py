"""Models whose parameters are sharded across processes: full weights for saving and for generation.

Under FSDP2 (``torch.distributed.fsdp.fully_shard``, what accelerate's ``fsdp_version: 2`` applies)
each parameter is a DTensor holding 1/W of its rows; under DeepSpeed ZeRO-3 each parameter is a
DeepSpeed-partitioned tensor (it carries ``ds_id``) whose local data is a flat slice. Code that needs
whole tensors (saving an ordinary Hugging Face folder, merging LoRA, ``model.generate``) must gather
them first, and gathering is collective: **every process calls these functions together**, even a
process with nothing to generate or save. With an unsharded model (one process, DDP, ZeRO-1/2) they
do what the plain code does and communicate nothing.

- :func:`sharding_kind` tells which case a model is in, from its parameters alone.
- :func:`gathered_state_dict` / :func:`save_gathered`: full weights on the main process (rank 0);
  :func:`whole_tensor`: one FSDP2 tensor whole on every process;
  the saved folder is what :func:`alignlab.models.loading.save_model` writes for an unsharded model
  (LoRA merged by default), built from a plain CPU copy of the model, since FSDP refuses deepcopy.
- :func:`gathered_for_generation`: a block in which the parameters are whole on every process and no
  forward pass communicates, so processes may generate different numbers of tokens.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from alignlab.models.loading import save_model


def sharding_kind(model: torch.nn.Module) -> str | None:
    """``"fsdp2"``, ``"zero3"`` or None (parameters whole on every process)."""
    from torch.distributed.tensor import DTensor

    for param in model.parameters():
        if isinstance(param, DTensor):
            return "fsdp2"
        if hasattr(param, "ds_id"):
            return "zero3"
    return None


def _rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


# ----------------------------------------------------------------------------- full weights


def gathered_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full CPU state dict of ``model`` (any submodule of a prepared model).

    For a sharded model every process must call this; the result is complete on rank 0 and empty
    elsewhere. An unsharded model's own state dict (on its device) is returned on every process.
    """
    kind = sharding_kind(model)
    if kind == "fsdp2":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(model, options=options)
    if kind == "zero3":
        return _zero3_state_dict(model)
    return dict(model.state_dict())


def whole_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` whole on this process: an FSDP2 shard (a DTensor, as ``state_dict()`` of a
    sharded model returns even inside :func:`gathered_for_generation`) is all-gathered, so every
    process must call this for the same tensors in the same order; any other tensor is returned
    as it is."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def _zero3_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Gather ZeRO-3 parameters module by module (never the whole model at once) onto rank 0."""
    import deepspeed

    main, state = _rank() == 0, {}
    for prefix, module in model.named_modules():
        own = list(module.named_parameters(recurse=False))
        if not own:
            continue
        with deepspeed.zero.GatheredParameters([p for _, p in own], modifier_rank=None):
            if main:
                for name, param in own:
                    state[f"{prefix}.{name}" if prefix else name] = param.detach().cpu().clone()
    if main:  # persistent buffers are not partitioned
        for name, value in model.state_dict().items():
            state.setdefault(name, value.detach().cpu().clone())
    return state


def unsharded_copy(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A plain CPU model with ``model``'s architecture (its peft LoRA adapter too) holding ``state``.

    Built empty from the config (on the meta device) and filled with ``state`` by assignment, so it
    costs no initialisation and keeps ``state``'s dtypes; non-persistent buffers (e.g. rotary
    frequencies) are copied from ``model``, where they are never sharded.
    """
    if _is_peft(model):
        from peft import get_peft_model

        adapter = model.active_adapter
        replica = get_peft_model(_empty_like(model.get_base_model()),
                                 copy.deepcopy(model.peft_config[adapter]), adapter_name=adapter)
    else:
        replica = _empty_like(model)
    replica.load_state_dict(state, strict=True, assign=True)
    live = {name: buf for name, buf in model.named_buffers()}
    for name, buf in list(replica.named_buffers()):
        if buf.is_meta:
            owner, _, leaf = name.rpartition(".")
            replica.get_submodule(owner)._buffers[leaf] = live[name].detach().cpu().clone()
    base = replica.get_base_model() if _is_peft(replica) else replica
    if getattr(base.config, "tie_word_embeddings", False) and hasattr(base, "tie_weights"):
        base.tie_weights()
    return replica.eval()


def _empty_like(hf_model: torch.nn.Module) -> torch.nn.Module:
    """An uninitialised (meta) model of ``hf_model``'s own class (not FSDP's subclass of it)."""
    cls = _unsharded_class(type(hf_model))
    with torch.device("meta"):
        empty = cls(copy.deepcopy(hf_model.config))
    if getattr(hf_model, "generation_config", None) is not None:
        empty.generation_config = copy.deepcopy(hf_model.generation_config)
    return empty


def _unsharded_class(cls: type) -> type:
    """``fully_shard`` swaps a module's class for ``FSDP<Class>(FSDPModule, Class)``; undo that."""
    from torch.distributed.fsdp import FSDPModule

    return next(c for c in cls.__mro__ if not issubclass(c, FSDPModule))


def _is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def save_gathered(model: torch.nn.Module, tokenizer, out_dir: str | Path,
                  merge_lora: bool = True) -> Path | None:
    """Save ``model`` as an ordinary HF safetensors folder from rank 0 (None on other ranks).

    Every process must call this for a sharded model (the gather is collective); the folder equals
    ``save_model(model, tokenizer, out_dir, merge_lora)`` of the same model unsharded.
    """
    if sharding_kind(model) is None:
        return save_model(model, tokenizer, out_dir, merge_lora) if _rank() == 0 else None
    state = gathered_state_dict(model)
    if _rank() != 0:
        return None
    return save_model(unsharded_copy(model, state), tokenizer, out_dir, merge_lora)


# ----------------------------------------------------------------------------- generation


@contextmanager
def gathered_for_generation(acc: Any, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Inside the block ``model``'s parameters are whole on every process; yields ``model``.

    ``acc`` is the Accelerator that prepared ``model`` or the module containing it (e.g. the
    training wrapper around the HF model); ``model`` is what will ``generate``. Every process must
    enter and leave the block together; inside it no forward pass communicates, so processes may
    generate different numbers of tokens (no ``synced_gpus`` needed). Costs one full copy of the
    model per process for the duration. No-op (and no communication) for an unsharded model.

    - FSDP2: every FSDP module of the prepared model is unsharded (all-gather) and told not to
      reshard after its forward; on exit they are resharded and their setting restored.
    - ZeRO-3: DeepSpeed's ``unwrap_model_for_generation`` (deepspeed >= 0.15) on the engine that
      holds ``model``: all parameters gathered, ZeRO-3's per-module fetch/release hooks removed, and
      re-registered on exit.
    """
    kind = sharding_kind(model)
    if kind == "fsdp2":
        with _fsdp2_unsharded(_fsdp_modules(acc, model)):
            yield model
    elif kind == "zero3":
        with _zero3_unwrapped(_owning_model(acc, model)):
            yield model
    else:
        yield model


def _owning_model(acc: Any, model: torch.nn.Module) -> torch.nn.Module | None:
    """The model ``acc`` prepared (DeepSpeed engine or FSDP root) that contains ``model``."""
    for prepared in getattr(acc, "_models", []) if acc is not None else []:
        if any(sub is model for sub in prepared.modules()):
            return prepared
    return None


def _fsdp_modules(acc: Any, model: torch.nn.Module) -> list[torch.nn.Module]:
    """Every FSDP module of the prepared model around ``model``, outermost first."""
    from torch.distributed.fsdp import FSDPModule

    top = _owning_model(acc, model) or model
    modules = [m for m in top.modules() if isinstance(m, FSDPModule)]
    covered = {id(p) for m in modules for p in m.parameters()}
    if not modules or any(id(p) not in covered for p in model.parameters()):
        raise RuntimeError("gathered_for_generation: model has FSDP-sharded parameters outside the "
                           "FSDP modules found; pass the Accelerator that prepared it")
    return modules


@contextmanager
def _fsdp2_unsharded(modules: list) -> Iterator[None]:
    """All-gather every module's parameters and keep them whole through forward passes.

    FSDP2 picks its root at the first forward; generation calls an inner module, so the outermost
    module's lazy initialisation is run first. Not resharding after forward is FSDP2's
    ``post_forward_mesh_info = None`` (what ``set_reshard_after_forward(False)`` sets); the groups'
    own values are put back on exit.
    """
    root_state = modules[0]._get_fsdp_state()
    root_state._lazy_init()
    saved = []
    for module in modules:
        for group in module._get_fsdp_state()._fsdp_param_groups:
            saved.append((group, group.post_forward_mesh_info))
            group.post_forward_mesh_info = None
        module.unshard()
    try:
        yield
    finally:
        for module in modules:
            module.reshard()
        for group, info in saved:
            group.post_forward_mesh_info = info


@contextmanager
def _zero3_unwrapped(engine: torch.nn.Module | None) -> Iterator[None]:
    if engine is None or not hasattr(engine, "optimizer"):
        raise RuntimeError("gathered_for_generation: a ZeRO-3 model needs the Accelerator whose "
                           "DeepSpeed engine holds it")
    try:
        from deepspeed.runtime.zero.stage3 import unwrap_model_for_generation
    except ImportError as exc:
        raise ImportError("generation under ZeRO-3 needs deepspeed>=0.15 "
                          "(deepspeed.runtime.zero.stage3.unwrap_model_for_generation)") from exc
    with unwrap_model_for_generation(engine):
        yield
