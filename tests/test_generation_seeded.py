"""Per-row random streams: inverse-CDF draws, batch- and process-independent samples, and the
same samples from ``model.generate`` (HFGenerator) and the hand-written mixture decoding loop."""

from __future__ import annotations

import pytest
import torch
from test_generation import PROMPTS
from test_models_tiny import make_tiny_lm, make_tokenizer

from alignlab.config import GenerationSettings
from alignlab.generation import HFGenerator
from alignlab.generation.mixture import MixtureGenerator
from alignlab.generation.seeded import RowStreams, inverse_cdf_sample, stream_seed

SEEDS = [stream_seed(7, i) for i in range(len(PROMPTS))]


@pytest.fixture(scope="module")
def model_and_tokenizer():
    tok = make_tokenizer()
    tok.pad_token = tok.eos_token
    return make_tiny_lm(0), tok


def sampling(**kw):
    return GenerationSettings(**{"temperature": 1.0, "top_p": 0.9, "num_samples": 3,
                                 "max_new_tokens": 10, **kw})


def ids(groups):
    return [[s.token_ids for s in group] for group in groups]


def test_inverse_cdf_picks_the_first_token_past_u_and_never_an_impossible_one():
    # probabilities 0.2, 0, 0.5, 0.3, 0: cumulative 0.2, 0.2, 0.7, 1.0, 1.0
    logprobs = torch.tensor([[0.2, 0.0, 0.5, 0.3, 0.0]]).log().expand(6, 5)
    u = torch.tensor([0.0, 0.19, 0.21, 0.69, 0.71, 1.0], dtype=torch.float64)  # 1.0: u at its limit
    assert inverse_cdf_sample(logprobs, u).tolist() == [0, 0, 2, 2, 3, 3]


def test_inverse_cdf_draws_follow_the_distribution():
    probs = torch.tensor([0.1, 0.6, 0.05, 0.25])
    u = torch.rand(40000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    drawn = inverse_cdf_sample(probs.log().expand(len(u), 4), u)
    freq = torch.bincount(drawn, minlength=4).double() / len(u)
    assert freq.tolist() == pytest.approx(probs.tolist(), abs=0.01)  # 4 sd of the largest: 0.0098


def test_row_streams_depend_only_on_their_own_seed():
    both, second = RowStreams.for_prompts([11, 12], 2, 3), RowStreams.for_prompts([12], 2, 3)
    steps = [(both.draw("cpu"), second.draw("cpu")) for _ in range(3)]
    assert all(torch.equal(a[2:], b) for a, b in steps)
    assert len({float(x) for a, _ in steps for x in a}) == 12
    with pytest.raises(RuntimeError, match="more than 3 decoding steps"):
        both.draw("cpu")


def test_a_prompts_samples_do_not_depend_on_its_batch(model_and_tokenizer):
    generator = HFGenerator(*model_and_tokenizer)
    together = generator.generate(PROMPTS, sampling(), seeds=SEEDS)
    alone = [generator.generate([p], sampling(), seeds=[s])[0] for p, s in zip(PROMPTS, SEEDS)]
    reversed_small = generator.generate(PROMPTS[::-1], sampling(batch_size=6), seeds=SEEDS[::-1])
    assert ids(together) == ids(alone) == ids(reversed_small[::-1])
    assert len({tuple(s) for group in ids(together) for s in group}) > 10  # real sampling
    other = generator.generate(PROMPTS, sampling(), seeds=[s + 1 for s in SEEDS])
    assert ids(other) != ids(together)
    with pytest.raises(ValueError, match="2 seeds for 5 prompts"):
        generator.generate(PROMPTS, sampling(), seeds=SEEDS[:2])


def test_generate_and_the_mixture_loop_draw_the_same_samples(model_and_tokenizer):
    # the policy/reference mixture at coefficient 0 is the policy: its own decoding loop, fed the
    # same streams, must pick the tokens model.generate picks
    model, tok = model_and_tokenizer
    hf = HFGenerator(model, tok).generate(PROMPTS, sampling(), seeds=SEEDS)
    mixed = MixtureGenerator(model, tok, None, 0.0).generate(PROMPTS, sampling(), seeds=SEEDS)
    assert ids(hf) == ids(mixed)
