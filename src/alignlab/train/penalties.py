"""Penalties added to the gradient after the data loss is back-propagated.

:class:`DeltaL1` is PAFT's sparsity penalty (Pentyala et al. 2024, "PAFT: A Parallel Training
Paradigm for Effective LLM Fine-Tuning", §3): the SFT branch minimises

    L_SFT(θ) + λ · ‖θ − θ_0‖₁

so that its delta from the shared base θ_0 is sparse and interferes less with the preference
branch's delta when the two are merged. The subgradient λ·sign(θ − θ_0) is added to each trainable
parameter's gradient once per optimiser step (before clipping), which equals back-propagating the
penalty but needs no extra backward and no cross-process reduction (θ is the same on every
process). Departures: with LoRA the penalty acts on the adapter weights' change from their
initialisation (the trainable parameters), not on the merged delta B·A; sign(0) = 0, the usual
subgradient choice at the kink.
"""

from __future__ import annotations

import torch


class DeltaL1:
    """λ‖θ − θ_0‖₁ over the trainable parameters, θ_0 taken when the object is built (before any
    checkpoint is resumed, so a resumed run keeps the true start). Parameters are held by
    identity, so wrappers (the log-prob module, DDP) do not matter."""

    def __init__(self, model: torch.nn.Module, weight: float):
        if weight < 0:
            raise ValueError(f"delta L1 weight must be >= 0, got {weight}")
        self.weight = weight
        self.pairs = [(p, p.detach().clone()) for p in model.parameters() if p.requires_grad]

    def __call__(self, model: torch.nn.Module | None = None) -> dict[str, float]:
        """Add λ·sign(θ − θ_0) to every trainable gradient; returns ``delta_l1`` = ‖θ − θ_0‖₁
        and ``delta_zero_fraction``, the share of trainable entries still equal to θ_0."""
        total, zeros, count = 0.0, 0, 0
        for p, start in self.pairs:
            delta = p.detach() - start.to(p.device)
            total += float(delta.abs().sum())
            zeros += int((delta == 0).sum())
            count += delta.numel()
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            p.grad.add_(torch.sign(delta), alpha=self.weight)
        return {"delta_l1": total, "delta_zero_fraction": zeros / max(count, 1)}
