"""Pack short SFT sequences into rows of at most ``max_length`` tokens.

Greedy first-fit: documents are taken in order, each goes into the first row that still has room,
or opens a new row. ``position_ids`` restart at 0 for every document, and the first token of every
document is never a target (so no loss is taken on predicting a document from the end of the
previous one).

Attention: packed documents do not attend to each other. The batch carries the restarting
``position_ids`` and the forward (:class:`alignlab.train.forward.TokenLogprobModule`) passes no
padding mask, so transformers derives the document boundaries from the positions
(``masking_utils.find_packed_sequence_indices``): a block-diagonal causal mask for eager, sdpa and
flex attention, varlen boundaries for flash attention. A packed row's log-probs equal those of its
documents run one by one (tested). This needs a transformers version with that function
(:func:`check_packing_support`) and a model whose attention masks come from ``masking_utils`` (every
built-in architecture in transformers 5; custom remote code may differ).
"""

from __future__ import annotations

from collections.abc import Sequence

from alignlab.data.tokenize import Encoded


def check_packing_support() -> None:
    """Raise when the installed transformers cannot build per-document masks from position ids."""
    try:
        from transformers.masking_utils import find_packed_sequence_indices  # noqa: F401
    except ImportError as exc:
        import transformers

        raise ValueError(f"packing needs transformers with masking_utils.find_packed_sequence_indices "
                         f"(per-document attention from position ids); found "
                         f"{transformers.__version__}") from exc


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
