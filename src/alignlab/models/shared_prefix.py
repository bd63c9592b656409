"""Prompt sharing: rows that start with the same tokens run that prefix through the model once.

A preference batch holds S rows per example (chosen and rejected, or the K items of a ranked list)
that repeat one prompt; on chat data the prompt is two thirds to three quarters of the tokens
(``benchmarks/prompt_share``). :func:`pack_groups` lays each group of S rows out as ONE packed row,
``prefix + suffix_1 + … + suffix_S``, where the prefix is the group's longest common token prefix,
with a block ("tree") attention mask: a suffix token attends causally to the prefix and to its own
suffix, never to another suffix. Position ids continue after the prefix in every suffix, so each
suffix sees exactly the context, positions and attention it had in its own row, and the prefix's
hidden states are the same for all rows (they depend only on the prefix). Hence every log-prob
equals the per-row computation up to float summation order, and the prefix's gradient is the sum
of the rows' contributions, as before.

The target of original position ``t`` (predicting token ``t + 1``) is read from the packed position
whose hidden state sees the same context: position ``t`` itself while ``t`` lies in the prefix (the
last prefix position predicts the first token of EVERY suffix), the suffix copy otherwise.

Which rows form a group: the preference stage's batches are slot-major (row ``s * G + g`` is slot
``s`` of example ``g``); any other partition can be given as ``groups`` (lists of row indices). An
online rollout names each row's prompt in ``batch["prefix_group"]`` (:func:`batch_groups`), a label
that survives row selection, so shuffled minibatches and micro-batches share whatever prompt rows
they still hold. Rows may be right- or left-padded: only tokens under ``attention_mask`` count, for
the common prefix as for the positions.

The mask is an additive float ``[B, 1, T, T]`` tensor (0 or the dtype's minimum), which
transformers hands to eager and SDPA attention unchanged; flash-attention and flex-attention
implementations take no such mask, so :func:`can_share_prefix` says no for them and callers keep
the per-row layout. The layout is ours; tree attention over a shared prefix is the usual way to
score several continuations of one context (e.g. speculative decoding's token trees, SpecInfer,
Miao et al. 2024).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignlab.models.logprobs import (
    decoder_body,
    final_hidden_states,
    hidden_target_logprobs,
    last_token_index,
    masked_sequence_sum,
    token_logprobs,
    unwrap_peft,
    vocab_head,
)

MASKABLE_ATTENTION = frozenset({"eager", "sdpa"})
RECURRENT_MODEL_TYPES = frozenset({"mamba", "mamba2", "falcon_mamba", "rwkv", "jamba", "zamba",
                                   "zamba2", "bamba", "falcon_h1", "granitemoehybrid", "lfm2",
                                   "qwen3_next", "recurrent_gemma", "xlstm"})


def can_share_prefix(model) -> bool:
    """True when packing is exact for this model: every layer is full causal attention that takes a
    custom 4D additive mask (eager or SDPA). Sliding-window layers (their window would count packed
    positions, not the row's own) and recurrent or linear-attention layers (they mix every earlier
    position of the packed row, whatever the mask) say no, as do flash and flex attention."""
    config = getattr(unwrap_peft(model), "config", None)
    implementation = getattr(config, "_attn_implementation", None) or "eager"
    if implementation not in MASKABLE_ATTENTION:
        return False
    layer_types = getattr(config, "layer_types", None) or []
    if any(kind != "full_attention" for kind in layer_types):
        return False
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return False
    return getattr(config, "model_type", "") not in RECURRENT_MODEL_TYPES


@dataclass
class PackedGroups:
    """One packed row per group. ``input_ids``/``position_ids``/``segments`` are ``[G, P]``
    (``segments``: 0 prefix, ``s + 1`` suffix of slot ``s``, -1 padding); ``source`` [N, T-1] is, for
    original row ``n`` and position ``t``, the packed column whose hidden state predicts
    ``input_ids[n, t + 1]`` (0 where the row has no such target); ``group`` [N] is row n's group;
    ``last`` [N] is the packed column of row n's last real token (where a reward head reads)."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segments: torch.Tensor
    source: torch.Tensor
    group: torch.Tensor
    last: torch.Tensor

    def attention_mask(self, dtype: torch.dtype) -> torch.Tensor:
        """``[G, 1, P, P]`` additive mask: causal, prefix visible to all, suffixes to themselves."""
        seg = self.segments
        width = seg.shape[1]
        causal = torch.ones(width, width, dtype=torch.bool, device=seg.device).tril()
        same = seg[:, :, None] == seg[:, None, :]
        prefix_key = (seg == 0)[:, None, :]
        allowed = causal & (same | prefix_key)
        zero = torch.zeros((), dtype=dtype, device=seg.device)
        blocked = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=seg.device)
        return torch.where(allowed, zero, blocked)[:, None]

    @property
    def packed_tokens(self) -> int:
        """Real (non-padding) tokens in the packed layout."""
        return int((self.segments >= 0).sum())


