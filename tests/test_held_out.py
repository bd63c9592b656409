"""Held-out evaluation during training (SFT, reward model, preference) and ``save_best``.

Each held-out number is checked against a direct computation with the saved model: the final
evaluation runs after the last step, on the model that is then saved."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from test_train_stages import _pairs, _prompt, _train, _write_jsonl, tiny_model  # noqa: F401

from alignlab.config import DataSettings, ModelSettings
from alignlab.data.collate import pad_encoded
from alignlab.data.loading import load_records
from alignlab.data.tokenize import encode_conversation, encode_pair
from alignlab.models.loading import load_causal_lm
from alignlab.models.logprobs import sequence_logprobs
from alignlab.runs import RunFolder, read_metrics
from alignlab.train.preference import PreferenceConfig, run_preference
from alignlab.train.reward import RMConfig, run_rm
from alignlab.train.sft import SFTConfig, run_sft


def _conversations(path, pairs):
    rows = [{"messages": _prompt(q) + [{"role": "assistant", "content": a}]} for q, a in pairs]
    return _write_jsonl(path, rows)


def _eval_rows(out):
    return [r for r in read_metrics(out) if "eval/loss" in r]


@pytest.fixture
def sft_files(tmp_path):
    train = _conversations(tmp_path / "train.jsonl", [("hi", "hello there"), ("2+2?", "4"),
                                                      ("sky?", "blue"), ("cat?", "meow")])
    held = _conversations(tmp_path / "held.jsonl", [("hey", "hello there"), ("dog?", "woof")])
    return train, held


def test_sft_held_out_nll_and_perplexity_match_a_direct_computation(tiny_model, sft_files,  # noqa: F811
                                                                     tmp_path):
    train, held = sft_files
    cfg = SFTConfig(model=ModelSettings(path=tiny_model), data=DataSettings(path=train),
                    eval_data=DataSettings(path=held), out=str(tmp_path / "sft"),
                    train=_train(max_steps=6, eval_every=2))
    run_sft(cfg, RunFolder(cfg.out, cfg, echo=False))
    rows = _eval_rows(tmp_path / "sft")
    assert [r["step"] for r in rows] == [2, 4, 6]
    model, tok = load_causal_lm(ModelSettings(path=str(tmp_path / "sft" / "model")), for_training=False)
    records = load_records(DataSettings(path=held), "conversation").records
    batch = pad_encoded([encode_conversation(tok, r, 64, 32) for r in records], tok.pad_token_id)
    with torch.no_grad():
        nll = -float(sequence_logprobs(model, batch).sum())
    tokens = int(batch["loss_mask"][:, 1:].sum())
    assert rows[-1]["eval/count"] == tokens
    assert rows[-1]["eval/loss"] == pytest.approx(nll / tokens, rel=1e-4)
    assert rows[-1]["eval/perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-4)


def test_save_best_keeps_the_best_evaluation_as_the_model(tiny_model, sft_files, tmp_path):  # noqa: F811
    train, held = sft_files
    # mode max on the held-out loss keeps the WORST evaluation: the first one, as SFT lowers the loss
    cfg = SFTConfig(model=ModelSettings(path=tiny_model), data=DataSettings(path=train),
                    eval_data=DataSettings(path=held), out=str(tmp_path / "sft"),
                    train=_train(max_steps=6, eval_every=2,
                                 save_best={"metric": "eval/loss", "mode": "max"}))
    run_sft(cfg, RunFolder(cfg.out, cfg, echo=False))
    losses = [r["eval/loss"] for r in _eval_rows(tmp_path / "sft")]
    assert losses[0] == max(losses) and losses[-1] < losses[0]
    best = json.loads((tmp_path / "sft" / "best.json").read_text())
    assert best["step"] == 2 and best["value"] == pytest.approx(losses[0])
    kept = load_file(str(tmp_path / "sft" / "model" / "model.safetensors"))
    at_step2 = load_file(str(tmp_path / "sft" / "best_model" / "model.safetensors"))
    assert all(torch.equal(kept[k], at_step2[k]) for k in kept)


def test_save_best_names_an_unknown_metric(tiny_model, sft_files, tmp_path):  # noqa: F811
    train, held = sft_files
    cfg = SFTConfig(model=ModelSettings(path=tiny_model), data=DataSettings(path=train),
                    eval_data=DataSettings(path=held), out=str(tmp_path / "sft"),
                    train=_train(max_steps=2, save_best={"metric": "eval/acuracy"}))
    with pytest.raises(ValueError, match=r"eval/acuracy.*eval/loss"):
        run_sft(cfg, RunFolder(cfg.out, cfg, echo=False))


@pytest.fixture
def pref_files(tmp_path):
    train = _write_jsonl(tmp_path / "train.jsonl", _pairs(16, 1, "good answer", "bad reply"))
    held = _write_jsonl(tmp_path / "held.jsonl", _pairs(6, 2, "good answer", "bad reply"))
    return train, held


def _pref_config(tiny_model, train, held, out, loss, **train_extra):  # noqa: F811
    return PreferenceConfig(model=ModelSettings(path=tiny_model), data=DataSettings(path=train),
                            eval_data=None if held is None else DataSettings(path=held), loss=loss,
                            out=str(out), reference_cache="none",
                            train=_train(**{"max_steps": 4, "learning_rate": 3e-3, **train_extra}))


def test_dpo_held_out_implicit_reward_accuracy_matches_a_direct_computation(tiny_model,  # noqa: F811
                                                                            pref_files, tmp_path):
    train, held = pref_files
    beta = 0.1
    cfg = _pref_config(tiny_model, train, held, tmp_path / "dpo", [{"name": "dpo", "beta": beta}],
                       eval_every=2)
    run_preference(cfg, RunFolder(cfg.out, cfg, echo=False))
    rows = _eval_rows(tmp_path / "dpo")
    assert [r["step"] for r in rows] == [2, 4]
    policy, tok = load_causal_lm(ModelSettings(path=str(tmp_path / "dpo" / "model")), for_training=False)
    reference, _ = load_causal_lm(ModelSettings(path=tiny_model), for_training=False)
    pairs = [encode_pair(tok, r, 64, 32) for r in load_records(DataSettings(path=held), "pair").records]
    chosen = pad_encoded([p.chosen for p in pairs], tok.pad_token_id)
    rejected = pad_encoded([p.rejected for p in pairs], tok.pad_token_id)
    with torch.no_grad():
        r_c = beta * (sequence_logprobs(policy, chosen) - sequence_logprobs(reference, chosen))
        r_r = beta * (sequence_logprobs(policy, rejected) - sequence_logprobs(reference, rejected))
    last = rows[-1]
    assert last["eval/count"] == 6
    assert last["eval/rewards/accuracy"] == pytest.approx(float((r_c > r_r).float().mean()), abs=1e-6)
    assert last["eval/rewards/chosen"] == pytest.approx(float(r_c.mean()), abs=1e-4)
    assert last["eval/rewards/margin"] == pytest.approx(float((r_c - r_r).mean()), abs=1e-4)
    losses = -torch.nn.functional.logsigmoid(r_c - r_r)
    assert last["eval/loss"] == pytest.approx(float(losses.mean()), abs=1e-4)


def test_evaluating_does_not_change_a_stateful_objectives_training(tiny_model, pref_files,  # noqa: F811
                                                                   tmp_path):
    train, held = pref_files
    loss = [{"name": "beta_dpo", "beta": 0.1}]
    with_eval = _pref_config(tiny_model, train, held, tmp_path / "a", loss, max_steps=6, eval_every=1)
    without = _pref_config(tiny_model, train, None, tmp_path / "b", loss, max_steps=6)
    for cfg in (with_eval, without):
        run_preference(cfg, RunFolder(cfg.out, cfg, echo=False))
    train_a = [r["loss"] for r in read_metrics(tmp_path / "a") if "loss" in r]
    train_b = [r["loss"] for r in read_metrics(tmp_path / "b") if "loss" in r]
    assert len(_eval_rows(tmp_path / "a")) == 6
    assert train_a == train_b


def test_rm_evaluates_during_training_when_asked(tiny_model, tmp_path):  # noqa: F811
    data = _write_jsonl(tmp_path / "pairs.jsonl", _pairs(24, 0, "yes, gladly.", "no!"))
    cfg = RMConfig(model=ModelSettings(path=tiny_model), data=DataSettings(path=data),
                   eval_fraction=0.25, out=str(tmp_path / "rm"),
                   train=_train(max_steps=4, eval_every=2, learning_rate=3e-3))
    run_rm(cfg, RunFolder(cfg.out, cfg, echo=False))
    rows = _eval_rows(tmp_path / "rm")
    final = json.loads((tmp_path / "rm" / "eval.json").read_text())
    assert [r["step"] for r in rows if "eval/count" in r] == [2, 4]
    during = [r for r in rows if "eval/count" in r][-1]
    assert during["eval/accuracy"] == pytest.approx(final["accuracy"], abs=1e-6)
    assert during["eval/loss"] == pytest.approx(final["loss"], abs=1e-5)
