"""FSDP2 and DeepSpeed through accelerate: what the shared loop sets up around ``prepare``.

A stage is launched with an accelerate config (``recipes/accelerate/*.yaml``); the loop is the same
for DDP, FSDP2 and DeepSpeed ZeRO-2/3, and this module holds the few places where they differ:

- **FSDP wrap units.** The loop prepares a forward wrapper (``TokenLogprobModule``, ...) around the
  HF model, which has no ``_no_split_modules`` of its own, so accelerate's transformer-based auto-wrap
  would shard only the root. When the config names no classes, the HF model's ``_no_split_modules``
  (its decoder layers) are used, as accelerate does for a bare HF model.
- **FSDP version.** Only FSDP2 (``fsdp_version: 2``) is supported: FSDP1's flat parameters break the
  per-parameter gathering of :mod:`alignlab.models.sharding`.
- **DeepSpeed batch settings.** No dataloader is prepared, so the config's ``auto`` micro-batch size,
  train batch size and gradient clipping are filled from ``train.batch_size`` and
  ``train.max_grad_norm``. DeepSpeed's own accumulation must stay at 1: the loop accumulates
  ``train.grad_accum`` micro-batches itself and marks the last one as the step boundary.

Departure (FSDP on CPU). accelerate 1.16 turns FSDP on only for accelerator devices: with
``Accelerator(cpu=True)`` (what a CPU-only machine needs for the launched processes to join one gloo
group) its state becomes MULTI_CPU and ``ACCELERATE_USE_FSDP`` is ignored. PyTorch's FSDP2 itself
runs on CPU with gloo, so :func:`enable_cpu_fsdp` switches such a state to FSDP with the plugin read
from the same launcher environment. Everything after that is accelerate's own FSDP2 code
(``fully_shard`` in ``prepare``, sharded ``save_state``/``load_state``, ``clip_grad_norm_``,
``no_sync``). It exists so that CI exercises the FSDP2 path on two CPU processes; it is not a way to
train fast.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from alignlab.config import TrainSettings


def fsdp_requested() -> bool:
    """True when the launcher asked for FSDP (``accelerate launch`` with an FSDP config)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def enable_cpu_fsdp(acc: Accelerator) -> bool:
    """Switch a multi-process CPU (gloo) accelerator to FSDP when the launcher asked for it.

    Returns True when it did; a no-op otherwise (GPU runs, unlaunched runs, no FSDP config). See
    the module docstring for why this is needed and what it changes.
    """
    if not fsdp_requested() or acc.distributed_type != DistributedType.MULTI_CPU:
        return False
    from accelerate.state import PartialState
    from accelerate.utils import FullyShardedDataParallelPlugin

    plugin = getattr(acc.state, "fsdp_plugin", None) or FullyShardedDataParallelPlugin()
    if acc.mixed_precision != "no":
        plugin.set_mixed_precision(acc.mixed_precision)
    acc.state.fsdp_plugin = plugin
    acc.state.distributed_type = DistributedType.FSDP
    # AcceleratorState re-reads PartialState's copy whenever it is instantiated again.
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    return True


def is_sharded_run(acc: Accelerator) -> bool:
    """True under FSDP or DeepSpeed (any ZeRO stage)."""
    return acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def uses_deepspeed(acc: Accelerator) -> bool:
    """True under DeepSpeed: its engine steps the optimiser inside ``accelerator.backward``."""
    return acc.distributed_type == DistributedType.DEEPSPEED


@contextlib.contextmanager
def accumulation_boundary(acc: Accelerator, last: bool) -> Iterator[None]:
    """Wrap each micro-batch's ``accelerator.backward``: under DeepSpeed it tells the engine whether
    this micro-batch ends the optimiser step (``last``), where the engine clips, steps the optimiser
    and zeroes the gradients inside ``backward``; before it, gradients only accumulate. A no-op for
    other runs (there ``optimizer.step()`` does the step)."""
    if not uses_deepspeed(acc):
        yield
        return
    acc.sync_gradients = last
    try:
        yield
    finally:
        acc.sync_gradients = True


