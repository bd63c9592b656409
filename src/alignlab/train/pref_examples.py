"""Training examples of the preference stage: every kind of data as a fixed number of sequences.

An example is ``rows`` (encoded prompt+completion sequences) plus what the objective needs to know
about them. Every example of one run has the same number of rows ("slots"), so a batch of B examples
is one forward over ``S * B`` rows in *slot-major* order (all first slots, then all second slots):

- pair: (chosen, rejected), ``label`` = P(chosen preferred);
- binary: (completion,) or (completion, mismatched completion) when the objective estimates KTO's
  reference point; ``label`` = 1 desirable, 0 undesirable;
- ranked: the K responses (shorter lists are padded with copies of their first response, marked
  invalid), ``scores`` higher = better.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

import torch

from alignlab.data.collate import pad_encoded
from alignlab.data.records import BinaryFeedback, PreferencePair, RankedList
from alignlab.data.tokenize import Encoded, encode_completion, encode_pair


@dataclass(frozen=True)
class Example:
    """One training example; ``ref`` holds one reference log-prob per row once attached."""

    rows: tuple[Encoded, ...]
    label: float = 1.0
    scores: tuple[float, ...] = ()
    valid: tuple[bool, ...] = ()
    ref: tuple[float, ...] | None = None

    def with_reference(self, values) -> Example:
        return replace(self, ref=tuple(float(v) for v in values))


def encode_pairs(tokenizer, records: list[PreferencePair], max_length: int,
                 max_prompt_length: int) -> list[Example]:
    """Pairs as (chosen, rejected) examples."""
    out = []
    for record in records:
        pair = encode_pair(tokenizer, record, max_length, max_prompt_length)
        out.append(Example((pair.chosen, pair.rejected), label=pair.label))
    return out


def mismatch_index(records: list[BinaryFeedback], i: int) -> int:
    """The example whose completion serves as example ``i``'s mismatched completion.

    Half the dataset away (so that chosen/rejected halves of one converted pair, which sit next to
    each other, never meet), moving on while the prompt is the same. Fixed by data order, so the
    reference log-probs of the mismatched rows can be cached like any other row.
    """
    n = len(records)
    for step in range(n // 2, n // 2 + n):
        j = (i + step) % n
        if j != i and records[j].prompt != records[i].prompt:
            return j
    return (i + 1) % n


def encode_binary(tokenizer, records: list[BinaryFeedback], max_length: int,
                  max_prompt_length: int, with_mismatch: bool) -> list[Example]:
    """Unpaired completions; with ``with_mismatch`` each also carries a mismatched completion."""
    encode = partial(encode_completion, tokenizer, max_length=max_length,
                     max_prompt_length=max_prompt_length)
    out = []
    for i, record in enumerate(records):
        rows = (encode(record.prompt, record.completion),)
        if with_mismatch:
            other = records[mismatch_index(records, i)]
            rows += (encode(record.prompt, other.completion),)
        out.append(Example(rows, label=1.0 if record.desirable else 0.0))
    return out


def encode_ranked(tokenizer, records: list[RankedList], max_length: int,
                  max_prompt_length: int) -> list[Example]:
    """Ranked lists padded to the longest list; scores default to the listed order (best first)."""
    width = max(len(r.responses) for r in records)
    out = []
    for record in records:
        k = len(record.responses)
        scores = list(record.scores) or [-float(i) for i in range(k)]
        rows = [encode_completion(tokenizer, record.prompt, text, max_length, max_prompt_length)
                for text in record.responses]
        pad = width - k
        out.append(Example(tuple(rows + [rows[0]] * pad), scores=tuple(scores + [0.0] * pad),
                           valid=tuple([True] * k + [False] * pad)))
    return out


def slot_major_rows(examples: list[Example]) -> list[Encoded]:
    """All rows of ``examples`` in slot-major order (slot 0 of every example, then slot 1, ...)."""
    slots = len(examples[0].rows)
    return [ex.rows[s] for s in range(slots) for ex in examples]


def collate_examples(examples: list[Example], pad_id: int) -> dict:
    """One padded batch of ``S * B`` rows plus ``label`` [B], ``scores``/``valid`` [B, S] (ranked)
    and ``ref`` [S * B] (slot-major, when attached)."""
    batch = pad_encoded(slot_major_rows(examples), pad_id)
    batch["label"] = torch.tensor([ex.label for ex in examples], dtype=torch.float32)
    if examples[0].scores:
        batch["scores"] = torch.tensor([ex.scores for ex in examples], dtype=torch.float32)
        batch["valid"] = torch.tensor([ex.valid for ex in examples], dtype=torch.bool)
    if examples[0].ref is not None:
        slots = len(examples[0].rows)
        batch["ref"] = torch.tensor([ex.ref[s] for s in range(slots) for ex in examples],
                                    dtype=torch.float32)
    return batch
