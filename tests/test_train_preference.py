"""The preference stage end to end on a tiny Llama: reference cache, reference-free objectives,
binary and ranked data, online reference (TDPO), sDPO, loss combinations and LoRA.

Step-1 values are derived by hand: before the first update the policy equals the reference, so every
log-ratio is 0 (and every sequential KL is 0)."""

import math

import pytest
import torch
from safetensors.torch import load_file
from test_train_stages import _pairs, _prompt, _train, _write_jsonl, tiny_model  # noqa: F401

from alignlab.config import DataSettings, LoraSettings, ModelSettings
from alignlab.runs import RunFolder, read_metrics
from alignlab.train.preference import PreferenceConfig, run_preference

LOG2 = math.log(2.0)


def _config(tiny_model, data, out, loss, **extra):  # noqa: F811
    train = extra.pop("train", {})
    base = {"max_steps": 6, "learning_rate": 3e-3, **train}
    return PreferenceConfig(model=extra.pop("model", ModelSettings(path=tiny_model)),
                            data=DataSettings(path=data), loss=loss, out=str(out),
                            train=_train(**base), **{"reference_cache": "none", **extra})


def _run(cfg):
    run = RunFolder(cfg.out, cfg, echo=False)
    model_dir = run_preference(cfg, run)
    rows = [r for r in read_metrics(run.path) if "loss" in r]
    return model_dir, rows, (run.path / "log.txt").read_text()


@pytest.fixture(scope="module")
def pair_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    return _write_jsonl(path, _pairs(16, 1, "good answer", "bad reply"))


def test_reference_cache_is_reused_and_keyed_by_data(tiny_model, pair_file, tmp_path):  # noqa: F811
    cache = str(tmp_path / "cache")
    loss = [{"name": "dpo", "beta": 0.1}]
    _, first, log1 = _run(_config(tiny_model, pair_file, tmp_path / "a", loss, reference_cache=cache,
                                  train={"max_steps": 2}))
    _, second, log2 = _run(_config(tiny_model, pair_file, tmp_path / "b", loss,
                                   reference_cache=cache, train={"max_steps": 2}))
    assert "0 cached block(s) reused" in log1 and "1 cached block(s) reused" in log2
    assert [r["loss"] for r in first] == [r["loss"] for r in second]
    assert first[0]["loss"] == pytest.approx(LOG2, abs=1e-5)
    other = _write_jsonl(tmp_path / "other.jsonl", _pairs(16, 2, "good answer", "bad reply"))
    _, _, log3 = _run(_config(tiny_model, other, tmp_path / "c", loss, reference_cache=cache,
                              train={"max_steps": 1}))
    assert "0 cached block(s) reused" in log3
    assert len(list((tmp_path / "cache").iterdir())) == 2  # one key folder per (model, data)


def test_weighted_combination_adds_terms(tiny_model, pair_file, tmp_path):  # noqa: F811
    loss = [{"name": "dpo", "beta": 0.1}, {"name": "nll", "weight": 0.5}]
    _, rows, _ = _run(_config(tiny_model, pair_file, tmp_path / "r", loss, train={"max_steps": 1}))
    row = rows[0]
    # step 1: dpo = log 2; total = log 2 + 0.5 * (mean per-token NLL of chosen)
    assert row["loss/dpo"] == pytest.approx(LOG2, abs=1e-5)
    assert row["loss"] == pytest.approx(LOG2 + 0.5 * row["loss/nll"], abs=1e-5)
    assert row["loss/nll"] > 1.0  # an untrained model is far from the data


def test_lora_dpo_uses_adapter_disabled_reference(tiny_model, pair_file, tmp_path):  # noqa: F811
    model = ModelSettings(path=tiny_model, lora=LoraSettings(r=4, alpha=8))
    _, rows, log = _run(_config(tiny_model, pair_file, tmp_path / "l", [{"name": "dpo"}],
                                model=model, train={"max_steps": 8, "learning_rate": 1e-2}))
    assert "policy with adapter disabled" in log
    assert rows[0]["loss"] == pytest.approx(LOG2, abs=1e-5)
    assert rows[-1]["rewards/margin"] > 0.1 and rows[-1]["loss"] < rows[0]["loss"]


def test_sdpo_moves_the_reference_each_stage(tiny_model, pair_file, tmp_path):  # noqa: F811
    cfg = _config(tiny_model, pair_file, tmp_path / "s", [{"name": "dpo"}], sdpo={"stages": 2},
                  train={"max_steps": 3})
    model_dir, _, log = _run(cfg)
    stage_rows = [[r for r in read_metrics(tmp_path / "s" / f"sdpo-{k}") if "loss" in r]
                  for k in (1, 2)]
    # each stage starts from its reference (stage 2's is stage 1's trained model): loss log 2
    assert [rows[0]["loss"] for rows in stage_rows] == pytest.approx([LOG2, LOG2], abs=1e-5)
    assert stage_rows[0][-1]["loss"] < LOG2  # stage 1 did move the model
    assert "sDPO stage 2/2: 8 examples from " in log and "sdpo-1/model" in log
    final = load_file(str(model_dir / "model.safetensors"))
    stage2 = load_file(str(tmp_path / "s" / "sdpo-2" / "model" / "model.safetensors"))
    assert all(torch.equal(final[k], stage2[k]) for k in final)


