"""Last-token log-probs with shared prefixes run once (models.prefix_groups): grouping, the packed
layout, and equality with one forward per context.

Tolerances: in float64 the packed and per-context forwards differ only in summation order (1e-10);
in float32 the bar is 1e-5.
"""

import pytest
import torch
from test_models_tiny import make_tiny_lm

from alignlab.models.prefix_groups import (
    attention_break_even,
    group_by_prefix,
    last_token_logprobs,
    pack_contexts,
)

T = torch.tensor


def _rows(lists):
    return [T(r) for r in lists]


# Contexts with shared prefixes of different lengths, one that is a prefix of another, an exact
# duplicate, and rows that share nothing (or only a first token) with the others.
CONTEXTS = [
    [1, 10, 11, 12, 13, 14, 15, 16, 20, 21, 22],   # 0: group A, long shared head (8 tokens)
    [1, 10, 11, 12, 13, 14, 15, 16, 30, 31],       # 1: group A
    [1, 10, 11, 12, 13, 14, 15, 16],               # 2: group A: the shared head itself
    [1, 40, 41, 42, 43, 50, 51, 52, 53],           # 3: group B, short head (5 tokens)
    [1, 40, 41, 42, 43, 60, 61],                   # 4: group B
    [1, 40, 41, 42, 43, 60, 61],                   # 5: duplicate of 4
    [70, 71, 72, 73, 74, 75],                      # 6: alone (nothing shared)
    [1, 80, 81, 82, 83, 84, 85, 86, 87, 88, 89],   # 7: alone (only the first token shared)
]
OPTIONS = [[3, 4], [5, 3], [3, 4], [6, 7], [3, 4], [3, 4], [8, 9], [3, 4]]


def test_groups_by_hand():
    groups = group_by_prefix(_rows(CONTEXTS), max_tokens=64)
    assert sorted(sorted(g) for g in groups) == [[0, 1, 2], [3, 4, 5], [6], [7]]


def test_group_rules_by_hand():
    rows = _rows([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [1, 2, 3, 4, 5, 6, 7, 8, 9, 11],
                  [1, 2, 30, 31, 32, 33, 34, 35, 36, 37]])
    # rows 0/1 share 9 of 10 tokens; row 2 shares 2 tokens with them: joining would cost the
    # two members 7 prefix tokens each to save 2, so it opens its own group
    assert group_by_prefix(rows, max_tokens=64) == [[0, 1], [2]]
    # with the width cap at 10 nothing joins (a group of two is 11 tokens wide)
    assert group_by_prefix(rows, max_tokens=10) == [[0], [1], [2]]
    # two tokens shared: one row of 18 tokens instead of two of 10 saves tokens (infinite span),
    # but with attention costing as much as the other layers at 20 keys, 18 + 18²/20 = 34.2 is
    # more than 2 * (10 + 10²/20) = 30
    assert group_by_prefix(rows[1:], max_tokens=64) == [[0, 1]]
    assert group_by_prefix(rows[1:], max_tokens=64, span=20.0) == [[0], [1]]
    assert group_by_prefix(rows[:2], max_tokens=64, span=20.0) == [[0, 1]]  # 11 + 6.05 < 30


def test_attention_break_even_of_the_tiny_llama():
    # per layer: q, k, v, o (32x32, 32x16, 32x16, 32x32), gate/up/down (3 x 32x64), 2 norms (32)
    per_layer = 32 * 32 * 2 + 32 * 16 * 2 + 3 * 32 * 64 + 2 * 32
    assert attention_break_even(make_tiny_lm(0)) == pytest.approx(per_layer / 64 + 32 / 2 / 64)


def test_last_columns_by_hand():
    rows = _rows([[5, 6, 7, 8, 9], [5, 6, 7, 20], [5, 6], [30, 31, 32], [30, 31, 32]])
    layout, last = pack_contexts(rows, [[0, 1, 2], [3, 4]])
    # group 0: prefix 5 6 once, then suffixes 7 8 9 | 7 20 | (empty: row 2 is the prefix itself);
    # group 1: two equal rows are all prefix
    assert layout.input_ids[0].tolist() == [5, 6, 7, 8, 9, 7, 20]
    assert layout.input_ids[1, :3].tolist() == [30, 31, 32]
    assert last.tolist() == [4, 6, 1, 2, 2] and layout.group.tolist() == [0, 0, 0, 1, 1]
    with pytest.raises(ValueError, match="at least one token"):
        pack_contexts(rows[:1] + [T([], dtype=torch.long)], [[0], [1]])


def _per_context(model, contexts, options):
    """One forward per context (no padding, no sharing): the reference."""
    out = []
    with torch.no_grad():
        for ctx, ids in zip(contexts, options, strict=True):
            logits = model(torch.tensor([ctx])).logits[0, -1]
            out.append(torch.log_softmax(logits, -1)[ids])
    return torch.stack(out)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("batch_size", [1, 3, 8])  # 8: every group in one forward
def test_equals_one_forward_per_context(dtype, tol, attention, batch_size):
    model = make_tiny_lm(0).to(dtype)
    model.set_attn_implementation(attention)
    want = _per_context(model, CONTEXTS, OPTIONS)
    got = last_token_logprobs(model, CONTEXTS, OPTIONS, batch_size)
    assert got.dtype == dtype and got.shape == (len(CONTEXTS), 2)
    assert torch.allclose(got, want, atol=tol, rtol=0)
    assert (want[:, 0] - want[:, 1]).abs().max() > 0.1  # the options are told apart


def test_group_width_cap_changes_nothing():
    model = make_tiny_lm(1).double()
    want = _per_context(model, CONTEXTS, OPTIONS)
    got = last_token_logprobs(model, CONTEXTS, OPTIONS, batch_size=2, max_group_tokens=12)
    assert torch.allclose(got, want, atol=1e-10, rtol=0)