def clip_grad_norm(acc: Accelerator, module: torch.nn.Module, max_norm: float) -> torch.Tensor:
    """``acc.clip_grad_norm_(module.parameters(), max_norm)`` for any of several prepared models.

    Under FSDP accelerate 1.16 finds the model the parameters belong to by comparing parameter
    lists with ``==``, which raises ("Boolean value of Tensor ... ambiguous") for a second prepared
    model with as many parameters as the first (the online stage's policy and critic). So under
    FSDP2 the global norm is taken here: the gradients' total norm per device mesh (a DTensor norm
    reduced over the shards with ``full_tensor``), combined, and every gradient scaled by
    ``max_norm / norm`` when that is below 1 (torch's ``get_total_norm`` and
    ``clip_grads_with_norm_``). Returns the norm before clipping."""
    if acc.distributed_type != DistributedType.FSDP:
        return acc.clip_grad_norm_(module.parameters(), max_norm)
    from torch.distributed.tensor import DTensor
    from torch.nn.utils import clip_grads_with_norm_, get_total_norm

    acc.unscale_gradients()
    by_mesh: dict = {}
    for param in module.parameters():
        if param.grad is not None:
            mesh = param.grad.device_mesh if isinstance(param.grad, DTensor) else None
            by_mesh.setdefault(mesh, []).append(param)
    norms = [get_total_norm([p.grad for p in params]) for params in by_mesh.values()]
    norms = [n.full_tensor() if isinstance(n, DTensor) else n for n in norms]
    total = torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())
    if math.isfinite(max_norm):
        for params in by_mesh.values():
            clip_grads_with_norm_(params, max_norm, total)
    return total


def lockstep_batches(n_items: int, world: int, batch_size: int) -> int:
    """Batches of the process with the most items when ``n_items`` are dealt round-robin over
    ``world`` processes: how many forward passes every process runs when they must run in step."""
    most_items = math.ceil(n_items / world)
    return math.ceil(most_items / batch_size)


def prepare_sharding(acc: Accelerator, model: torch.nn.Module, settings: TrainSettings) -> None:
    """Settle the FSDP / DeepSpeed settings that depend on the model and the run, before
    ``acc.prepare(model, optimizer)``; a no-op for other runs."""
    if acc.distributed_type == DistributedType.FSDP:
        _settle_fsdp(acc.state.fsdp_plugin, model)
    elif uses_deepspeed(acc):
        _settle_deepspeed(acc.state.deepspeed_plugin.deepspeed_config, settings,
                          acc.num_processes)


def _settle_fsdp(plugin, model: torch.nn.Module) -> None:
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    if plugin.fsdp_version != 2:
        raise ValueError("alignlab runs FSDP as FSDP2 only: set fsdp_version: 2 in the accelerate "
                         "config (see recipes/accelerate/fsdp2.yaml)")
    by_class = plugin.auto_wrap_policy is transformer_auto_wrap_policy
    if by_class and not plugin.transformer_cls_names_to_wrap:
        plugin.transformer_cls_names_to_wrap = wrap_class_names(model)


def wrap_class_names(model: torch.nn.Module) -> list[str]:
    """Class names from the first ``_no_split_modules`` found in ``model``'s tree that occur in it
    (for a Llama: ``["LlamaDecoderLayer"]``)."""
    present = {type(m).__name__ for m in model.modules()}
    for module in model.modules():
        names = getattr(module, "_no_split_modules", None)
        if names:
            found = [name for name in names if name in present]
            if found:
                return found
    return []


def _settle_deepspeed(config: dict, settings: TrainSettings, world: int) -> None:
    accumulation = config.get("gradient_accumulation_steps", "auto")
    if accumulation not in ("auto", 1):
        raise ValueError(f"DeepSpeed gradient_accumulation_steps={accumulation}: leave it 'auto' "
                         "(or 1) and set train.grad_accum; the loop accumulates micro-batches itself")
    config["gradient_accumulation_steps"] = 1
    filled = {"train_micro_batch_size_per_gpu": settings.batch_size,
              "train_batch_size": settings.batch_size * world,
              "gradient_clipping": settings.max_grad_norm or 0.0}
    for key, value in filled.items():
        if config.get(key, "auto") == "auto":
            config[key] = value
