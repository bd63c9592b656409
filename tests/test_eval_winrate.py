"""Win rate and proxy reward of alignlab.eval.winrate with a tiny RM whose scores are known."""

from __future__ import annotations

import math

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast

from alignlab.data.records import Message
from alignlab.eval.winrate import RewardJudge, proxy_reward, rm_lengths, win_rate

WORDS = ["[PAD]", "[UNK]", "Human:", "Assistant:", "hello", "there", "great", "ok", "bad", "fine"]
# the RM score of a sequence is a function of its last token: c / rms([c, 1, 0, ...])
WORD_VALUE = {"great": 3.0, "fine": 1.0, "ok": 0.0, "bad": -3.0}
HIDDEN = 8


def word_tokenizer() -> PreTrainedTokenizerFast:
    """Whitespace word tokenizer with no bos/eos, so the last token of a completion is its last word."""
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]")


def known_rm() -> LlamaForSequenceClassification:
    """A Llama RM whose layers add nothing (o_proj, down_proj zero), so the pooled hidden state is the
    normalised embedding of the last token; the score head reads dimension 0."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(WORDS), hidden_size=HIDDEN, intermediate_size=16,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                         num_labels=1, pad_token_id=0, rms_norm_eps=1e-12)
    model = LlamaForSequenceClassification(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = torch.zeros(len(WORDS), HIDDEN)
        emb[:, 1] = 1.0
        for word, value in WORD_VALUE.items():
            emb[WORDS.index(word), 0] = value
        model.model.embed_tokens.weight.copy_(emb)
        model.score.weight.zero_()
        model.score.weight[0, 0] = 1.0
    return model


def expected_score(word: str) -> float:
    c = WORD_VALUE[word]
    return c / math.sqrt((c * c + 1.0) / HIDDEN)


PROMPT = (Message("user", "hello there"),)
LONG_PROMPT = (Message("user", "hello"), Message("assistant", "ok"), Message("user", "hello there"))


def test_judge_scores_match_the_known_function():
    judge = RewardJudge(known_rm(), word_tokenizer(), max_length=64, max_prompt_length=32,
                        batch_size=2)
    completions = ["ok great", "bad", "hello there fine", "great ok", "great bad"]
    prompts = [PROMPT, LONG_PROMPT, PROMPT, LONG_PROMPT, PROMPT]
    scores = judge.score(prompts, completions)
    expected = [expected_score(c.split()[-1]) for c in completions]
    assert scores == pytest.approx(expected, abs=1e-4)


def test_win_rate_from_the_rm():
    judge = RewardJudge(known_rm(), word_tokenizer(), max_length=64, max_prompt_length=32)
    policy = judge.score([PROMPT] * 4, ["great", "ok", "bad", "fine"])
    reference = judge.score([PROMPT] * 4, ["bad", "ok", "great", "ok"])
    stat = win_rate(policy, reference)  # win, tie, loss, win
    assert stat.mean == pytest.approx((1 + 0.5 + 0 + 1) / 4) and stat.n == 4
    # outcomes 1, .5, 0, 1: mean .625; squared deviations .140625+.015625+.390625+.140625 = .6875
    assert stat.se == pytest.approx(math.sqrt(0.6875 / 3 / 4))
    mean_proxy = proxy_reward(policy).mean
    assert mean_proxy == pytest.approx(sum(expected_score(w) for w in ["great", "ok", "bad", "fine"]) / 4,
                                       abs=1e-4)


def test_win_rate_length_mismatch():
    with pytest.raises(ValueError, match="pair them per prompt"):
        win_rate([1.0, 2.0], [1.0])


def test_rm_lengths_read_from_rm_run(tmp_path):
    assert rm_lengths(str(tmp_path / "nothing" / "model")) == (512, 256)
    (tmp_path / "config.yaml").write_text("stage: rm\ntrain: {max_length: 96, max_prompt_length: 64}\n")
    assert rm_lengths(str(tmp_path / "model")) == (96, 64)
