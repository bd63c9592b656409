"""Tests for alignlab.gym.ladder: the default ladder's sizes, and a tiny ladder built, cached, reproduced
and sharing the base tokenizer byte for byte."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from alignlab.gym import base_model as B
from alignlab.gym import ladder as L
from alignlab.gym.build import corpus_hash, corpus_texts
from alignlab.gym.corpus import BASE_RATES, sample_conversations
from alignlab.gym.prompts import make_prompt_pools
from alignlab.gym.world import generate_world

TINY = (("big", B.BaseModelSpec(hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
                                seq_len=32, batch_size=4)),
        ("small", B.BaseModelSpec(hidden_size=8, num_layers=1, num_heads=2, intermediate_size=16,
                                  seq_len=32, batch_size=4)))


class FakeTokenizer(list):
    """What make_model reads: len() and the special-token ids."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0


def llama_parameters(spec: B.BaseModelSpec, vocab: int) -> int:
    """Hand count: tied embedding, per layer q/k/v/o + gate/up/down + two norms, final norm."""
    h, f = spec.hidden_size, spec.intermediate_size
    return vocab * h + spec.num_layers * (4 * h * h + 3 * h * f + 2 * h) + h


def test_default_ladder_sizes_span_30x():
    vocab = FakeTokenizer(range(1135))
    counts = [L.count_parameters(B.make_model(spec, vocab)) for _, spec in L.LADDER_SPECS]
    assert counts == [llama_parameters(spec, 1135) for _, spec in L.LADDER_SPECS]
    assert all(a < b for a, b in itertools.pairwise(counts))
    assert counts[-1] / counts[0] >= 30
    assert L.LADDER_SPECS[-1][1] == B.BaseModelSpec()  # the top rung is the base model's spec
    assert [n for n, _ in L.LADDER_SPECS] == ["xs", "s", "m", "l"]


def test_learning_rate_scales_inversely_with_width():
    for _, spec in L.LADDER_SPECS:
        assert spec.learning_rate * spec.hidden_size == pytest.approx(3e-3 * 96)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A small gym corpus and a tokenizer trained on it, saved as the base model's would be."""
    from alignlab.gym.tokenizer import train_tokenizer

    world = generate_world(0)
    train, _ = make_prompt_pools(world, 0, 200, 10)
    texts = corpus_texts(world, sample_conversations(random.Random(0), world, train, 150, BASE_RATES))
    texts = texts[: 150 + len(world.fact_sentences())]
    folder = tmp_path_factory.mktemp("base_model")
    train_tokenizer(texts, vocab_size=400).save_pretrained(folder)
    return texts, folder


def build(out, corpus, steps=3, specs=TINY, log=None):
    texts, tok_dir = corpus
    return L.build_ladder(out, texts, tok_dir, corpus_hash(texts), seed=0, steps=steps, specs=specs,
                          log=log or (lambda m: None))


def test_tiny_ladder_is_ordered_loadable_and_shares_the_tokenizer(tmp_path, corpus):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ladder = build(tmp_path / "ladder", corpus)
    assert json.loads((tmp_path / "ladder/ladder.json").read_text()) == ladder
    assert [r["name"] for r in ladder["rungs"]] == ["small", "big"]  # increasing size
    base_tok = AutoTokenizer.from_pretrained(corpus[1])
    for rung, path in zip(ladder["rungs"], L.read_ladder(tmp_path)):
        assert rung["folder"] == f"ladder/{rung['name']}"
        assert path["path"] == str(tmp_path / rung["folder"])
        folder = tmp_path / rung["folder"]
        model = AutoModelForCausalLM.from_pretrained(folder)
        assert L.count_parameters(model) == rung["parameters"] and rung["pretrain"]["steps"] == 3
        for name in ("tokenizer.json", "tokenizer_config.json"):
            assert (folder / name).read_bytes() == (corpus[1] / name).read_bytes()
        tok = AutoTokenizer.from_pretrained(folder)
        assert L.tokenizer_hash(tok) == L.tokenizer_hash(base_tok) == ladder["tokenizer_hash"]
        meta = json.loads((folder / "gym_build.json").read_text())
        assert (meta["seed"], meta["steps"], meta["corpus_hash"]) == (0, 3, ladder["corpus_hash"])
    small, big = (r["parameters"] for r in ladder["rungs"])
    assert ladder["span"] == pytest.approx(big / small, abs=0.01)


def test_ladder_is_cached_and_rebuilt_when_the_key_changes(tmp_path, corpus, monkeypatch):
    first = build(tmp_path / "ladder", corpus)
    weights = {n: (tmp_path / "ladder" / n / "model.safetensors").read_bytes() for n, _ in TINY}
    logs: list[str] = []
    with monkeypatch.context() as m:
        m.setattr(B, "pretrain", lambda *a, **k: pytest.fail("a cached rung was pretrained again"))
        assert build(tmp_path / "ladder", corpus, log=logs.append) == first
    assert sum("cached" in line for line in logs) == 2
    for name, w in weights.items():
        assert (tmp_path / "ladder" / name / "model.safetensors").read_bytes() == w
    logs.clear()
    build(tmp_path / "ladder", corpus, steps=4, log=logs.append)
    assert not any("cached" in line for line in logs)
    changed = TINY[:1] + (("small", L.scaled_spec(8, 1, 1, 16)),)  # one rung's spec changes
    other = build(tmp_path / "ladder", corpus, steps=4, specs=changed, log=logs.append)
    assert sum("cached" in line for line in logs) == 1 and other["rungs"][0]["spec"]["num_heads"] == 1


def test_ladder_is_reproducible(tmp_path, corpus):
    build(tmp_path / "a", corpus, specs=TINY[1:])
    build(tmp_path / "b", corpus, specs=TINY[1:])
    a = (tmp_path / "a/small/model.safetensors").read_bytes()
    assert a == (tmp_path / "b/small/model.safetensors").read_bytes()


def test_read_ladder_without_a_ladder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="ladder=true"):
        L.read_ladder(tmp_path)


def test_gym_config_ladder_fields():
    from alignlab.gym.stage import GymBuildConfig

    cfg = GymBuildConfig(out="gym")
    assert (cfg.ladder, cfg.ladder_steps) == (False, 300)
    assert GymBuildConfig(out="gym", ladder=True, ladder_steps=50).ladder_steps == 50
    with pytest.raises(ValueError, match="ladder_steps"):
        GymBuildConfig(out="gym", ladder_steps=0)