def test_reference_free_objective_never_runs_a_reference(tiny_model, pair_file, tmp_path,  # noqa: F811
                                                         monkeypatch):
    import alignlab.train.preference as stage

    def forbidden(*args, **kwargs):
        raise AssertionError("a reference-free objective ran a reference pass")

    monkeypatch.setattr(stage, "precompute_logprobs", forbidden)
    _, rows, log = _run(_config(tiny_model, pair_file, tmp_path / "f", [{"name": "simpo"}],
                                train={"max_steps": 8, "learning_rate": 1e-2}))
    assert "reference-free objective: no reference model is loaded" in log
    assert rows[-1]["loss"] < rows[0]["loss"]


def test_kto_on_unpaired_feedback_starts_at_half_weight(tiny_model, pair_file, tmp_path):  # noqa: F811
    loss = [{"name": "kto", "beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0}]
    _, rows, log = _run(_config(tiny_model, pair_file, tmp_path / "k", loss,
                                train={"max_steps": 8, "batch_size": 8}))
    assert "binary: 32 records" in log  # 16 pairs read as 32 unpaired completions
    # step 1: r = 0 and z0 = max(0, 0) = 0, so every item costs lambda (1 - sigma(0)) = 0.5
    assert rows[0]["loss"] == pytest.approx(0.5, abs=1e-5)
    assert rows[-1]["loss"] < 0.5


def test_tdpo_online_reference_starts_at_log2(tiny_model, pair_file, tmp_path):  # noqa: F811
    _, rows, log = _run(_config(tiny_model, pair_file, tmp_path / "t", [{"name": "tdpo"}],
                                train={"max_steps": 6, "learning_rate": 1e-2}))
    # step 1: log-ratios 0 and sequential KLs 0, so -log sigma(0) = log 2
    assert rows[0]["loss"] == pytest.approx(LOG2, abs=1e-5)
    assert rows[-1]["loss"] < LOG2


@pytest.fixture(scope="module")
def ranked_file(tmp_path_factory):
    import json
    import random
    import string

    rng = random.Random(3)
    rows = [{"prompt": _prompt("".join(rng.choices(string.ascii_lowercase, k=4))),
             "responses": ["good answer", "ok answer", "meh", "bad reply!"],
             "scores": [3.0, 2.0, 1.0, 0.0]} for _ in range(12)]
    path = tmp_path_factory.mktemp("ranked") / "ranked.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("name", ["lipo", "rrhf"])
def test_listwise_objectives_learn_the_ranking(tiny_model, ranked_file, tmp_path, name):  # noqa: F811
    _, rows, log = _run(_config(tiny_model, ranked_file, tmp_path / name, [{"name": name}],
                                train={"max_steps": 10, "learning_rate": 1e-2}))
    assert "ranked: 12 records" in log
    assert rows[-1]["loss"] < 0.5 * rows[0]["loss"], (rows[0]["loss"], rows[-1]["loss"])


def test_stateful_objective_resumes_exactly(tiny_model, pair_file, tmp_path):  # noqa: F811
    loss = [{"name": "beta_dpo", "beta": 0.1, "keep_fraction": 0.75}]
    settings = {"max_steps": 4, "save_every": 2}
    _run(_config(tiny_model, pair_file, tmp_path / "a", loss, train=settings))
    _, resumed, log = _run(_config(tiny_model, pair_file, tmp_path / "a", loss,
                                   train={**settings, "max_steps": 6}))
    _, straight, _ = _run(_config(tiny_model, pair_file, tmp_path / "b", loss,
                                  train={**settings, "max_steps": 6}))
    assert "resumed from" in log
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in straight], abs=1e-6)


@pytest.mark.parametrize("data,loss", [
    ("pair", {"name": "dpo", "beta": 0.1}),
    ("pair", {"name": "kto", "beta": 0.1}),        # binary rows with mismatched KL pairs
    ("ranked", {"name": "lipo"}),
])
def test_prompt_sharing_trains_like_separate_rows(tiny_model, pair_file, ranked_file,  # noqa: F811
                                                  tmp_path, data, loss):
    """share_prompt on (default) and off give the same losses and final weights: the packed tree
    layout changes only float summation order (1e-5, the issue's bar, after 4 float32 steps)."""
    path = pair_file if data == "pair" else ranked_file
    runs = {}
    for share in (True, False):
        cfg = _config(tiny_model, path, tmp_path / f"{share}", [loss], share_prompt=share,
                      train={"max_steps": 4})
        model_dir, rows, _ = _run(cfg)
        runs[share] = ([r["loss"] for r in rows], load_file(str(model_dir / "model.safetensors")))
    assert runs[True][0] == pytest.approx(runs[False][0], abs=1e-5)
    assert runs[True][0][-1] != pytest.approx(runs[True][0][0], abs=1e-4)  # training moved
    for name, weight in runs[False][1].items():
        assert torch.allclose(runs[True][1][name], weight, atol=1e-5, rtol=0), name
