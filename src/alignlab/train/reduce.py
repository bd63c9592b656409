"""Batches onto a device, and per-process sums into global means: shared by the training loop and
the held-out evaluation (a global mean is the all-reduced sum divided by the global count, so it does
not depend on how the examples were split across processes and micro-batches)."""

from __future__ import annotations

import torch
from accelerate import Accelerator


def to_device(batch: dict, device: torch.device) -> dict:
    """Move the tensors of a collated batch to ``device`` (other values pass through)."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def global_count(acc: Accelerator, local: float) -> int:
    """The sum of ``local`` over every process."""
    return int(acc.reduce(torch.tensor(float(local), device=acc.device), "sum").item())


def global_means(acc: Accelerator, loss_sum: torch.Tensor, metric_sums: dict[str, torch.Tensor],
                 n_global: int) -> dict[str, float]:
    """``{"loss", <metric>...}``: all-reduced sums divided by the global count ``n_global``."""
    names = sorted(metric_sums)
    local = torch.stack([torch.as_tensor(loss_sum, device=acc.device).float()]
                        + [torch.as_tensor(metric_sums[n], device=acc.device).float() for n in names])
    total = acc.reduce(local, "sum") / max(n_global, 1)
    return {"loss": float(total[0]), **{name: float(total[i + 1]) for i, name in enumerate(names)}}
