"""The ``loss`` entries of a stage config: a registered objective, its weight and parameters.

Shared by the preference stage and online DPO; each entry is validated against the objective's
registered parameter model (:mod:`alignlab.losses.registry`) when the config is read.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from alignlab.losses.registry import get_loss


class LossTerm(BaseModel):
    """One objective of the preference stage: ``{name: dpo, beta: 0.1, weight: 1.0}``.

    Keys other than ``name`` and ``weight`` are the objective's own parameters, validated against its
    registered parameter model (``alignlab.losses``) when the config is read.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str
    weight: float = Field(1.0, gt=0.0)

    @model_validator(mode="after")
    def _check_params(self) -> "LossTerm":
        try:
            spec = get_loss(self.name)
        except KeyError as err:
            raise ValueError(err.args[0]) from None
        spec.parse(self.params)
        return self

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def loss_term_list(value):
    """``loss:`` may be one name, one mapping or a list of either; always a list of mappings."""
    if isinstance(value, (dict, str)):
        value = [value]
    return [{"name": v} if isinstance(v, str) else v for v in value]

