"""Losses registered by name, with what they need: a reference model or not, and which data kind.

Stages and configs look losses up here, so a misspelled loss name fails when the config is read
(``get_loss`` names the closest registered loss), not at the first training step.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

from alignlab.losses.preference import dpo_sigmoid_loss
from alignlab.losses.reward import bradley_terry_loss
from alignlab.losses.sft import nll_sum


@dataclass(frozen=True)
class LossSpec:
    """A registered loss: ``data_kind`` is a records kind (conversation | pair | binary | ranked);
    ``unit`` is what the loop counts to form the global mean (``token`` or ``pair``)."""

    name: str
    fn: Callable
    needs_reference: bool
    data_kind: str
    unit: str
    family: str


LOSSES: dict[str, LossSpec] = {}


def register_loss(spec: LossSpec) -> LossSpec:
    """Add ``spec`` to the registry; a second loss with the same name is an error."""
    if spec.name in LOSSES:
        raise ValueError(f"loss {spec.name!r} is already registered")
    LOSSES[spec.name] = spec
    return spec


def get_loss(name: str) -> LossSpec:
    """The registered loss called ``name``; unknown names raise KeyError with the closest match."""
    if name not in LOSSES:
        close = difflib.get_close_matches(name, list(LOSSES), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown loss {name!r}{hint} (registered: {', '.join(sorted(LOSSES))})")
    return LOSSES[name]


def losses_for(family: str) -> list[str]:
    """Names of the registered losses of one family (``sft``, ``reward``, ``preference``)."""
    return sorted(n for n, s in LOSSES.items() if s.family == family)


register_loss(LossSpec("nll", nll_sum, needs_reference=False, data_kind="conversation",
                       unit="token", family="sft"))
register_loss(LossSpec("bradley_terry", bradley_terry_loss, needs_reference=False,
                       data_kind="pair", unit="pair", family="reward"))
register_loss(LossSpec("dpo_sigmoid", dpo_sigmoid_loss, needs_reference=True, data_kind="pair",
                       unit="pair", family="preference"))
