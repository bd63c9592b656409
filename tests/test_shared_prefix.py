"""Prompt sharing (models.shared_prefix): the packed tree layout gives the per-row log-probs and
gradients.

Tolerances: in float64 the packed and per-row computations differ only in summation order, so
values agree to 1e-10; in float32 (what training uses) the issue's bar is 1e-5 on losses and
gradients.
"""

import pytest
import torch
from test_models_tiny import make_tiny_lm

from alignlab.models.logprobs import token_logprobs
from alignlab.models.shared_prefix import (
    can_share_prefix,
    common_prefix_length,
    pack_groups,
    shared_token_logprobs,
)


def _batch(rows: list[list[int]], targets_from: list[int]):
    """Right-padded batch; loss mask on from ``targets_from[i]`` to the row's end."""
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    attn = torch.zeros_like(ids)
    loss = torch.zeros_like(ids)
    for i, (row, start) in enumerate(zip(rows, targets_from, strict=True)):
        ids[i, :len(row)] = torch.tensor(row)
        attn[i, :len(row)] = 1
        loss[i, start:len(row)] = 1
    return ids, attn, loss


# slot-major: rows 0..2 are slot 0 of groups 0..2, rows 3..5 slot 1.
PAIR_ROWS = [
    [5, 6, 7, 8, 9, 10, 11],       # g0 chosen: prefix 5 6 7 8
    [20, 21, 22, 23, 24],          # g1 chosen: prefix 20 21 22
    [40, 41, 42, 43, 44, 45],      # g2 chosen: no common prefix with its rejected row
    [5, 6, 7, 8, 30, 31],          # g0 rejected
    [20, 21, 22, 50, 51, 52, 53, 54],
    [60, 41, 42],
]
PAIR_STARTS = [4, 3, 1, 4, 3, 1]


def test_common_prefix_length_by_hand():
    t = torch.tensor
    assert common_prefix_length([t([1, 2, 3]), t([1, 2, 4]), t([1, 2, 3, 5])]) == 2
    assert common_prefix_length([t([1, 2]), t([1, 2, 3])]) == 2
    assert common_prefix_length([t([7]), t([8])]) == 0
    assert common_prefix_length([t([1, 2]), t([], dtype=torch.long)]) == 2  # empty rows ignored


def test_pack_groups_layout_by_hand():
    ids, attn, _ = _batch(PAIR_ROWS, PAIR_STARTS)
    layout = pack_groups(ids, attn, slots=2)
    assert layout.input_ids[0, :7].tolist() == [5, 6, 7, 8, 9, 10, 11][:4] + [9, 10, 11]
    assert layout.input_ids[0, 7:9].tolist() == [30, 31]
    assert layout.position_ids[0, :9].tolist() == [0, 1, 2, 3, 4, 5, 6, 4, 5]
    assert layout.segments[0, :9].tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2]
    assert layout.segments[0, 9:].eq(-1).all()
    # g0 rejected (row 3): targets at t = 0..4; t < 4 read the prefix, t = 4 reads its suffix copy
    assert layout.source[3, :5].tolist() == [0, 1, 2, 3, 7]
    assert layout.source[0, :6].tolist() == [0, 1, 2, 3, 4, 5]
    assert layout.packed_tokens == (4 + 3 + 2) + (3 + 2 + 5) + (0 + 6 + 3)
    mask = layout.attention_mask(torch.float32)[0, 0]
    blocked = mask < 0
    assert not blocked[7, :4].any() and blocked[7, 4:7].all() and not blocked[7, 7]  # rejected
    assert blocked[4, 5] and not blocked[4, 3]                                        # causal


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_logprobs_equal_per_row(dtype, tol, attention):
    model = make_tiny_lm(0).to(dtype)
    model.set_attn_implementation(attention)
    assert model.config._attn_implementation == attention
    ids, attn, loss = _batch(PAIR_ROWS, PAIR_STARTS)
    mask = loss[:, 1:]
    want = token_logprobs(model, ids, attn, target_mask=mask)
    got = shared_token_logprobs(model, ids, attn, 2, mask)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=tol, rtol=0)
    assert (got[mask == 0] == 0).all()


