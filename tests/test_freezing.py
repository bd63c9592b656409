"""train_last_layers: which parameters train, that gradients of the trained part are unchanged by the
freezing, LoRA placement, gradient checkpointing, and the rm stage leaving frozen weights bitwise."""

from __future__ import annotations

import json

import pytest
import torch

from alignlab.config import LoraSettings, ModelSettings
from alignlab.models.freezing import FreezeError, decoder_blocks, freeze_all_but_last
from alignlab.models.loading import load_causal_lm, load_reward_model
from tests.test_models_tiny import make_tiny_lm, save_tiny_lm

# Tiny Llama (hidden 32, 4 heads of 8, 2 KV heads, MLP 64, vocab 100), derived by hand:
# a block = q 32*32 + k 32*16 + v 32*16 + o 32*32 + gate/up/down 3 * 32*64 + 2 norms * 32 = 9280;
# embedding 100*32 = 3200, untied LM head 3200, final norm 32.
BLOCK, EMBED, HEAD, NORM = 9280, 3200, 3200, 32


def _ids():
    torch.manual_seed(1)
    return torch.randint(3, 100, (2, 12))


def _loss(model):
    return model(input_ids=_ids()).logits.float().pow(2).mean()


def test_counts_match_hand_derivation_untied_head():
    counts = freeze_all_but_last(make_tiny_lm(), 1)
    assert counts == {"trainable": BLOCK + NORM + HEAD, "frozen": BLOCK + EMBED}


def test_tied_head_is_frozen_with_the_embedding():
    counts = freeze_all_but_last(make_tiny_lm(tie_word_embeddings=True), 2)
    assert counts == {"trainable": 2 * BLOCK + NORM, "frozen": EMBED}


def test_trained_part_gets_the_same_gradient_as_full_fine_tuning():
    full, part = make_tiny_lm(), make_tiny_lm()
    freeze_all_but_last(part, 1)
    _loss(full).backward()
    _loss(part).backward()
    top_full = dict(decoder_blocks(full)[1].named_parameters())
    for name, param in decoder_blocks(part)[1].named_parameters():
        torch.testing.assert_close(param.grad, top_full[name].grad, rtol=1e-5, atol=1e-7)
    assert all(p.grad is None for p in decoder_blocks(part)[0].parameters())
    assert part.model.embed_tokens.weight.grad is None


def test_gradient_checkpointing_keeps_the_top_gradients():
    plain, ckpt = make_tiny_lm(), make_tiny_lm()
    for model in (plain, ckpt):
        freeze_all_but_last(model, 1)
        model.train()
    ckpt.gradient_checkpointing_enable()
    _loss(plain).backward()
    _loss(ckpt).backward()
    want = dict(decoder_blocks(plain)[1].named_parameters())
    for name, param in decoder_blocks(ckpt)[1].named_parameters():
        assert param.grad is not None, name
        torch.testing.assert_close(param.grad, want[name].grad, rtol=1e-5, atol=1e-7)


def test_k_out_of_range_is_a_clear_error():
    with pytest.raises(FreezeError, match="3 is not between 1 and the model's 2 decoder blocks"):
        freeze_all_but_last(make_tiny_lm(), 3)


def test_reward_model_loader_trains_top_block_and_score_head(tmp_path):
    folder = save_tiny_lm(tmp_path / "lm")
    model, _ = load_reward_model(ModelSettings(path=str(folder), train_last_layers=1))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "score.weight" in trainable and "model.norm.weight" in trainable
    assert not any(n.startswith("model.layers.0.") for n in trainable)
    assert any(n.startswith("model.layers.1.") for n in trainable)
    assert "model.embed_tokens.weight" not in trainable


def test_inference_load_ignores_the_setting(tmp_path):
    folder = save_tiny_lm(tmp_path / "lm")
    model, _ = load_causal_lm(ModelSettings(path=str(folder), train_last_layers=1), for_training=False)
    assert not any(p.requires_grad for p in model.parameters())


def test_lora_adapters_only_on_the_last_blocks(tmp_path):
    folder = save_tiny_lm(tmp_path / "lm")
    settings = ModelSettings(path=str(folder), lora=LoraSettings(r=2), train_last_layers=1)
    model, _ = load_reward_model(settings)
    adapters = [n for n, _ in model.named_parameters() if "lora_" in n]
    assert adapters and all(".layers.1." in n for n in adapters)


def test_rm_stage_learns_with_the_top_block_and_leaves_the_rest_bitwise(tmp_path):
    from safetensors.torch import load_file

    from alignlab.config import DataSettings
    from alignlab.runs import RunFolder
    from alignlab.train.reward import RMConfig, run_rm
    from tests.test_train_stages import _pairs, _train, _write_jsonl, save_tiny_char_model

    base = save_tiny_char_model(tmp_path / "base")
    data = _write_jsonl(tmp_path / "pairs.jsonl", _pairs(48, 0, "yes, gladly.", "no!"))
    cfg = RMConfig(model=ModelSettings(path=base, train_last_layers=1), data=DataSettings(path=data),
                   eval_fraction=0.25, out=str(tmp_path / "rm"),
                   train=_train(max_steps=20, learning_rate=3e-3))
    run = RunFolder(cfg.out, cfg, echo=False)
    run_rm(cfg, run)
    assert json.loads((run.path / "eval.json").read_text())["accuracy"] > 0.9
    before = load_file(f"{base}/model.safetensors")
    after = load_file(str(run.path / "model" / "model.safetensors"))
    lower = [k for k in before if k.startswith("model.layers.0.") or "embed_tokens" in k]
    top = [k for k in before if k.startswith("model.layers.1.")]
    assert lower and all(torch.equal(before[k], after[k]) for k in lower)
    assert any(not torch.equal(before[k], after[k]) for k in top)
