"""Sharding helpers on one CPU process: the unsharded (no-op) branches, the plain copy used to save a
gathered model, and the run settings the loop derives for FSDP2 / DeepSpeed. The sharded branches
run on two processes in test_fsdp.py (FSDP2) and test_deepspeed.py (ZeRO, GPU only)."""

from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from dist_worker import make_items, pad_items, settings, sft_step, tiny_lm
from safetensors.torch import load_file
from shard_worker import LORA, greedy, make_model
from torch.distributed.fsdp import FSDPModule
from transformers import LlamaConfig, LlamaForCausalLM

from alignlab.models.loading import apply_lora, save_model
from alignlab.models.sharding import (
    _unsharded_class,
    gathered_for_generation,
    gathered_state_dict,
    save_gathered,
    sharding_kind,
    unsharded_copy,
)
from alignlab.runs import RunFolder
from alignlab.train.forward import TokenLogprobModule
from alignlab.train.held_out import _batch_plan
from alignlab.train.loop import train_loop
from alignlab.train.sharding import (
    _settle_deepspeed,
    _settle_fsdp,
    enable_cpu_fsdp,
    lockstep_batches,
    wrap_class_names,
)


def _trained(mode: str) -> torch.nn.Module:
    """The shard worker's model after one AdamW step, so LoRA B (zero at init) is non-zero."""
    model = make_model(mode)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss, n, _ = sft_step(TokenLogprobModule(model), pad_items(make_items(4)))
    (loss / n).backward()
    opt.step()
    return model.eval()


def test_generation_gather_is_a_noop_for_an_unsharded_model():
    model = _trained("full")
    acc = Accelerator(cpu=True)
    prepared = acc.prepare(TokenLogprobModule(model))
    before = {name: p for name, p in model.named_parameters()}
    expected = greedy(model, 1)
    assert sharding_kind(model) is None
    with gathered_for_generation(acc, prepared.model) as whole:
        assert whole is model
        assert greedy(whole, 1) == expected
    with gathered_for_generation(None, model) as whole:  # no accelerator needed either
        assert whole is model
    assert all(p is before[name] for name, p in model.named_parameters())


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_unsharded_copy_rebuilds_the_model_from_its_state(mode, tmp_path):
    """The copy save_final saves under FSDP2/ZeRO-3 (built from config on meta, filled by assignment)
    equals the live model: same weights, same generation, same saved folder (LoRA merged)."""
    model = _trained(mode)
    state = gathered_state_dict(model)
    copy = unsharded_copy(model, state)
    assert type(copy) is type(model)
    assert copy.state_dict().keys() == state.keys()
    assert all(torch.equal(copy.state_dict()[k], v) for k, v in state.items())
    assert not any(b.is_meta for b in copy.buffers())  # rotary frequencies copied over
    assert greedy(copy, 1) == greedy(model, 1)
    save_model(model, None, tmp_path / "live")
    save_gathered(copy, None, tmp_path / "copy")
    live = load_file(str(tmp_path / "live" / "model.safetensors"))
    saved = load_file(str(tmp_path / "copy" / "model.safetensors"))
    assert live.keys() == saved.keys() and not any("lora" in k for k in saved)
    assert all(torch.equal(live[k], saved[k]) for k in live)
    if mode == "lora":  # the merge really added B·A
        base = load_file(str(tmp_path / "live" / "model.safetensors"))
        plain = dict(tiny_lm().named_parameters())
        assert not torch.equal(base["model.layers.0.self_attn.q_proj.weight"],
                               plain["model.layers.0.self_attn.q_proj.weight"])


def test_unsharded_copy_keeps_tied_embeddings_tied():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    copy = unsharded_copy(model, gathered_state_dict(model))
    assert copy.lm_head.weight is copy.model.embed_tokens.weight
    assert torch.equal(copy.lm_head.weight, model.lm_head.weight)


def test_unsharded_class_undoes_the_fsdp_class_swap():
    swapped = type("FSDPLlamaForCausalLM", (FSDPModule, LlamaForCausalLM), {})
    assert _unsharded_class(swapped) is LlamaForCausalLM
    assert _unsharded_class(LlamaForCausalLM) is LlamaForCausalLM


def _fake_acc(rank: int, world: int, kind: DistributedType) -> SimpleNamespace:
    return SimpleNamespace(process_index=rank, num_processes=world, distributed_type=kind)