def common_prefix_length(rows: list[torch.Tensor]) -> int:
    """Length of the longest common prefix of the non-empty 1-D token tensors ``rows``."""
    rows = [row for row in rows if row.numel()]
    if not rows:
        return 0
    limit = min(row.numel() for row in rows)
    agree = torch.ones(limit, dtype=torch.bool)
    for row in rows[1:]:
        agree &= rows[0][:limit] == row[:limit]
    mismatch = (~agree).nonzero()
    return int(mismatch[0]) if mismatch.numel() else limit


def slot_major_groups(rows: int, slots: int) -> list[list[int]]:
    """The groups of a slot-major batch of ``rows`` rows (row ``s * G + g`` is slot ``s`` of group
    ``g``): ``[[g, G + g, …, (slots - 1) * G + g] for g in range(G)]``."""
    if slots < 1 or rows % slots:
        raise ValueError(f"{rows} rows do not split into groups of {slots} slots")
    groups = rows // slots
    return [[s * groups + g for s in range(slots)] for g in range(groups)]


def groups_of_labels(labels: torch.Tensor) -> list[list[int]]:
    """Rows with equal ``labels`` [N] as groups, in the order each label first appears (e.g. a
    rollout's prompt index per row: ``[0, 0, 1, 1] -> [[0, 1], [2, 3]]``)."""
    groups: dict[int, list[int]] = {}
    for row, label in enumerate(labels.tolist()):
        groups.setdefault(label, []).append(row)
    return list(groups.values())


def pack_groups(input_ids: torch.Tensor, attention_mask: torch.Tensor, slots: int = 1,
                pad_id: int = 0, groups: list[list[int]] | None = None) -> PackedGroups:
    """Pack each group of rows into one row that holds the group's common prefix once (module
    docstring). ``groups`` partitions the rows (any sizes, any order); without it the batch is
    slot-major with ``slots`` rows per group (:func:`slot_major_groups`).

    A row's tokens are those where ``attention_mask`` is 1, so left- and right-padded rows both
    work: the common prefix is taken over real tokens only, positions count real tokens (as
    :func:`~alignlab.models.logprobs.default_position_ids` does), and ``source`` maps each real
    token's column of the padded batch to its packed column."""
    rows, width = input_ids.shape
    members = slot_major_groups(rows, slots) if groups is None else groups
    if sorted(n for group in members for n in group) != list(range(rows)):
        raise ValueError("groups must hold every row of the batch exactly once")
    ids_cpu, real = input_ids.cpu(), attention_mask.cpu().bool()
    packed, positions, segments = [], [], []
    source = torch.zeros(rows, max(width - 1, 0), dtype=torch.long)
    group_of = torch.zeros(rows, dtype=torch.long)
    last = torch.zeros(rows, dtype=torch.long)
    for g, group in enumerate(members):
        columns = [real[n].nonzero().flatten() for n in group]
        row_ids = [ids_cpu[n, cols] for n, cols in zip(group, columns, strict=True)]
        shared = common_prefix_length(row_ids)
        ids, pos, seg = [row_ids[0][:shared]], [torch.arange(shared)], [torch.zeros(shared)]
        offset = shared
        for s, (n, tokens, cols) in enumerate(zip(group, row_ids, columns, strict=True)):
            tail = tokens[shared:]
            ids.append(tail)
            pos.append(torch.arange(shared, tokens.numel()))
            seg.append(torch.full((tail.numel(),), s + 1.0))
            targets = torch.arange(max(tokens.numel() - 1, 0))
            source[n, cols[:targets.numel()]] = torch.where(targets < shared, targets,
                                                            offset + targets - shared)
            group_of[n] = g
            last[n] = offset + tail.numel() - 1 if tail.numel() else max(shared - 1, 0)
            offset += tail.numel()
        packed.append(torch.cat(ids))
        positions.append(torch.cat(pos))
        segments.append(torch.cat(seg).long())
    return _padded(packed, positions, segments, source, group_of, last, pad_id, input_ids.device)


