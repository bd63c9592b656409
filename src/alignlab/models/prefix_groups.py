"""Next-token log-probs at the end of many contexts, with every shared token prefix run once.

A judge reads one next-token distribution per context, and the contexts it is asked about repeat
long heads: a labeller asks about every pair in both option orders (the two texts agree up to the
first option) and under several principles (they agree up to the principle); a rating judge asks
about several replies to one prompt. Run one by one, each copy of the head costs a full forward.

:func:`group_by_prefix` groups contexts that share a token prefix where that lowers a simple cost
(tokens plus attention, which a wider row makes dearer per token); :func:`pack_contexts` lays
each group out as ONE row, ``prefix + suffix_1 + … + suffix_S``, with the tree attention mask and
the position ids of :mod:`alignlab.models.shared_prefix` (a suffix attends to the prefix and to
itself; its positions continue after the prefix), so every context sees exactly the tokens and
positions it had alone; :func:`last_token_logprobs` runs the packed rows and reads, at each context's last
position, the log-probs of the ids asked for. The values equal one forward per context up to float
summation order. A context that is itself the shared prefix (or a prefix of another member) has an
empty suffix and is read inside the prefix.

Why one packed forward and not a KV cache of the prefix expanded over the branches: it is one call
instead of two, needs no cache copies and no cache API (which differs between transformers
versions), groups of different prefix lengths batch with plain right padding, and on CPU it was the
faster of the two (``benchmarks/labelling/README.md``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate

import torch
from torch.nn.utils.rnn import pad_sequence

from alignlab.models.logprobs import head_logits, unwrap_peft
from alignlab.models.reference import eval_mode, model_device
from alignlab.models.shared_prefix import (
    PackedGroups,
    common_prefix_length,
    pack_groups,
    packed_hidden_states,
)


@dataclass
class _OpenGroup:
    """The group :func:`group_by_prefix` is filling: members, their common prefix length, packed
    width (prefix once + suffixes) and the last row added (its neighbour in sorted order)."""

    members: list[int] = field(default_factory=list)
    shared: int = 0
    width: int = 0
    last: torch.Tensor | None = None


def row_cost(width: int, span: float) -> float:
    """Relative cost of one packed row of ``width`` tokens: the per-token layers plus attention,
    which under a full (tree) mask grows with the width; ``span`` is the width at which a token's
    attention costs as much as its other layers (:func:`attention_break_even`)."""
    return width + width * width / span


def attention_break_even(model) -> float:
    """Keys per query at which a token's attention (about ``2 * hidden`` multiply-adds per key:
    q·k and the weighted v) costs as much as the rest of its layer (one per non-embedding weight):
    ``weights per layer / (2 * hidden)`` (577 for the gym model, 3073 for SmolLM2-135M); infinite
    when the config does not name its layers and width."""
    base = unwrap_peft(model)
    layers = getattr(base.config, "num_hidden_layers", None)
    hidden = getattr(base.config, "hidden_size", None)
    if not layers or not hidden:
        return math.inf
    heads = [base.get_input_embeddings(), base.get_output_embeddings()]
    skip = {id(w) for module in heads if module is not None for w in module.parameters()}
    weights = sum(w.numel() for w in base.parameters() if id(w) not in skip)
    return weights / layers / (2 * hidden)


def _joined(group: _OpenGroup, index: int, row: torch.Tensor, max_tokens: int,
            span: float) -> bool:
    """Add ``row`` to ``group`` when that lowers the cost (see :func:`group_by_prefix`)."""
    shared = min(group.shared, common_prefix_length([group.last, row]))
    width = group.width - group.shared + len(group.members) * (group.shared - shared) + len(row)
    alone = row_cost(group.width, span) + row_cost(len(row), span)
    if width > max_tokens or row_cost(width, span) >= alone:
        return False
    group.members.append(index)
    group.shared, group.width, group.last = shared, width, row
    return True


def group_by_prefix(rows: Sequence[torch.Tensor], max_tokens: int,
                    span: float = math.inf) -> list[list[int]]:
    """Indices of the 1-D token tensors ``rows`` in groups whose members share a token prefix.

    Rows are visited in lexicographic order, so rows with a common head are neighbours. A row joins
    the open group when the packed group stays within ``max_tokens`` and costs less
    (:func:`row_cost` with ``span``) than the group and the row apart; otherwise it opens a new
    group. With a finite ``span`` a short common head (a chat template's system prompt) does not pay
    for the longer attention of a wider row; with ``span`` infinite any saved token does. Every row
    is in exactly one group.
    """
    groups: list[_OpenGroup] = []
    for index in sorted(range(len(rows)), key=lambda i: rows[i].tolist()):
        row = rows[index]
        if not groups or not _joined(groups[-1], index, row, max_tokens, span):
            groups.append(_OpenGroup([index], len(row), len(row), row))
    return [g.members for g in groups]


def pack_contexts(rows: Sequence[torch.Tensor], groups: Sequence[Sequence[int]],
                  device: torch.device | str = "cpu") -> tuple[PackedGroups, torch.Tensor]:
    """``(layout, last)``: :func:`~alignlab.models.shared_prefix.pack_groups` of the non-empty 1-D
    token tensors ``rows`` (``groups`` partitions them), on ``device``, and ``last`` [N], the packed
    column of each row's last token: the end of its suffix, or inside the prefix when the row is
    the group's common prefix itself."""
    if any(len(r) == 0 for r in rows):
        raise ValueError("every context needs at least one token")
    ids = pad_sequence(list(rows), batch_first=True).to(device)
    real = pad_sequence([torch.ones_like(r) for r in rows], batch_first=True).to(device)
    layout = pack_groups(ids, real, groups=[list(g) for g in groups])
    last = torch.zeros(len(rows), dtype=torch.long)
    for g, members in enumerate(groups):
        segments = layout.segments[g].cpu()
        for slot, n in enumerate(members):
            suffix = (segments == slot + 1).nonzero()
            last[n] = suffix[-1, 0] if len(suffix) else len(rows[n]) - 1
    return layout, last.to(device)


def _packed_width(rows: Sequence[torch.Tensor], members: Sequence[int]) -> int:
    """Tokens in the packed row of ``members``: their common prefix once plus every suffix."""
    shared = common_prefix_length([rows[n] for n in members])
    return shared + sum(len(rows[n]) - shared for n in members)


def _batches(groups: list[list[int]], batch_size: int) -> list[list[list[int]]]:
    """Consecutive groups holding at most ``batch_size`` contexts together (at least one group)."""
    batches: list[list[list[int]]] = []
    for group in groups:
        if batches and sum(map(len, batches[-1])) + len(group) <= batch_size:
            batches[-1].append(group)
        else:
            batches.append([group])
    return batches


def last_token_logprobs(model, rows: Sequence[Sequence[int]], pick: Sequence[Sequence[int]],
                        batch_size: int, max_group_tokens: int | None = None) -> torch.Tensor:
    """``[N, K]`` log-probs of the ids ``pick[n]`` as the token after ``rows[n]`` (float32, float64
    for a float64 model), contexts that share a prefix packed into one row (module docstring); no
    gradients, eval mode.

    Contexts are grouped by :func:`group_by_prefix` with the model's :func:`attention_break_even`;
    ``max_group_tokens`` caps a packed row's width (default: twice the longest context, which bounds
    the ``[rows, 1, width, width]`` mask). A forward takes whole groups, widest first (little
    padding), up to ``batch_size`` contexts (one group when a group alone has more), so a forward
    holds about as many tokens as a batch of ``batch_size`` unshared contexts.
    """
    tensors = [torch.as_tensor(r, dtype=torch.long) for r in rows]
    cap = max_group_tokens or 2 * max(len(r) for r in tensors)
    groups = group_by_prefix(tensors, cap, attention_break_even(model))
    groups.sort(key=lambda g: -_packed_width(tensors, g))
    device, out = model_device(model), None
    for chunk in _batches(groups, batch_size):
        members = [n for g in chunk for n in g]
        ends = list(accumulate(len(g) for g in chunk))
        local = [list(range(end - len(g), end)) for g, end in zip(chunk, ends, strict=True)]
        layout, last = pack_contexts([tensors[n] for n in members], local, device)
        picked = _read_last(model, layout, last, [pick[n] for n in members])
        if out is None:
            out = torch.empty(len(tensors), picked.shape[1], dtype=picked.dtype)
        out[members] = picked
    return out


def _read_last(model, layout: PackedGroups, last: torch.Tensor,
               pick: Sequence[Sequence[int]]) -> torch.Tensor:
    """``[N, K]`` log-probs of ``pick`` at the ``last`` columns of one packed batch (on the CPU)."""
    with torch.no_grad(), eval_mode(model):
        hidden = packed_hidden_states(model, layout)
        logp = torch.log_softmax(head_logits(model, hidden[layout.group, last]), -1)
    return logp.gather(1, torch.tensor(list(pick), device=logp.device)).cpu()
