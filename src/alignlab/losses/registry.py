"""The preference-family objectives, registered by name with what they need.

Each objective is a pure function ``fn(inputs, params) -> (losses [B], metrics)`` or a small class
(``cls(params)`` then ``obj(inputs)``) for objectives that keep state across batches (beta-DPO's
running margin statistics). ``params`` is an instance of the objective's own pydantic model, so a
missing, unknown or out-of-range parameter fails when the config is read, with the loss named.

``reference`` says how the trainer must provide the reference model:
- ``"none"``: reference-free; the trainer neither loads nor runs one;
- ``"cached"``: summed reference log-probs, computed once and cached on disk;
- ``"online"``: per-token reference distributions (TDPO's sequential KL), so a frozen reference (or
  the LoRA policy with its adapter disabled) runs on each batch.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

REFERENCE_MODES = ("none", "cached", "online")
DATA_KINDS = ("pair", "binary", "ranked")
NEEDS = frozenset({"token_logps", "topk", "token_kl", "kl_pairs"})


class LossParams(BaseModel):
    """Base of every objective's parameter model: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class LossSpec:
    """A registered objective.

    ``data_kind``: pair | binary | ranked (what one training example is); ``paper``: short citation
    for docs; ``needs``: optional extra inputs (see :mod:`alignlab.losses.inputs`).
    """

    name: str
    fn: Callable
    params: type[LossParams]
    data_kind: str
    reference: str
    paper: str
    needs: frozenset[str] = field(default_factory=frozenset)
    summary: str = ""

    @property
    def needs_reference(self) -> bool:
        return self.reference != "none"

    def parse(self, raw: dict[str, Any]) -> LossParams:
        """Validate ``raw`` against the parameter model; errors name the loss and the key."""
        try:
            return self.params(**raw)
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(params)'}: {e['msg']}"
                                 for e in err.errors())
            raise ValueError(f"loss {self.name!r}: {problems}") from None

    def build(self, params: LossParams) -> Callable:
        """A callable ``inputs -> (losses, metrics)`` with ``params`` bound."""
        if isinstance(self.fn, type):
            return self.fn(params)
        fn = self.fn
        return lambda inputs: fn(inputs, params)


LOSSES: dict[str, LossSpec] = {}


def register_loss(spec: LossSpec) -> LossSpec:
    """Add ``spec`` to the registry; a second loss with the same name is an error."""
    if spec.name in LOSSES:
        raise ValueError(f"loss {spec.name!r} is already registered")
    if spec.reference not in REFERENCE_MODES or spec.data_kind not in DATA_KINDS:
        raise ValueError(f"loss {spec.name!r}: bad reference {spec.reference!r} or data kind "
                         f"{spec.data_kind!r}")
    if not spec.needs <= NEEDS:
        raise ValueError(f"loss {spec.name!r}: unknown needs {sorted(spec.needs - NEEDS)}")
    LOSSES[spec.name] = spec
    return spec


def objective(name: str, *, params: type[LossParams], data_kind: str, reference: str, paper: str,
              needs: tuple[str, ...] = (), summary: str = "") -> Callable:
    """Decorator registering a loss function or class under ``name``."""
    def wrap(fn):
        register_loss(LossSpec(name, fn, params, data_kind, reference, paper, frozenset(needs),
                               summary))
        return fn
    return wrap


CATALOG = ("alignlab.losses.pairwise", "alignlab.losses.reference_free", "alignlab.losses.unpaired",
           "alignlab.losses.listwise", "alignlab.losses.token_level", "alignlab.losses.auxiliary",
           "alignlab.losses.dispreference")


def load_catalog() -> dict[str, LossSpec]:
    """Import every module that registers objectives (idempotent); returns the registry."""
    for module in CATALOG:
        importlib.import_module(module)
    return LOSSES


def get_loss(name: str) -> LossSpec:
    """The registered loss called ``name``; unknown names raise KeyError with the closest match."""
    load_catalog()
    if name not in LOSSES:
        close = difflib.get_close_matches(name, list(LOSSES), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown loss {name!r}{hint} (registered: {', '.join(sorted(LOSSES))})")
    return LOSSES[name]


def losses_for(data_kind: str) -> list[str]:
    """Names of the registered losses that train on ``data_kind`` (pair | binary | ranked)."""
    load_catalog()
    return sorted(n for n, s in LOSSES.items() if s.data_kind == data_kind)


REFERENCE_WORDS = {"none": "no", "cached": "yes (cached)", "online": "yes (online, per batch)"}


def objectives_table() -> str:
    """A markdown table of every registered objective (the README's methods table is checked
    against this registry by the tests)."""
    load_catalog()
    lines = ["| objective | data | reference model | paper | what it does |",
             "|---|---|---|---|---|"]
    for name in sorted(LOSSES):
        spec = LOSSES[name]
        lines.append(f"| `{name}` | {spec.data_kind} | {REFERENCE_WORDS[spec.reference]} | "
                     f"{spec.paper} | {spec.summary} |")
    return "\n".join(lines)