def _padded(packed, positions, segments, source, group_of, last, pad_id, device) -> PackedGroups:
    width = max(1, max(row.numel() for row in packed))

    def pad(items, value):
        out = torch.full((len(items), width), value, dtype=torch.long)
        for g, row in enumerate(items):
            out[g, :row.numel()] = row
        return out.to(device)

    return PackedGroups(pad(packed, pad_id), pad(positions, 0), pad(segments, -1), source.to(device),
                        group_of.to(device), last.to(device))


def packed_hidden_states(model, layout: PackedGroups) -> torch.Tensor:
    """``[G, P, H]`` final hidden states of the packed rows under the tree mask."""
    dtype = next(unwrap_peft(model).parameters()).dtype
    out = decoder_body(model)(input_ids=layout.input_ids,
                              attention_mask=layout.attention_mask(dtype),
                              position_ids=layout.position_ids, use_cache=False)
    return out[0] if isinstance(out, tuple) else out.last_hidden_state


def shared_token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, slots: int,
                          target_mask: torch.Tensor, chunk_size: int = 64,
                          groups: list[list[int]] | None = None) -> torch.Tensor:
    """:func:`~alignlab.models.logprobs.token_logprobs` of groups of rows with each group's common
    prefix computed once: slot-major groups of ``slots`` rows, or the row ``groups`` given
    (:func:`pack_groups`). ``[N, T-1]`` float32, values at the ``target_mask`` positions (the
    shifted loss mask), 0 elsewhere."""
    base, head = vocab_head(model)
    layout = pack_groups(input_ids, attention_mask, slots, groups=groups)
    hidden = packed_hidden_states(model, layout)
    selected = target_mask.bool()
    rows, cols = selected.nonzero(as_tuple=True)
    picked = hidden[layout.group[rows], layout.source[rows, cols]]
    targets = input_ids[:, 1:][selected]
    chunk = chunk_size * max(len(layout.group), 1)
    values = hidden_target_logprobs(picked, targets, head, base.config, chunk)
    out = torch.zeros(selected.shape, dtype=values.dtype, device=values.device)
    return out.masked_scatter(selected, values)


def sharing_groups(model, batch: dict, slots: int = 1,
                   groups: list[list[int]] | None = None) -> list[list[int]] | None:
    """The row groups to pack for ``batch`` (slot-major groups of ``slots`` rows, or ``groups``),
    or None when the rows run one by one: no group has two rows, the rows are already packed
    (``position_ids``), or the model's attention takes no tree mask (:func:`can_share_prefix`)."""
    if groups is None:
        if slots <= 1:
            return None
        groups = slot_major_groups(batch["input_ids"].shape[0], slots)
    if all(len(group) < 2 for group in groups):
        return None
    if batch.get("position_ids") is not None or not can_share_prefix(model):
        return None
    return groups


