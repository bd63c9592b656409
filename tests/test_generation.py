"""HFGenerator on a tiny Llama: order, num_samples, stop strings, determinism, batch independence."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from test_models_tiny import make_tiny_lm, make_tokenizer

from alignlab.config import GenerationSettings
from alignlab.data.records import Message
from alignlab.data.tokenize import prompt_ids, render_prompt
from alignlab.generation import GenerationBackendError, HFGenerator, Sample, make_generator

PROMPTS = [
    (Message("user", "Hi"),),
    (Message("user", "What is the capital of the moon, please?"),),
    (Message("system", "Be brief."), Message("user", "Count to three")),
    (Message("user", "ok"), Message("assistant", "yes"), Message("user", "and then what?")),
    (Message("user", "A somewhat longer question about lists of things"),),
]


@pytest.fixture(scope="module")
def generator():
    tok = make_tokenizer()
    tok.pad_token = tok.eos_token
    return HFGenerator(make_tiny_lm(0), tok)


def greedy(**kw):
    return GenerationSettings(**{"temperature": 0.0, "max_new_tokens": 12, **kw})


def test_greedy_is_batch_independent_and_in_prompt_order(generator):
    together = generator.generate(PROMPTS, greedy(batch_size=3))
    alone = [generator.generate([p], greedy())[0] for p in PROMPTS]
    assert together == alone
    assert len({s[0].text for s in together}) > 2  # different prompts give different texts


def test_greedy_matches_manual_argmax_decoding(generator):
    model, tok = generator.model, generator.tokenizer
    ids = torch.tensor([prompt_ids(tok, render_prompt(tok, PROMPTS[1]))])
    produced = []
    with torch.no_grad():
        for _ in range(12):
            nxt = int(model(input_ids=ids).logits[0, -1].argmax())
            if nxt == tok.eos_token_id:
                break
            produced.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    sample = generator.generate([PROMPTS[1]], greedy())[0][0]
    assert sample.token_ids == produced
    assert sample.text == tok.decode(produced)


def test_num_samples_and_seeded_sampling(generator):
    settings = GenerationSettings(temperature=1.0, max_new_tokens=10, num_samples=3, seed=7,
                                  batch_size=6)
    state = torch.get_rng_state()
    first = generator.generate(PROMPTS, settings)
    assert torch.equal(torch.get_rng_state(), state)  # caller's RNG untouched
    assert [len(s) for s in first] == [3] * len(PROMPTS)
    assert first == generator.generate(PROMPTS, settings)  # same seed → same samples
    other = generator.generate(PROMPTS, settings.model_copy(update={"seed": 8}))
    assert other != first
    texts = [s.text for row in first for s in row]
    assert len(set(texts)) > len(PROMPTS)  # samples of one prompt differ
    for row in first:
        for sample in row:
            assert generator.tokenizer.decode(sample.token_ids, skip_special_tokens=True) == sample.text


def test_greedy_num_samples_are_identical(generator):
    rows = generator.generate(PROMPTS[:2], greedy(num_samples=2))
    assert all(len(r) == 2 and r[0] == r[1] for r in rows)


def test_stop_strings_cut_text_and_token_ids(generator):
    full = generator.generate(PROMPTS, greedy(max_new_tokens=20))
    text = full[1][0].text
    stop = text[4:6]
    cut = text.index(stop)
    rows = generator.generate(PROMPTS, greedy(max_new_tokens=20, stop=[stop, "@@never@@"]))
    sample = rows[1][0]
    assert sample.text == text[:cut] and sample.stop_reason == "stop"
    assert sample.token_ids == full[1][0].token_ids[:cut]  # char tokenizer: one id per char
    for row, ref in zip(rows, full):  # other prompts are cut at their own first occurrence
        expected = ref[0].text.split(stop)[0]
        assert row[0].text == expected


def test_to_sample_trims_eos_padding_and_reports_reason(generator):
    tok = generator.tokenizer
    ids = tok("abc")["input_ids"]
    eos = tok.eos_token_id
    assert generator._to_sample(ids + [eos, eos, eos], []) == Sample("abc", ids, "eos")
    assert generator._to_sample(ids, []) == Sample("abc", ids, "length")
    assert generator._to_sample(ids + tok("XYdef")["input_ids"], ["XY"]) == Sample("abc", ids, "stop")


def test_make_generator_backends(generator):
    made = make_generator("hf", generator.model, generator.tokenizer)
    assert isinstance(made, HFGenerator)
    with pytest.raises(GenerationBackendError, match="unknown generation backend"):
        make_generator("nope", generator.model, generator.tokenizer)
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(GenerationBackendError, match="pip install 'alignlab\\[vllm\\]'"):
            make_generator("vllm")