def test_ranked_list_groups_of_four():
    rows = [[1, 2, 3, 4 + k, 9] for k in range(4)] + [[7, 8, 9, 10 + k] for k in range(4)]
    slot_major = [rows[g * 4 + s] for s in range(4) for g in range(2)]
    ids, attn, loss = _batch(slot_major, [3] * 8)
    model = make_tiny_lm(1).double()
    want = token_logprobs(model, ids, attn, target_mask=loss[:, 1:])
    got = shared_token_logprobs(model, ids, attn, 4, loss[:, 1:])
    assert torch.allclose(got, want, atol=1e-10, rtol=0)
    assert pack_groups(ids, attn, 4).packed_tokens == (3 + 4 * 2) + (3 + 4 * 1)


def test_gradients_equal_per_row_float32():
    """The DPO-style loss over both layouts has the same value and parameter gradients (1e-5)."""
    ids, attn, loss = _batch(PAIR_ROWS, PAIR_STARTS)
    mask = loss[:, 1:]

    def loss_and_grads(fn):
        model = make_tiny_lm(2).train()
        logps = (fn(model) * mask).sum(-1)
        margin = logps[:3] - logps[3:]
        value = -torch.nn.functional.logsigmoid(0.1 * margin).mean()
        value.backward()
        return value.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    want, want_grads = loss_and_grads(lambda m: token_logprobs(m, ids, attn, target_mask=mask))
    got, got_grads = loss_and_grads(lambda m: shared_token_logprobs(m, ids, attn, 2, mask))
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    for name, grad in want_grads.items():
        assert torch.allclose(got_grads[name], grad, atol=1e-5, rtol=0), name
    assert any(g.abs().max() > 1e-3 for g in want_grads.values())  # the check is not vacuous


def test_flash_attention_models_are_not_shared():
    model = make_tiny_lm(0)
    assert can_share_prefix(model)
    model.config._attn_implementation = "flash_attention_2"
    assert not can_share_prefix(model)


def test_sliding_window_and_recurrent_models_are_not_shared():
    """Packing is exact only under full attention: a window or a recurrence would see packed
    positions of the other suffixes."""
    model = make_tiny_lm(0)
    model.config.sliding_window = 4096
    assert not can_share_prefix(model)
    model.config.use_sliding_window = False          # Qwen2-style: window configured but off
    assert can_share_prefix(model)
    model.config.sliding_window = None
    model.config.layer_types = ["full_attention", "sliding_attention"]
    assert not can_share_prefix(model)
    model.config.layer_types = ["full_attention", "full_attention"]
    assert can_share_prefix(model)
    model.config.model_type = "mamba"
    assert not can_share_prefix(model)


def test_rows_must_split_into_groups():
    ids, attn, _ = _batch(PAIR_ROWS[:5], PAIR_STARTS[:5])
    with pytest.raises(ValueError, match="groups of 2"):
        pack_groups(ids, attn, 2)


# ----------------------------------------------------------------------------- explicit row groups

# prompt-major, as an online rollout: three samples of prompt [5 6 7], two of [20 21], one of [9 8]
ROLLOUT_ROWS = [[5, 6, 7, 30, 31], [5, 6, 7, 40], [5, 6, 7, 30, 32, 33], [20, 21, 50],
                [20, 21, 51, 52], [9, 8, 60]]
ROLLOUT_STARTS = [3, 3, 3, 2, 2, 2]
ROLLOUT_GROUPS = [[0, 1, 2], [3, 4], [5]]


def _left_padded(rows: list[list[int]], targets_from: list[int]):
    """The left-padded twin of :func:`_batch` (pads first, then the row's tokens)."""
    ids, attn, loss = _batch(rows, targets_from)
    width = ids.shape[1]
    for i, row in enumerate(rows):
        shift = width - len(row)
        ids[i], attn[i], loss[i] = (t[i].roll(shift) for t in (ids, attn, loss))
    return ids, attn, loss


def test_groups_of_labels_keep_first_appearance_order():
    from alignlab.models.shared_prefix import groups_of_labels, slot_major_groups

    assert groups_of_labels(torch.tensor([3, 3, 0, 3, 0, 7])) == [[0, 1, 3], [2, 4], [5]]
    assert slot_major_groups(6, 2) == [[0, 3], [1, 4], [2, 5]]


