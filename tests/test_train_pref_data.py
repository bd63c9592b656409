"""Preference-stage examples (slot-major batches, mismatched rows, ranked padding) and the
reference log-prob cache keys and blocks."""

import torch

from alignlab.config import ModelSettings
from alignlab.data.records import BinaryFeedback, Message
from alignlab.data.tokenize import Encoded
from alignlab.train.pref_examples import Example, collate_examples, mismatch_index
from alignlab.train.reference_cache import (
    ReferenceCache,
    cache_meta,
    cached_reference,
    data_digest,
    example_layout,
    model_fingerprint,
)


def enc(*ids):
    return Encoded(list(ids), [0] + [1] * (len(ids) - 1))


def test_collate_is_slot_major_with_reference_and_lists():
    a = Example((enc(5, 6), enc(5, 7, 8)), scores=(1.0, 0.0), valid=(True, True), ref=(-1.0, -2.0))
    b = Example((enc(9, 6, 6), enc(9, 7)), scores=(0.0, 2.0), valid=(True, False), ref=(-3.0, -4.0))
    batch = collate_examples([a, b], pad_id=0)
    # rows: a.slot0, b.slot0, a.slot1, b.slot1, right-padded to width 3
    assert batch["input_ids"].tolist() == [[5, 6, 0], [9, 6, 6], [5, 7, 8], [9, 7, 0]]
    assert batch["loss_mask"].tolist() == [[0, 1, 0], [0, 1, 1], [0, 1, 1], [0, 1, 0]]
    assert batch["ref"].tolist() == [-1.0, -3.0, -2.0, -4.0]
    assert batch["scores"].tolist() == [[1.0, 0.0], [0.0, 2.0]]
    assert batch["valid"].tolist() == [[True, True], [True, False]]


def test_mismatch_index_skips_same_prompt_and_converted_neighbours():
    p, q = (Message("user", "p"),), (Message("user", "q"),)
    # a converted pair puts chosen and rejected of one prompt next to each other
    records = [BinaryFeedback(p, "good", True), BinaryFeedback(p, "bad", False),
               BinaryFeedback(q, "fine", True), BinaryFeedback(q, "rude", False)]
    picks = [mismatch_index(records, i) for i in range(4)]
    assert picks == [2, 3, 0, 1]  # half the data away: always the other prompt
    assert all(records[j].prompt != records[i].prompt for i, j in enumerate(picks))


def _examples(*seqs):
    return [Example((enc(*s),)) for s in seqs]


def test_data_digest_sees_tokens_and_masks():
    base = data_digest(_examples((1, 2, 3), (4, 5)))
    assert base == data_digest(_examples((1, 2, 3), (4, 5)))
    assert base != data_digest(_examples((1, 2, 3), (4, 6)))
    moved = [Example((Encoded([1, 2, 3], [0, 0, 1]),)), Example((enc(4, 5),))]
    assert base != data_digest(moved)  # same ids, different target mask


def test_model_fingerprint_changes_when_weights_change(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"x" * 10)
    settings = ModelSettings(path=str(tmp_path))
    first = model_fingerprint(settings, adapter_base=False)
    assert first == model_fingerprint(settings, adapter_base=False)
    assert first != model_fingerprint(settings, adapter_base=True)
    assert first != model_fingerprint(ModelSettings(path=str(tmp_path), dtype="bfloat16"), False)
    (tmp_path / "model.safetensors").write_bytes(b"y" * 11)
    assert first != model_fingerprint(settings, False)


def test_cached_reference_computes_missing_blocks_only(tmp_path):
    examples = _examples(*[(i, i + 1) for i in range(5)])
    calls = []

    def compute(block):
        calls.append(len(block))
        return torch.tensor([[float(ex.rows[0].input_ids[0])] for ex in block])

    def run(cache):
        return cached_reference(examples, cache, compute, True, lambda: None, lambda m: None)

    meta = cache_meta({"weights": "w"}, example_layout("binary", examples, False), examples, 2)
    cache = ReferenceCache(tmp_path, meta, print)
    first = run(cache)
    assert calls == [2, 2, 1] and [ex.ref for ex in first] == [(float(i),) for i in range(5)]
    (cache.folder / "block-00001.pt").unlink()  # as if killed while writing block 1
    second = run(ReferenceCache(tmp_path, meta, print))
    assert calls == [2, 2, 1, 2]  # only the missing block is recomputed
    assert [ex.ref for ex in second] == [ex.ref for ex in first]
    assert not list(cache.folder.glob("*.tmp*"))
    memory_only = ReferenceCache(None, meta, print)
    assert [ex.ref for ex in run(memory_only)] == [ex.ref for ex in first]