def test_held_out_batches_run_in_lockstep_only_when_sharded():
    """9 items over 2 ranks in batches of 4: rank 0 holds 5 (2 batches), rank 1 holds 4 (1 batch);
    sharded, rank 1 runs one more, uncounted, batch."""
    assert lockstep_batches(9, 2, 4) == 2 and lockstep_batches(8, 2, 4) == 1
    assert lockstep_batches(0, 2, 4) == 0 and lockstep_batches(1, 2, 4) == 1
    ddp = [_batch_plan(_fake_acc(r, 2, DistributedType.MULTI_GPU), 9, 4) for r in (0, 1)]
    assert ddp == [[([0, 2, 4, 6], True), ([8], True)], [([1, 3, 5, 7], True)]]
    fsdp = [_batch_plan(_fake_acc(r, 2, DistributedType.FSDP), 9, 4) for r in (0, 1)]
    assert fsdp[0] == ddp[0]
    assert fsdp[1] == [([1, 3, 5, 7], True), ([1, 3, 5, 7], False)]
    one_item = _batch_plan(_fake_acc(1, 2, DistributedType.DEEPSPEED), 1, 4)
    assert one_item == [([0], False)]  # a rank with no item still runs one forward


def test_fsdp_wrap_classes_come_from_the_inner_model():
    assert wrap_class_names(TokenLogprobModule(tiny_lm())) == ["LlamaDecoderLayer"]
    assert wrap_class_names(TokenLogprobModule(apply_lora(tiny_lm(), LORA, "CAUSAL_LM"))) == [
        "LlamaDecoderLayer"]
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    plugin = SimpleNamespace(fsdp_version=2, auto_wrap_policy=transformer_auto_wrap_policy,
                             transformer_cls_names_to_wrap=None)
    _settle_fsdp(plugin, TokenLogprobModule(tiny_lm()))
    assert plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]
    plugin.transformer_cls_names_to_wrap = ["MyLayer"]  # an explicit choice is kept
    _settle_fsdp(plugin, TokenLogprobModule(tiny_lm()))
    assert plugin.transformer_cls_names_to_wrap == ["MyLayer"]
    with pytest.raises(ValueError, match="fsdp_version: 2"):
        _settle_fsdp(SimpleNamespace(fsdp_version=1), tiny_lm())


def test_deepspeed_settings_are_filled_from_the_run():
    cfg = {"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
           "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
           "zero_optimization": {"stage": 3}}
    _settle_deepspeed(cfg, settings(batch_size=4, grad_accum=2), world=8)
    assert cfg["train_micro_batch_size_per_gpu"] == 4 and cfg["train_batch_size"] == 32
    assert cfg["gradient_accumulation_steps"] == 1 and cfg["gradient_clipping"] == 1.0
    explicit = {"gradient_clipping": 0.5}
    _settle_deepspeed(explicit, settings(batch_size=2, grad_accum=1, max_grad_norm=None), world=2)
    assert explicit["gradient_clipping"] == 0.5 and explicit["train_batch_size"] == 4
    no_clip = {}
    _settle_deepspeed(no_clip, settings(batch_size=2, grad_accum=1, max_grad_norm=None), world=2)
    assert no_clip["gradient_clipping"] == 0.0
    with pytest.raises(ValueError, match="train.grad_accum"):
        _settle_deepspeed({"gradient_accumulation_steps": 4}, settings(2, 1), world=2)


def test_cpu_fsdp_switch_is_a_noop_unless_requested_on_a_gloo_group(monkeypatch):
    acc = _fake_acc(0, 2, DistributedType.MULTI_CPU)
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert enable_cpu_fsdp(acc) is False
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    for kind in (DistributedType.NO, DistributedType.MULTI_GPU, DistributedType.FSDP):
        other = _fake_acc(0, 2, kind)
        assert enable_cpu_fsdp(other) is False and other.distributed_type == kind


@pytest.mark.parametrize("kind", [DistributedType.FSDP, DistributedType.DEEPSPEED])
def test_gradient_penalties_are_refused_under_sharding(kind, tmp_path):
    acc = _fake_acc(0, 2, kind)
    with pytest.raises(ValueError, match="gradient penalties"):
        train_loop(TokenLogprobModule(tiny_lm()), make_items(), pad_items, sft_step, len,
                   settings(2, 1), RunFolder(tmp_path, echo=False), accelerator=acc,
                   grad_penalty=lambda model: {})
