"""Prompt sharing in the online stage (``rl.share_prompt``): the same run, fewer positions.

A rollout's k samples of a prompt start with the same prompt ids; with sharing on, every forward
over the rollout (the policy's and the reference's no-grad log-probs, PPO's critic values, the
update's policy and critic forwards, on whole rollouts and on shuffled minibatches cut into
micro-batches) packs each prompt's rows into one row holding the prompt once
(``models.shared_prefix``). The numbers are those of the per-row forwards up to float32 rounding
(the packed rows run the same tokens at the same positions under a tree mask). Measured, and
asserted: the first step's gradients within 6e-7 of each tensor's largest entry (the same
weights: rounding only; 1e-6); every logged metric within an eighth of rel 1e-5 / abs 1e-6 (the
KL, a sum of differences of nearly equal log-probs, comes closest); the final weights at lr 3e-3
within 1.5e-6 (rloo, 3 optimiser steps) and 3.2e-6 (ppo, 12 steps), asserted 1e-5: after a step
Adam turns rounding of near-zero gradient entries into weight differences of a small fraction of
lr. The samples are the same (``reward/mean`` equal exactly).
"""

from pathlib import Path

import pytest
from safetensors.torch import load_file
from test_rl_trainer import _assert_same_gradients, _config, _Probe, _run, prompt_file, reward_fn  # noqa: F401
from test_train_stages import tiny_model  # noqa: F401

LR = 3e-3
COMPARED = ("kl", "policy/loss", "policy/grad_norm", "policy/ratio_mean", "policy/approx_kl",
            "advantage_abs_mean", "value/loss", "value/grad_norm", "value/explained_variance")


class _Positions:
    """Input positions (rows × width, padding included) of every decoder forward, split into
    packed forwards (a 4-D tree mask) and per-row ones."""

    def __init__(self, monkeypatch):
        from alignlab.models import logprobs, shared_prefix

        self.packed = self.per_row = 0
        for module in (logprobs, shared_prefix):
            real = module.decoder_body
            monkeypatch.setattr(module, "decoder_body",
                                lambda model, real=real: self._counting(real(model)))

    def _counting(self, body):
        def run(**kwargs):
            mask, positions = kwargs["attention_mask"], kwargs["input_ids"].numel()
            if mask is not None and mask.dim() == 4:
                self.packed += positions
            else:
                self.per_row += positions
            return body(**kwargs)
        return run


@pytest.mark.parametrize("algorithm, rl, most", [
    # one update per rollout: the update's forward gives the old log-probs; KL to a reference
    ("rloo", {"kl_coef": 0.05}, 0.6),
    # no-grad old log-probs and critic values, then 2 epochs of 2 shuffled minibatches in
    # micro-batches of 3 sequences (groups cut apart: a prompt's rows spread over the chunks)
    pytest.param("ppo", {"kl_coef": 0.05, "ppo_epochs": 2, "minibatch_size": 8,
                         "micro_batch_size": 3}, 0.8, marks=pytest.mark.slow),
], ids=["rloo-one-step", "ppo-minibatches"])
def test_shared_prompt_run_equals_per_row_run(tiny_model, prompt_file, reward_fn,  # noqa: F811
                                              tmp_path, monkeypatch, algorithm, rl, most):
    probe = _Probe(monkeypatch)
    positions = _Positions(monkeypatch)

    def run(name: str, share: bool):
        probe.reset()
        positions.packed = positions.per_row = 0
        cfg = _config(tiny_model, prompt_file, reward_fn, tmp_path / name, algorithm,
                      train={"max_steps": 3, "learning_rate": LR},
                      rl={**rl, "share_prompt": share})
        model_dir, rows = _run(cfg)
        weights = load_file(str(model_dir / "model.safetensors"))
        return rows, probe.grads, (positions.packed, positions.per_row), weights

    rows, grads, (packed, unpacked), weights = run("shared", True)
    rows_b, grads_b, (packed_b, unpacked_b), weights_b = run("per_row", False)
    assert packed_b == 0 and unpacked_b > 0
    # 4 samples of a prompt of ~20 tokens, responses of <= 7 (measured: 0.57 of the positions
    # for rloo, 0.77 for ppo, whose micro-batches of 3 shuffled rows share less; a micro-batch
    # whose rows all come from different prompts has nothing to share and runs per row)
    assert packed > 0 and packed + unpacked < most * unpacked_b
    assert unpacked == 0 or "micro_batch_size" in rl
    assert len(rows) == len(rows_b) == 3
    for a, b in zip(rows, rows_b):
        assert a["reward/mean"] == b["reward/mean"]  # the same samples
        for key in (k for k in COMPARED if k in a):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    assert rows[-1]["kl"] != 0.0 and rows[0]["policy/grad_norm"] > 0
    _assert_same_gradients(grads[:1], grads_b[:1], rel=1e-6)
    assert max(float((weights[k] - weights_b[k]).abs().max()) for k in weights) < 1e-5
    start = load_file(str(Path(tiny_model) / "model.safetensors"))
    assert max(float((weights[k] - start[k]).abs().max()) for k in weights) > 1e-3  # it trained
