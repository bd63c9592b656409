"""Chunked token log-probs equal the naive full-logits computation (values and gradients)."""

from __future__ import annotations

import pytest
import torch
from test_models_tiny import make_tiny_lm

from alignlab.config import LoraSettings
from alignlab.models.loading import apply_lora
from alignlab.models.logprobs import sequence_logprobs, token_logprobs
from alignlab.models.reference import precompute_logprobs, reference_logprobs

IDS = torch.tensor([[5, 9, 30, 41, 12, 7, 3, 66, 70, 11, 4],
                    [8, 3, 22, 60, 70, 11, 2, 2, 2, 2, 2]])
MASK = torch.tensor([[1] * 11, [1] * 6 + [0] * 5])
LOSS_MASK = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0]])


def naive_token_logprobs(model, ids, mask):
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 64])
def test_chunked_equals_naive_values_and_grads(chunk_size):
    model = make_tiny_lm(0)
    real = MASK[:, 1:].bool()
    naive = naive_token_logprobs(model, IDS, MASK)
    (naive * real).sum().backward()
    naive_grads = _grads(model)
    model.zero_grad(set_to_none=True)
    chunked = token_logprobs(model, IDS, MASK, chunk_size=chunk_size)
    (chunked * real).sum().backward()
    assert chunked.shape == (2, 10) and chunked.dtype == torch.float32
    torch.testing.assert_close(chunked[real], naive[real].detach(), rtol=0, atol=1e-5)
    chunked_grads = _grads(model)
    assert chunked_grads.keys() == naive_grads.keys() and len(naive_grads) > 10
    for name, grad in naive_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("chunk_size", [1, 64])
def test_target_mask_projects_only_selected_positions(chunk_size):
    model = make_tiny_lm(0)
    target = LOSS_MASK[:, 1:].bool()
    naive = naive_token_logprobs(model, IDS, MASK)
    (naive * target).sum().backward()
    naive_grads = _grads(model)
    model.zero_grad(set_to_none=True)
    selected = token_logprobs(model, IDS, MASK, chunk_size=chunk_size, target_mask=LOSS_MASK[:, 1:])
    (selected * target).sum().backward()
    torch.testing.assert_close(selected[target], naive[target].detach(), rtol=0, atol=1e-5)
    assert (selected[~target] == 0).all()  # unselected positions never reach the head
    for name, grad in naive_grads.items():
        torch.testing.assert_close(_grads(model)[name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_tied_embeddings_and_lora_model_match_naive():
    # float64 throughout, so the comparison is exact up to summation order (float32 rounding in the
    # tied-embedding gradient alone reaches ~4e-5 and depends on how positions are chunked)
    model = apply_lora(make_tiny_lm(1, tie_word_embeddings=True), LoraSettings(r=2), "CAUSAL_LM")
    model = model.double()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)
    real = MASK[:, 1:].bool()
    logits = model(input_ids=IDS, attention_mask=MASK).logits[:, :-1]
    naive = torch.log_softmax(logits, -1).gather(-1, IDS[:, 1:, None]).squeeze(-1)
    (naive * real).sum().backward()
    naive_grads = _grads(model)
    model.zero_grad(set_to_none=True)
    chunked = token_logprobs(model, IDS, MASK, chunk_size=3)
    (chunked * real).sum().backward()
    assert chunked.dtype == torch.float64
    torch.testing.assert_close(chunked[real], naive[real].detach(), rtol=0, atol=1e-10)
    for name, grad in naive_grads.items():
        torch.testing.assert_close(_grads(model)[name], grad, rtol=1e-9, atol=1e-10, msg=name)


def test_softcapped_logits_match_naive():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    cfg = Gemma2Config(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                       final_logit_softcapping=2.0, initializer_range=0.5)
    model = Gemma2ForCausalLM(cfg).eval()
    ids, mask = IDS[:1], MASK[:1]
    with torch.no_grad():
        naive = naive_token_logprobs(model, ids, mask)
        chunked = token_logprobs(model, ids, mask, chunk_size=4)
        uncapped = torch.log_softmax(model.lm_head(model.model(ids).last_hidden_state), -1)
    torch.testing.assert_close(chunked, naive, rtol=0, atol=1e-5)
    # the cap matters at this scale, so the test would catch a missing transform
    assert (uncapped[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1) - naive).abs().max() > 1e-2


def test_left_padding_gives_same_logprobs_as_unpadded():
    model = make_tiny_lm(0)
    ids = torch.tensor([[2, 2, 2, 8, 3, 22, 60, 70]])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        padded = token_logprobs(model, ids, mask)[:, 3:]
        alone = token_logprobs(model, ids[:, 3:], mask[:, 3:])
    torch.testing.assert_close(padded, alone, rtol=0, atol=1e-5)


def test_sequence_logprobs_sum_and_average_by_hand():
    model = make_tiny_lm(0)
    batch = {"input_ids": IDS, "attention_mask": MASK, "loss_mask": LOSS_MASK}
    with torch.no_grad():
        per_token = token_logprobs(model, IDS, MASK)
        total = sequence_logprobs(model, batch)
        mean = sequence_logprobs(model, batch, average=True)
    expected_0 = per_token[0, 2:].sum()  # targets are tokens 3..10 → predictions at 2..9
    expected_1 = per_token[1, 1:5].sum()  # targets are tokens 2..5
    torch.testing.assert_close(total, torch.stack([expected_0, expected_1]))
    torch.testing.assert_close(mean, torch.stack([expected_0 / 8, expected_1 / 4]))


def test_precompute_logprobs_runs_frozen_in_eval_and_keeps_order():
    model = make_tiny_lm(0, attention_dropout=0.5)  # dropout would make train-mode values random
    model.train()
    batches = [{"input_ids": IDS[i:i + 1], "attention_mask": MASK[i:i + 1],
                "loss_mask": LOSS_MASK[i:i + 1]} for i in (1, 0)]
    values = precompute_logprobs(model, batches)
    assert model.training and not values.requires_grad
    model.eval()
    with torch.no_grad():
        full = sequence_logprobs(model, {"input_ids": IDS, "attention_mask": MASK,
                                         "loss_mask": LOSS_MASK})
    torch.testing.assert_close(values, full.flip(0), rtol=1e-5, atol=1e-5)


def test_reference_logprobs_of_lora_policy_is_the_base_model():
    base = make_tiny_lm(0)
    batch = {"input_ids": IDS, "attention_mask": MASK, "loss_mask": LOSS_MASK}
    with torch.no_grad():
        expected = sequence_logprobs(base, batch)
    policy = apply_lora(make_tiny_lm(0), LoraSettings(r=2), "CAUSAL_LM")
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)
        assert (sequence_logprobs(policy, batch) - expected).abs().max() > 1e-2
    torch.testing.assert_close(reference_logprobs(policy, batch), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(precompute_logprobs(policy, [batch], disable_adapter=True), expected,
                               rtol=1e-5, atol=1e-5)
