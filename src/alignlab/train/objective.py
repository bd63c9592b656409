"""A weighted sum of registered preference objectives, built from the config's ``loss`` list."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from alignlab.losses import LossParams, LossSpec, get_loss
from alignlab.losses.terms import LossTerm


@dataclass
class Objective:
    """``sum_k weight_k * loss_k`` per example; metrics merged, plus ``loss/<name>`` per term when
    there is more than one term."""

    terms: list[tuple[float, LossSpec, LossParams, Callable]]

    @classmethod
    def from_config(cls, terms: list[LossTerm]) -> Objective:
        built = []
        for term in terms:
            spec = get_loss(term.name)
            params = spec.parse(term.params)
            built.append((term.weight, spec, params, spec.build(params)))
        return cls(built)

    @property
    def specs(self) -> list[LossSpec]:
        return [spec for _, spec, _, _ in self.terms]

    @property
    def data_kind(self) -> str:
        return self.specs[0].data_kind

    @property
    def needs(self) -> frozenset[str]:
        return frozenset().union(*(spec.needs for spec in self.specs))

    @property
    def reference(self) -> str:
        """``online`` if any term needs it, else ``cached`` if any needs a reference, else ``none``."""
        modes = {spec.reference for spec in self.specs}
        return next((mode for mode in ("online", "cached") if mode in modes), "none")

    def topk(self) -> int:
        """The largest ``k`` parameter among terms that need top-k candidates (0 if none)."""
        return max((getattr(params, "k", 0) for _, spec, params, _ in self.terms
                    if "topk" in spec.needs), default=0)

    def state_dict(self) -> dict:
        """States of the stateful terms (beta-DPO's running statistics, CRINGE's generator), saved
        with every checkpoint so a resumed run continues them."""
        return {str(i): fn.state_dict() for i, (_, _, _, fn) in enumerate(self.terms)
                if hasattr(fn, "state_dict")}

    def load_state_dict(self, state: dict) -> None:
        for i, (_, _, _, fn) in enumerate(self.terms):
            if str(i) in state:
                fn.load_state_dict(state[str(i)])

    def __call__(self, inputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total, metrics = None, {}
        for weight, spec, _, fn in self.terms:
            losses, term_metrics = fn(inputs)
            total = weight * losses if total is None else total + weight * losses
            for name, value in term_metrics.items():
                metrics.setdefault(name, value)
            if len(self.terms) > 1:
                metrics[f"loss/{spec.name}"] = losses.detach()
        return total, metrics
