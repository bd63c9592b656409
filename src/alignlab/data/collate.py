"""Batch encoded sequences into right-padded tensors.

Padding positions have ``attention_mask`` 0 and ``loss_mask`` 0, and ``input_ids`` = ``pad_id``.
Packed sequences (:mod:`alignlab.data.packing`) also carry ``position_ids`` (padded with 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from alignlab.data.tokenize import Encoded, EncodedPair


def _pad_rows(rows: Sequence[Sequence[int]], width: int, value: int) -> torch.Tensor:
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def pad_encoded(items: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad ``items`` to the longest: LongTensors ``input_ids``, ``attention_mask``,
    ``loss_mask`` of shape [B, T], plus ``position_ids`` when the items are packed."""
    if not items:
        raise ValueError("cannot collate an empty batch")
    width = max(len(item.input_ids) for item in items)
    batch = {
        "input_ids": _pad_rows([i.input_ids for i in items], width, pad_id),
        "attention_mask": _pad_rows([[1] * len(i.input_ids) for i in items], width, 0),
        "loss_mask": _pad_rows([i.loss_mask for i in items], width, 0),
    }
    packed = [item.position_ids is not None for item in items]
    if any(packed):
        if not all(packed):
            raise ValueError("a batch mixes packed and unpacked sequences")
        batch["position_ids"] = _pad_rows([i.position_ids for i in items], width, 0)
    return batch


def collate_pairs(items: Sequence[EncodedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """Pairs as one padded batch: rows 0..B-1 are the chosen sequences, rows B..2B-1 the rejected
    ones (same order); ``label`` is a float tensor [B] of P(chosen preferred)."""
    batch = pad_encoded([p.chosen for p in items] + [p.rejected for p in items], pad_id)
    batch["label"] = torch.tensor([float(p.label) for p in items], dtype=torch.float32)
    return batch
