"""Rollouts on a tiny Llama: layout, masks, scores and the recorded log-probs."""

import torch
from test_train_stages import _tokenizer

from alignlab.config import GenerationSettings
from alignlab.data.records import Message
from alignlab.generation.hf import HFGenerator
from alignlab.models.logprobs import token_logprobs
from alignlab.rl.rollout import collect_rollout
from alignlab.rl.scorers import FunctionScorer


def _tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(cfg).eval(), tok


def test_rollout_layout_masks_scores_and_logprobs():
    model, tok = _tiny()
    prompts = [(Message("user", "hi"),), (Message("user", "what is 2+2?"),)]
    settings = GenerationSettings(max_new_tokens=6, num_samples=3, temperature=1.0, seed=3)
    scorer = FunctionScorer(lambda prompt, text: float(len(text)), "length")
    rollout = collect_rollout(model, tok, HFGenerator(model, tok), prompts, settings, scorer,
                              max_prompt_length=32, reference=model)
    assert len(rollout.texts) == 6 and rollout.k == 3
    assert rollout.prompts == [prompts[0]] * 3 + [prompts[1]] * 3  # group-major
    assert rollout.scores.tolist() == [float(len(t)) for t in rollout.texts]
    mask = rollout.mask
    for row, sample in enumerate(rollout.samples):
        # response tokens (+ eos when the sample ended on eos) are exactly the masked positions
        expected = sample.token_ids + ([tok.eos_token_id] if sample.stop_reason == "eos" else [])
        ids = rollout.batch["input_ids"][row, 1:][mask[row] == 1].tolist()
        assert ids == expected, row
    fresh = token_logprobs(model, rollout.batch["input_ids"], rollout.batch["attention_mask"])
    torch.testing.assert_close(rollout.old_logp * mask, fresh * mask, rtol=0, atol=1e-5)
    assert (rollout.old_logp[mask == 0] == 0).all()
    # the reference is the same model here, so every per-token log-ratio is 0
    assert torch.equal(rollout.ref_logp, rollout.old_logp)
