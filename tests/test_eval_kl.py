"""The Monte-Carlo KL estimator of alignlab.eval.kl on tiny Llama models."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from alignlab.eval.kl import completion_batch, kl_estimate, kl_per_sample

VOCAB = 16


def tiny_lm(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def biased_copy(model: LlamaForCausalLM, token: int, bias: float) -> LlamaForCausalLM:
    """The same model with ``bias`` added to one output logit (a head with a bias vector)."""
    ref = copy.deepcopy(model)
    old = ref.lm_head
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        head.bias[token] = bias
    ref.lm_head = head
    return ref.eval()


def test_kl_is_zero_when_policy_is_reference():
    model = tiny_lm()
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    completions = [[3, 4, 5, 6], [7], [8, 9]]
    stat = kl_estimate(model, model, prompts, completions, pad_id=0, batch_size=2)
    assert stat.mean == 0.0 and stat.se == 0.0 and stat.n == 3
    twin = copy.deepcopy(model)
    assert kl_per_sample(model, twin, prompts, completions, pad_id=0) == [0.0, 0.0, 0.0]


def test_per_sample_matches_full_forward_with_padding():
    policy, reference = tiny_lm(0), tiny_lm(1)
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10]]
    completions = [[3, 4, 5, 6], [7], [8, 9]]
    got = kl_per_sample(policy, reference, prompts, completions, pad_id=0, batch_size=3)
    for value, p, c in zip(got, prompts, completions):
        ids = torch.tensor([p + c])
        with torch.no_grad():
            lp = torch.log_softmax(policy(ids).logits[0, :-1], -1)
            lr = torch.log_softmax(reference(ids).logits[0, :-1], -1)
        targets = ids[0, 1:]
        rows = torch.arange(len(p) - 1, len(p) + len(c) - 1)
        expected = (lp[rows, targets[rows]] - lr[rows, targets[rows]]).sum().item()
        assert value == pytest.approx(expected, abs=1e-4)


def test_one_token_estimate_approaches_analytic_kl():
    policy = tiny_lm(0)
    reference = biased_copy(policy, token=5, bias=1.5)
    prompt = [1, 2, 3, 4]
    with torch.no_grad():
        ids = torch.tensor([prompt])
        log_p = torch.log_softmax(policy(ids).logits[0, -1], -1)
        log_q = torch.log_softmax(reference(ids).logits[0, -1], -1)
    exact = (log_p.exp() * (log_p - log_q)).sum().item()
    gen = torch.Generator().manual_seed(0)
    draws = torch.multinomial(log_p.exp(), 3000, replacement=True, generator=gen).tolist()
    stat = kl_estimate(policy, reference, [prompt] * len(draws), [[t] for t in draws], pad_id=0,
                       batch_size=1000)
    assert exact > 0.05  # the bias makes a real difference
    assert abs(stat.mean - exact) < 3 * stat.se
    assert stat.se < 0.2 * exact


def test_completion_batch_masks_only_completion_targets():
    batch = completion_batch([[1, 2], [3]], [[4, 5, 6], []], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 4, 5, 6], [3, 0, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    # targets are input_ids[:, 1:] = [2, 4, 5, 6]: the last three are completion tokens
    assert batch["target_mask"].tolist() == [[0, 1, 1, 1], [0, 0, 0, 0]]


def test_vocabulary_mismatch_is_a_clear_error():
    other = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB + 4, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=4,
                                         num_key_value_heads=4))
    with pytest.raises(ValueError, match="same tokenizer"):
        kl_estimate(tiny_lm(), other, [[1]], [[2]], pad_id=0)
