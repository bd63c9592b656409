"""A trained outcome or process reward model (a *verifier*) and how it reads a solution.

The ``orm`` / ``prm`` stages save a sequence-classification model plus ``verifier.json``
(:class:`VerifierSpec`: what kind it is, how steps are joined and tagged, how step scores combine,
the lengths it was trained with). :func:`load_verifier` opens such a folder as a scorer with the
usual ``score(prompts, completions)`` (one number per solution) and ``step_scores`` (one per step),
so verification, best-of-N and the online trainer's dense process rewards read a verifier exactly as
it was trained: the same encoding (:func:`alignlab.data.step_tokenize.encode_steps`) and one forward
per solution for all its steps.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from alignlab.config import ModelSettings
from alignlab.data.records import Messages
from alignlab.data.step_tokenize import EncodedSteps, encode_steps, split_steps
from alignlab.losses.process import aggregate_step_scores, num_labels_for, step_probabilities
from alignlab.models.loading import load_reward_model
from alignlab.models.logprobs import position_scores

SPEC_FILE = "verifier.json"


@dataclass(frozen=True)
class VerifierSpec:
    """How a verifier reads solutions (saved as ``verifier.json`` next to its weights).

    ``kind``: ``orm`` (one score at the last token) or ``prm`` (one per step). ``target``: the head
    (``binary``/``soft``: one logit; ``three_class``: three). ``separator`` / ``tag``: how steps are
    joined (:func:`alignlab.data.step_tokenize.join_steps`). ``aggregation``: the solution score of a
    PRM (:func:`alignlab.losses.process.aggregate_step_scores`). ``every_token``: an ORM trained at
    every completion token (scored at the last one)."""

    kind: str = "prm"
    target: str = "binary"
    neutral_as_positive: bool = False
    separator: str = "\n"
    tag: str | None = None
    aggregation: str = "product"
    every_token: bool = False
    max_length: int = 512
    max_prompt_length: int = 256

    def write(self, folder: str | Path) -> None:
        (Path(folder) / SPEC_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, folder: str | Path) -> VerifierSpec:
        """The spec saved in ``folder``; a missing or bad file is a clear error naming it."""
        path = Path(folder) / SPEC_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not a verifier folder (train one with `alignlab orm` "
                                    "or `alignlab prm`)")
        try:
            raw = json.loads(path.read_text())
            known = {f.name for f in fields(cls)}
            return cls(**{k: v for k, v in raw.items() if k in known})
        except (json.JSONDecodeError, TypeError) as exc:
            raise ValueError(f"{path}: not a valid verifier spec ({exc})") from None


def encode_solution(tokenizer: Any, spec: VerifierSpec, prompt: Messages, steps: Sequence[str],
                    every_token: bool = False) -> EncodedSteps:
    """``prompt`` + the steps as one sequence with its scored positions: each step's last token
    (PRM), the last token (ORM) or every completion token (``every_token``: ORM training)."""
    enc = encode_steps(tokenizer, prompt, steps, spec.max_length, spec.max_prompt_length,
                       spec.separator, spec.tag)
    if spec.kind == "prm":
        return enc
    last = len(enc.input_ids) - 1
    positions = list(range(enc.completion_start, last + 1)) if every_token else [last]
    return EncodedSteps(enc.input_ids, enc.completion_start, positions, 0)


def collate_positions(items: Sequence[EncodedSteps], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` / ``attention_mask`` and the flat ``rows`` / ``positions`` of every
    scored token (solution by solution, in order)."""
    width = max(len(item.input_ids) for item in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    rows, positions = [], []
    for i, item in enumerate(items):
        ids[i, : len(item.input_ids)] = torch.tensor(item.input_ids, dtype=torch.long)
        mask[i, : len(item.input_ids)] = 1
        rows += [i] * len(item.positions)
        positions += item.positions
    return {"input_ids": ids, "attention_mask": mask, "rows": torch.tensor(rows, dtype=torch.long),
            "positions": torch.tensor(positions, dtype=torch.long)}


def batch_logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[S, C]`` head outputs at the batch's scored positions (one forward)."""
    return position_scores(model, batch["input_ids"], batch["attention_mask"], batch["rows"],
                           batch["positions"])


@torch.no_grad()
def score_encoded(model, items: Sequence[EncodedSteps], pad_id: int, batch_size: int,
                  neutral_as_positive: bool = False) -> list[list[float]]:
    """P(right) at every scored position of every item, batched by length, no gradients."""
    out: list[list[float]] = [[] for _ in items]
    order = sorted(range(len(items)), key=lambda i: len(items[i].input_ids))
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        chunk = [i for i in order[start:start + batch_size] if items[i].positions]
        if not chunk:
            continue
        batch = {k: v.to(device) for k, v in
                 collate_positions([items[i] for i in chunk], pad_id).items()}
        probs = step_probabilities(batch_logits(model, batch), neutral_as_positive).cpu().tolist()
        for row, value in zip(batch["rows"].tolist(), probs):
            out[chunk[row]].append(value)
    return out


@dataclass
class Verifier:
    """A loaded ORM or PRM as a scorer (see the module docstring)."""

    model: Any
    tokenizer: Any
    spec: VerifierSpec
    batch_size: int = 16
    name: str = "verifier"

    def step_scores(self, prompts: Sequence[Messages], completions: Sequence[str]
                    ) -> list[list[float]]:
        """P(step right) per step (PRM), or ``[P(answer right)]`` (ORM), per completion. The
        completion is split into steps with the verifier's separator and tag; a completion with no
        step is scored as one empty step."""
        if len(prompts) != len(completions):
            raise ValueError(f"verifier {self.name!r}: {len(prompts)} prompts but "
                             f"{len(completions)} completions")
        items = [encode_solution(self.tokenizer, self.spec, p,
                                 split_steps(c, self.spec.separator, self.spec.tag) or [""])
                 for p, c in zip(prompts, completions)]
        self.model.eval()
        return score_encoded(self.model, items, self.tokenizer.pad_token_id, self.batch_size,
                             self.spec.neutral_as_positive)

    def score(self, prompts: Sequence[Messages], completions: Sequence[str]) -> list[float]:
        """One score per completion: the ORM's P(right), or the PRM's aggregated step scores."""
        return [aggregate_step_scores(s, self.spec.aggregation if self.spec.kind == "prm" else "last")
                for s in self.step_scores(prompts, completions)]


def load_verifier(path: str | Path, batch_size: int = 16, device=None, name: str = "verifier",
                  aggregation: str | None = None) -> Verifier:
    """Open a verifier folder written by the ``orm`` / ``prm`` stages (``aggregation`` overrides the
    saved one for a PRM)."""
    spec = VerifierSpec.read(path)
    if aggregation is not None:
        spec = replace(spec, aggregation=aggregation)
    model, tokenizer = load_reward_model(ModelSettings(path=str(path)), for_training=False,
                                         num_labels=num_labels_for(spec.target))
    if device is not None:
        model.to(device)
    return Verifier(model, tokenizer, spec, batch_size, name)