def test_explicit_groups_layout_by_hand():
    ids, attn, _ = _batch(ROLLOUT_ROWS, ROLLOUT_STARTS)
    layout = pack_groups(ids, attn, groups=ROLLOUT_GROUPS)
    # group 0: prefix 5 6 7 once, then 30 31 | 40 | 30 32 33 (the shared 30 is not the prompt:
    # the common prefix of all three rows is 3 tokens)
    assert layout.input_ids[0].tolist() == [5, 6, 7, 30, 31, 40, 30, 32, 33]  # the widest row
    assert layout.position_ids[0, :9].tolist() == [0, 1, 2, 3, 4, 3, 3, 4, 5]
    assert layout.group.tolist() == [0, 0, 0, 1, 1, 2]
    assert layout.source[1, :3].tolist() == [0, 1, 2]  # row 1 predicts 40 from prefix column 2
    assert layout.source[2, :5].tolist() == [0, 1, 2, 6, 7]
    assert layout.packed_tokens == (3 + 2 + 1 + 3) + (2 + 1 + 2) + 3
    with pytest.raises(ValueError, match="exactly once"):
        pack_groups(ids, attn, groups=[[0, 1, 2], [3, 4]])


@pytest.mark.parametrize("padding", ["right", "left"])
def test_explicit_groups_equal_per_row(padding):
    """Prompt-major groups of unequal sizes, right- or left-padded: the log-probs equal the per-row
    computation (float64: summation order only); left padding counts positions over real tokens
    on both sides, and the packed layout is the same as for the right-padded rows."""
    make = _batch if padding == "right" else _left_padded
    ids, attn, loss = make(ROLLOUT_ROWS, ROLLOUT_STARTS)
    mask = loss[:, 1:]
    model = make_tiny_lm(3).double()
    want = token_logprobs(model, ids, attn, target_mask=mask)
    got = shared_token_logprobs(model, ids, attn, 1, mask, groups=ROLLOUT_GROUPS)
    assert torch.allclose(got, want, atol=1e-10, rtol=0)
    assert (got[mask == 0] == 0).all() and (got[mask == 1] != 0).all()
    right = pack_groups(*_batch(ROLLOUT_ROWS, ROLLOUT_STARTS)[:2], groups=ROLLOUT_GROUPS)
    packed = pack_groups(ids, attn, groups=ROLLOUT_GROUPS)
    assert torch.equal(packed.input_ids, right.input_ids)
    assert torch.equal(packed.position_ids, right.position_ids)


def test_batch_groups_drive_token_logprobs_and_hidden_states():
    """``prefix_group`` labels in a batch (any row order, e.g. a shuffled minibatch) select the
    shared path; the shifted hidden states read back per row equal the per-row ones on every real
    position (what a critic's value head reads)."""
    from alignlab.models.logprobs import final_hidden_states
    from alignlab.models.shared_prefix import (
        PREFIX_GROUP,
        batch_groups,
        grouped_shifted_hidden_states,
        grouped_token_logprobs,
    )

    order = torch.tensor([4, 0, 5, 2, 3, 1])  # rows of prompts 1, 0, 2, 0, 1, 0
    ids, attn, loss = (t[order] for t in _batch(ROLLOUT_ROWS, ROLLOUT_STARTS))
    batch = {"input_ids": ids, "attention_mask": attn, "loss_mask": loss,
             PREFIX_GROUP: torch.tensor([1, 0, 2, 0, 1, 0])}
    groups = batch_groups(batch)
    assert groups == [[1, 3, 5], [4, 0], [2]]  # label order; rows in the order of their tokens
    model = make_tiny_lm(4).double()
    want = token_logprobs(model, ids, attn, target_mask=loss[:, 1:])
    got = grouped_token_logprobs(model, batch, 1, groups=groups)
    assert torch.allclose(got, want, atol=1e-10, rtol=0)
    hidden = grouped_shifted_hidden_states(model, batch, groups)
    plain = final_hidden_states(model, ids, attn)[:, :-1]
    real = attn[:, 1:].bool()
    assert hidden.shape == plain.shape
    assert torch.allclose(hidden[real], plain[real], atol=1e-10, rtol=0)
    assert grouped_shifted_hidden_states(model, batch, [[n] for n in range(6)]).equal(plain)
