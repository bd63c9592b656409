"""Prompt sharing in the reward model (``rm`` stage ``share_prompt``): the reward read at each row's
last real token from the packed layout equals the per-row reward, in value and gradient, and a whole
``rm`` run gives the same losses and weights with sharing on and off."""

import pytest
import torch
from safetensors.torch import load_file
from test_shared_prefix import PAIR_ROWS, PAIR_STARTS, _batch
from test_train_stages import _pairs, _train, _write_jsonl, tiny_model  # noqa: F401

from alignlab.config import DataSettings, ModelSettings
from alignlab.models.shared_prefix import pack_groups
from alignlab.runs import RunFolder, read_metrics
from alignlab.train.forward import RewardModule
from alignlab.train.reward import RMConfig, run_rm


def test_last_columns_by_hand():
    ids, attn, _ = _batch(PAIR_ROWS, PAIR_STARTS)
    layout = pack_groups(ids, attn, slots=2)
    # g0: prefix 5 6 7 8 (cols 0-3), chosen tail 9 10 11 (4-6), rejected tail 30 31 (7-8)
    # g1: prefix 20 21 22 (0-2), chosen tail 23 24 (3-4), rejected tail 50..54 (5-9)
    # g2: no prefix, chosen 40..45 (0-5), rejected 60 41 42 (6-8)
    assert layout.last.tolist() == [6, 4, 5, 8, 9, 8]
    assert layout.group.tolist() == [0, 1, 2, 0, 1, 2]
    for n, row in enumerate(PAIR_ROWS):
        assert int(layout.input_ids[layout.group[n], layout.last[n]]) == row[-1]


def test_identical_rows_read_the_prefix_end():
    ids, attn, _ = _batch([[3, 4, 5], [3, 4, 5]], [1, 1])
    layout = pack_groups(ids, attn, slots=2)
    assert layout.last.tolist() == [2, 2]


def _reward_model(seed=0):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      num_labels=1, pad_token_id=0, initializer_range=0.3,
                      attn_implementation="sdpa")
    return LlamaForSequenceClassification(cfg)


@pytest.mark.parametrize("left_pad", [False, True])
def test_rewards_and_gradients_equal_per_row(left_pad):
    ids, attn, _ = _batch(PAIR_ROWS, PAIR_STARTS)
    if left_pad:  # move each row's padding to the left
        ids = torch.stack([torch.cat([r[m == 0], r[m == 1]]) for r, m in zip(ids, attn, strict=True)])
        attn = torch.stack([torch.cat([m[m == 0], m[m == 1]]) for m in attn])
    batch = {"input_ids": ids, "attention_mask": attn}
    model = _reward_model()
    per_row, shared = RewardModule(model, 1), RewardModule(model, 2)
    a, b = per_row(batch), shared(batch)
    assert torch.allclose(a, b, atol=1e-5), (a, b)
    grads = []
    for module in (per_row, shared):
        model.zero_grad()
        rewards = module(batch)
        (rewards[:3] - rewards[3:]).sigmoid().log().sum().backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    # float32 (as test_shared_prefix's gradient check): the rewards leave the head as float32 and
    # transformers keeps RoPE in float32, so even a float64 model agrees only to ~1e-7 relative.
    assert max(float(g.abs().max()) for g in grads[0].values()) > 0.1  # a real gradient
    assert max(float((grads[0][k] - grads[1][k]).abs().max()) for k in grads[0]) < 1e-5


def test_rm_stage_same_run_with_and_without_sharing(tiny_model, tmp_path):  # noqa: F811
    rows = _pairs(16, 3, "yes, gladly.", "no!") + _pairs(16, 4, "sure thing", "never.")
    data = _write_jsonl(tmp_path / "pairs.jsonl", rows)
    runs = {}
    for share in (True, False):
        cfg = RMConfig(model=ModelSettings(path=tiny_model), data=DataSettings(path=data),
                       eval_fraction=0.25, share_prompt=share, out=str(tmp_path / f"rm_{share}"),
                       train=_train(max_steps=4, learning_rate=3e-3))
        run = RunFolder(cfg.out, cfg, echo=False)
        runs[share] = load_file(str(run_rm(cfg, run) / "model.safetensors")), read_metrics(run.path)
    (w_on, m_on), (w_off, m_off) = runs[True], runs[False]
    losses_on = [r["loss"] for r in m_on if "loss" in r]
    losses_off = [r["loss"] for r in m_off if "loss" in r]
    assert len(losses_on) == 4 and losses_on == pytest.approx(losses_off, abs=1e-5)
    assert max(float((w_on[k] - w_off[k]).abs().max()) for k in w_on) < 1e-5
    assert m_on[-1]["eval/accuracy"] == m_off[-1]["eval/accuracy"]
