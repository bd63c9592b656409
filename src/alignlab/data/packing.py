"""Pack short SFT sequences into rows of at most ``max_length`` tokens.

Greedy first-fit: documents are taken in order, each goes into the first row that still has room,
or opens a new row. ``position_ids`` restart at 0 for every document, and the first token of every
document is never a target (so no loss is taken on predicting a document from the end of the
previous one).

Attention caveat: with the default attention implementations (eager, sdpa) and the usual
``attention_mask`` of ones, packed documents *can attend to each other* (causally, to the documents
earlier in the same row). The restarting ``position_ids`` are what varlen flash attention
(``attn_implementation="flash_attention_2"`` with position ids and no padding mask) uses to keep
documents apart; without it, packing trades a little cross-document leakage for speed.
"""

from __future__ import annotations

from collections.abc import Sequence

from alignlab.data.tokenize import Encoded


def pack_encoded(items: Sequence[Encoded], max_length: int) -> list[Encoded]:
    """Pack ``items`` first-fit into rows of ≤ ``max_length`` tokens, with per-document position ids."""
    rows: list[list[Encoded]] = []
    room: list[int] = []
    for index, item in enumerate(items):
        if len(item.input_ids) > max_length:
            raise ValueError(f"sequence {index} has {len(item.input_ids)} tokens, more than "
                             f"max_length={max_length}; truncate before packing")
        if not item.input_ids:
            continue
        slot = next((r for r, free in enumerate(room) if free >= len(item.input_ids)), None)
        if slot is None:
            rows.append([])
            room.append(max_length)
            slot = len(rows) - 1
        rows[slot].append(item)
        room[slot] -= len(item.input_ids)
    return [_join(row) for row in rows]


def _join(documents: list[Encoded]) -> Encoded:
    ids: list[int] = []
    mask: list[int] = []
    positions: list[int] = []
    for doc in documents:
        ids += doc.input_ids
        mask += [0] + list(doc.loss_mask[1:])
        positions += list(range(len(doc.input_ids)))
    return Encoded(ids, mask, positions)
