"""Which examples each process uses at each optimiser step: deterministic, seeded, resumable.

Semantics (like ``DistributedSampler`` + TRL's ``per_device_train_batch_size``): ``batch_size`` is per
process and per micro-batch, so one optimiser step uses G = batch_size * world_size * grad_accum
examples. Every epoch shuffles the dataset with ``seed + epoch`` and pads the order to a multiple of G
by repeating its first examples (so no step is short). Optimiser step s of the epoch takes the window
``order[s*G:(s+1)*G]``; micro-batch a of that window is ``window[a*B*W:(a+1)*B*W]`` and process r
takes every W-th example of it starting at r. The examples of one optimiser step are therefore the
same set for any split into processes and accumulation steps, and the position in the data is a
function of the step number alone (which is what resuming restores).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StepSampler:
    """Index plan for ``num_examples`` items; see the module docstring for the layout."""

    num_examples: int
    batch_size: int
    world_size: int
    grad_accum: int
    seed: int

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size * self.grad_accum

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.num_examples / self.global_batch))

    def total_steps(self, epochs: float, max_steps: int | None) -> int:
        """``max_steps`` when given (it overrides ``epochs``), else ceil(epochs * steps_per_epoch)."""
        if max_steps is not None:
            return max_steps
        return max(1, math.ceil(epochs * self.steps_per_epoch))

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, step within the epoch) of global optimiser step ``step`` (0-based)."""
        return divmod(step, self.steps_per_epoch)

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The shuffled, padded index order of one epoch."""
        if self.num_examples == 0:
            raise ValueError("cannot train on an empty dataset")
        gen = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(self.num_examples, generator=gen)
        needed = self.steps_per_epoch * self.global_batch
        repeats = math.ceil(needed / self.num_examples)
        return order.repeat(repeats)[:needed]

    def micro_batches(self, step: int, rank: int) -> list[list[int]]:
        """The ``grad_accum`` lists of dataset indices process ``rank`` uses at optimiser ``step``."""
        epoch, in_epoch = self.position(step)
        g = self.global_batch
        window = self.epoch_order(epoch)[in_epoch * g:(in_epoch + 1) * g]
        per_micro = self.batch_size * self.world_size
        return [window[a * per_micro:(a + 1) * per_micro][rank::self.world_size].tolist()
                for a in range(self.grad_accum)]