def grouped_token_logprobs(model, batch: dict, slots: int, chunk_size: int = 64,
                           groups: list[list[int]] | None = None) -> torch.Tensor:
    """``[N, T-1]`` target-token log-probs of a batch whose rows come in groups that share a
    prompt (slot-major groups of ``slots`` rows, or the row ``groups`` given): each group's common
    prefix computed once where :func:`sharing_groups` allows it, per row otherwise."""
    mask = batch["loss_mask"][:, 1:]
    shared = sharing_groups(model, batch, slots, groups)
    if shared is not None:
        return shared_token_logprobs(model, batch["input_ids"], batch["attention_mask"], 1,
                                     mask, chunk_size, groups=shared)
    return token_logprobs(model, batch["input_ids"], batch["attention_mask"],
                          batch.get("position_ids"), chunk_size=chunk_size, target_mask=mask)


def grouped_sequence_logprobs(model, batch: dict, slots: int, average: bool = False) -> torch.Tensor:
    """``[N]`` summed (or, with ``average``, mean) target log-probs; :func:`grouped_token_logprobs`."""
    return masked_sequence_sum(grouped_token_logprobs(model, batch, slots),
                               batch["loss_mask"][:, 1:], average)


def grouped_shifted_hidden_states(model, batch: dict,
                                  groups: list[list[int]] | None = None) -> torch.Tensor:
    """``[N, T-1, H]`` final hidden states at columns ``0..T-2`` of every row (column t predicts
    token t + 1), for heads that read every position (a critic's values). With ``groups`` (rows
    that share a prompt, :func:`sharing_groups` permitting) each group's common prefix is computed
    once and every row reads its columns back from the packed row; padding columns then hold some
    other hidden state of the group (mask them, as the per-row padding is masked)."""
    shared = None if groups is None else sharing_groups(model, batch, 1, groups)
    if shared is None:
        return final_hidden_states(model, batch["input_ids"], batch["attention_mask"],
                                   batch.get("position_ids"))[:, :-1]
    layout = pack_groups(batch["input_ids"], batch["attention_mask"], groups=shared)
    hidden = packed_hidden_states(model, layout)
    return hidden[layout.group[:, None], layout.source]


def grouped_last_hidden_states(model, batch: dict, slots: int) -> torch.Tensor:
    """``[N, H]`` final hidden state at each row's last real token (what a reward head reads) of a
    slot-major batch of groups of ``slots`` rows that share a prompt (a reward model's chosen and
    rejected rows): each group's common prefix is computed once where :func:`sharing_groups` allows
    it, per row otherwise. Equal to the per-row states up to float rounding: the last token sees
    the prefix and its own suffix only, at its own positions."""
    shared = sharing_groups(model, batch, slots)
    if shared is None:
        hidden = final_hidden_states(model, batch["input_ids"], batch["attention_mask"],
                                     batch.get("position_ids"))
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return hidden[rows, last_token_index(batch["attention_mask"]).to(hidden.device)]
    layout = pack_groups(batch["input_ids"], batch["attention_mask"], groups=shared)
    hidden = packed_hidden_states(model, layout)
    return hidden[layout.group, layout.last]


# ----------------------------------------------------------------------------- rows labelled by group

PREFIX_GROUP = "prefix_group"


def batch_groups(batch: dict) -> list[list[int]] | None:
    """The row groups a batch names in ``batch[PREFIX_GROUP]`` ([N], equal values: rows that share
    their prompt, e.g. an online rollout's samples of one prompt), or None when it names none. A
    label survives row selection (``v[idx]``), so any subset of the rows keeps its groups.

    The groups come in label order and each group's rows in the order of their tokens, so the
    packed layout, and with it every float, is the same for any order of the same rows (a
    minibatch drawn as a permutation of the rollout computes what the rollout computed)."""
    labels = batch.get(PREFIX_GROUP)
    if labels is None:
        return None
    ids, real = batch["input_ids"].cpu(), batch["attention_mask"].cpu().bool()
    groups = sorted(groups_of_labels(labels), key=lambda group: int(labels[group[0]]))
    return [sorted(group, key=lambda n: ids[n][real[n]].tolist()) for group in groups]
