"""Packed SFT rows: each document attends only to itself, so a packed row's log-probs, loss and
gradients equal those of its documents run one by one (tiny float64 Llama, eager and sdpa)."""

from __future__ import annotations

import itertools

import pytest
import torch
from test_models_tiny import make_tiny_lm

from alignlab.data.collate import pad_encoded
from alignlab.data.packing import check_packing_support, pack_encoded
from alignlab.data.tokenize import Encoded
from alignlab.models.logprobs import token_logprobs
from alignlab.train.forward import TokenLogprobModule
from alignlab.train.sft import sft_step

# Four documents: first-fit into rows of 12 gives [doc0 + doc1 + doc3] (12 tokens) and [doc2] (4,
# padded to 12), so row 0 holds three documents and row 1 has padding after a single one.
DOCS = [Encoded([1, 5, 6, 7, 8, 9], [0, 0, 0, 1, 1, 1]),
        Encoded([1, 10, 11, 12], [0, 0, 1, 1]),
        Encoded([1, 13, 14, 15, 16, 17, 18, 19, 20], [0, 0, 0, 1, 1, 1, 1, 1, 1]),
        Encoded([1, 21], [0, 1])]


def tiny(attn: str):
    return make_tiny_lm(3, attn_implementation=attn).double()


def separate_logprobs(model) -> list[torch.Tensor]:
    """Each document alone (no padding): its [len-1] shifted token log-probs."""
    out = []
    for doc in DOCS:
        ids = torch.tensor([doc.input_ids])
        out.append(token_logprobs(model, ids, torch.ones_like(ids))[0])
    return out


def packed_segments(rows: list[Encoded], values: torch.Tensor) -> list[torch.Tensor]:
    """Cut a packed [B, T-1] log-prob tensor back into each document's own [len-1] values (in the
    order the documents were packed: row by row, left to right)."""
    pieces = []
    for r, row in enumerate(rows):
        starts = [i for i, p in enumerate(row.position_ids) if p == 0] + [len(row.input_ids)]
        for a, b in itertools.pairwise(starts):
            pieces.append(values[r, a:b - 1])  # log p of tokens a+1..b-1 (inside the document)
    return pieces


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_packed_row_logprobs_equal_separate_documents(attn):
    check_packing_support()
    model = tiny(attn)
    rows = pack_encoded(DOCS, max_length=12)
    assert [len(r.input_ids) for r in rows] == [12, 9]  # [doc0, doc1, doc3], [doc2]
    batch = pad_encoded(rows, pad_id=0)
    everything = {**batch, "loss_mask": torch.ones_like(batch["loss_mask"])}
    with torch.no_grad():
        packed = packed_segments(rows, TokenLogprobModule(model)(everything))
        alone = separate_logprobs(model)
        # The old behaviour (an all-ones padding mask with the same position ids) lets later
        # documents of row 0 see the earlier ones, so this comparison can fail.
        old = token_logprobs(model, batch["input_ids"], batch["attention_mask"],
                             batch["position_ids"])
        leaky = packed_segments(rows, old)
    for piece, doc in zip(packed, (0, 1, 3, 2)):
        torch.testing.assert_close(piece, alone[doc], rtol=0, atol=1e-12)
    assert (leaky[1] - alone[1]).abs().max() > 1e-3


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_packed_sft_loss_and_gradients_equal_unpacked(attn):
    unpacked_model, packed_model = tiny(attn), tiny(attn)
    unpacked = pad_encoded(DOCS, pad_id=0)
    packed = pad_encoded(pack_encoded(DOCS, max_length=12), pad_id=0)
    assert packed["input_ids"].shape[0] == 2 and unpacked["input_ids"].shape[0] == 4
    results = []
    for model, batch in ((unpacked_model, unpacked), (packed_model, packed)):
        total, n, _ = sft_step(TokenLogprobModule(model), batch)
        total.backward()
        results.append((total.detach(), int(n), model))
    (t0, n0, m0), (t1, n1, m1) = results
    assert n0 == n1 == sum(sum(d.loss_mask[1:]) for d in DOCS)
    torch.testing.assert_close(t1, t0, rtol=1e-12, atol=1e-12)
    for (name, p0), p1 in zip(m0.named_parameters(), m1.parameters()):
        torch.testing.assert_close(p1.grad, p0.grad, rtol=1e-9, atol=1e-12, msg=name)


def test_check_packing_support_names_the_missing_function(monkeypatch):
    import transformers.masking_utils as masking

    monkeypatch.delattr(masking, "find_packed_sequence_indices")
    with pytest.raises(ValueError, match="find_packed_sequence_indices"):
        check_packing_support()
