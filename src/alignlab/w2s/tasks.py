"""Weak-to-strong tasks: examples, their encoding for one model, batches and class logits.

Two task kinds share one shape, *an example has a gold class and a model gives class logits*:

- ``classify``: a :class:`~alignlab.data.labelled.LabelledText` with ``num_classes`` classes, scored
  by a sequence-classification head with ``num_classes`` outputs.
- ``pairwise`` (reward modelling, Burns et al. 2023 §4.1's ChatGPT reward-modelling task): a
  preference pair shown as (A, B) in a seeded random order, class 1 when A is the gold-preferred
  response. A one-output reward head scores A and B; the logits ``[r_B, r_A]`` give
  ``P(class 1) = sigma(r_A - r_B)``, the Bradley–Terry probability, so every transfer loss of
  :mod:`alignlab.losses.w2s` applies unchanged. The random order keeps the gold classes balanced
  (with chosen always first every gold label would be 1 and the confidence loss's balanced
  hardening would be meaningless).

Pooling (:func:`class_logits`): a decoder classifier (a head named ``score``, as Llama, Qwen, GPT-2
have) is read at each row's last real token found from the attention mask
(:func:`alignlab.models.logprobs.position_scores`); an encoder classifier (BERT-style, a
``classifier`` head behind the model's own pooler) uses the model's own forward, which pools the
first ([CLS]) token.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from alignlab.data.collate import pad_encoded
from alignlab.data.labelled import LabelledText
from alignlab.data.records import PreferencePair
from alignlab.data.tokenize import Encoded, encode_completion, text_ids
from alignlab.models.logprobs import last_token_index, position_scores, unwrap_peft

TaskKind = Literal["classify", "pairwise"]


@dataclass(frozen=True)
class Example:
    """One task example: its position ``index`` in the task's data, its gold class, and the
    record (a LabelledText, or a PreferencePair whose ``chosen``/``rejected`` are A/B as shown)."""

    index: int
    label: int
    record: LabelledText | PreferencePair


@dataclass
class Item:
    """An example encoded for one model: one sequence (classify) or two (pairwise: A then B),
    with the training target ``[C]`` (gold one-hot or a supervisor's soft labels)."""

    index: int
    sequences: tuple[Encoded, ...]
    target: list[float]


def pair_examples(pairs: Sequence[PreferencePair], seed: int) -> tuple[list[Example], int]:
    """Examples from gold pairs; returns ``(examples, ties_skipped)``. A pair whose label is
    exactly 0.5 has no gold preference and is skipped (counted); a label below 0.5 means the
    rejected response is the preferred one. Each pair is shown in a seeded random order."""
    rng = random.Random(f"w2s-order-{seed}")
    out, ties = [], 0
    for index, pair in enumerate(pairs):
        if pair.label == 0.5:
            ties += 1
            continue
        better, worse = (pair.chosen, pair.rejected) if pair.label > 0.5 else \
            (pair.rejected, pair.chosen)
        a_first = rng.random() < 0.5
        a, b = (better, worse) if a_first else (worse, better)
        out.append(Example(index, int(a_first), PreferencePair(pair.prompt, a, b, 1.0)))
    return out, ties


def labelled_examples(records: Sequence[LabelledText]) -> list[Example]:
    """Examples from labelled texts (their gold class is their label)."""
    return [Example(i, r.label, r) for i, r in enumerate(records)]


def head_outputs(kind: TaskKind, num_classes: int) -> int:
    """Outputs of the model head a task needs: one reward (pairwise) or one logit per class."""
    return 1 if kind == "pairwise" else num_classes


def encode_text(tokenizer: Any, record: LabelledText, max_length: int,
                max_prompt_length: int) -> Encoded:
    """A labelled text as one sequence: the reply in its chat-rendered conversation, or the plain
    text; an encoder tokenizer's [CLS] is put first (its classifier pools that position)."""
    if record.prompt is not None:
        enc = encode_completion(tokenizer, record.prompt, record.text, max_length,
                                max_prompt_length)
    else:
        ids = text_ids(tokenizer, record.text)[:max_length]
        enc = Encoded(ids, [1] * len(ids))
    cls = getattr(tokenizer, "cls_token_id", None)
    if cls is not None and (not enc.input_ids or enc.input_ids[0] != cls):
        ids = [cls] + enc.input_ids[: max_length - 1]
        enc = Encoded(ids, [0] + enc.loss_mask[: max_length - 1])
    return enc


def encode_example(tokenizer: Any, example: Example, target: Sequence[float], max_length: int,
                   max_prompt_length: int) -> Item:
    """``example`` encoded for ``tokenizer``'s model with training ``target``."""
    record = example.record
    if isinstance(record, PreferencePair):
        seqs = tuple(encode_text(tokenizer, LabelledText(text, 0, record.prompt), max_length,
                                 max_prompt_length) for text in (record.chosen, record.rejected))
    else:
        seqs = (encode_text(tokenizer, record, max_length, max_prompt_length),)
    if not all(len(s) for s in seqs):
        raise ValueError(f"example {example.index} encodes to an empty sequence")
    return Item(example.index, seqs, [float(t) for t in target])


def collate_items(items: Sequence[Item], pad_id: int) -> dict[str, torch.Tensor]:
    """One padded batch: with two sequences per item, rows 0..B-1 are the A sequences and rows
    B..2B-1 the B sequences; ``targets`` [B, C], ``index`` [B]."""
    width = len(items[0].sequences)
    rows = [item.sequences[k] for k in range(width) for item in items]
    batch = pad_encoded(rows, pad_id)
    batch["targets"] = torch.tensor([item.target for item in items], dtype=torch.float32)
    batch["index"] = torch.tensor([item.index for item in items], dtype=torch.long)
    return batch


def model_outputs(model, batch: dict) -> torch.Tensor:
    """``[R, H]`` head outputs, one row per sequence (see the module docstring on pooling)."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    if hasattr(unwrap_peft(model), "score"):
        rows = torch.arange(ids.shape[0], device=ids.device)
        return position_scores(model, ids, mask, rows, last_token_index(mask))
    return model(input_ids=ids, attention_mask=mask).logits.float()


def class_logits(model, batch: dict) -> torch.Tensor:
    """``[B, C]`` class logits: the head's outputs (classify), or ``[r_B, r_A]`` (pairwise, when
    the batch holds two rows per example)."""
    outputs = model_outputs(model, batch)
    n = batch["targets"].shape[0]
    if outputs.shape[0] == n:
        return outputs
    rewards = outputs[:, 0]
    return torch.stack([rewards[n:], rewards[:n]], dim=-1)


class ClassifierModule(torch.nn.Module):
    """``forward(batch) -> [B, C]`` class logits; wraps the HF model for DDP (see
    :mod:`alignlab.train.forward`)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> torch.Tensor:
        return class_logits(self.model, batch)
