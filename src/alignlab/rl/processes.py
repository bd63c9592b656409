"""The processes that share one online rollout, as the statistics of the loop see them.

With several processes (``accelerate launch``) each one samples and scores its own block of the
iteration's prompts, but whatever is defined over the *global* batch (advantage whitening, batch
score normalisation, the minibatch partition, logged means and standard deviations) must be computed
from every process's rows. The algorithms take a :class:`Processes` and call ``sum`` / ``gather`` on
it; :data:`ALONE` is the one-process case (identity), :class:`AcceleratorProcesses` wraps an
``accelerate.Accelerator`` (every process must make the same calls in the same order).
"""

from __future__ import annotations

from typing import Protocol

import torch


class Processes(Protocol):
    """``rank`` of this process among ``size``; ``sum``: element-wise sum of a tensor over the
    processes; ``gather``: the processes' tensors (same shape on each) concatenated along dim 0 in
    rank order."""

    rank: int
    size: int

    def sum(self, tensor: torch.Tensor) -> torch.Tensor: ...

    def gather(self, tensor: torch.Tensor) -> torch.Tensor: ...


class _Alone:
    """One process: ``sum`` and ``gather`` return their argument."""

    rank = 0
    size = 1

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor


ALONE: Processes = _Alone()


class AcceleratorProcesses:
    """The processes of an ``accelerate.Accelerator`` (gloo on CPU, nccl on GPUs)."""

    def __init__(self, acc):
        self.acc = acc
        self.rank = acc.process_index
        self.size = acc.num_processes

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.size == 1:
            return tensor
        return self.acc.reduce(tensor.to(self.acc.device), "sum").to(tensor.device)

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.size == 1:
            return tensor
        return self.acc.gather(tensor.contiguous().to(self.acc.device)).to(tensor.device)


def processes_of(acc) -> Processes:
    """:data:`ALONE` for one process, else the accelerator's processes."""
    return ALONE if acc.num_processes == 1 else AcceleratorProcesses(acc)
