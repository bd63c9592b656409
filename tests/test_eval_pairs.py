"""`alignlab eval` on preference pairs: metric arithmetic by hand, and the stage end to end."""

import json

import pytest
import torch
from test_train_stages import _pairs, _write_jsonl, tiny_model  # noqa: F401

from alignlab.config import ConfigError, DataSettings, ModelSettings
from alignlab.data.collate import pad_encoded
from alignlab.data.loading import load_records
from alignlab.data.tokenize import encode_completion
from alignlab.eval.pairs import pair_metrics
from alignlab.eval.run import run_eval
from alignlab.models.loading import load_causal_lm
from alignlab.models.logprobs import sequence_logprobs
from alignlab.runs import RunFolder
from alignlab.stages import load_stage_config


def test_pair_metrics_by_hand():
    # margins 1, 0, -1 (labels 1) and a label tie that is left out:
    # correctness 1, 1/2, 0 -> accuracy 0.5, se = sd(1, .5, 0)/sqrt(3) = 0.5/sqrt(3)
    # both orientations: p = s(1), s(0), s(-1) with y = 1 and their complements with y = 0;
    # bins 2, 5, 7 hold two points each with observed 0.5 -> ECE = (1/3)(0.231059 + 0 + 0.231059)
    m = pair_metrics([2.0, 0.0, 1.0, 3.0], [1.0, 0.0, 2.0, 3.0], [1.0, 1.0, 1.0, 0.5],
                     [3, 1, 2, 5], [1, 1, 4, 0])
    assert m["accuracy"]["mean"] == pytest.approx(0.5)
    assert m["accuracy"]["se"] == pytest.approx(0.288675, abs=1e-6)
    assert (m["pairs"], m["label_ties"], m["score_ties"]) == (3, 1, 1)
    assert m["ece"] == pytest.approx(0.154039, abs=1e-6)
    assert [b["bin"] for b in m["reliability"]] == [2, 5, 7]
    assert all(b["observed"] == pytest.approx(0.5) for b in m["reliability"])
    split = m["accuracy_by_chosen_length"]
    assert (split["longer"]["mean"], split["shorter"]["mean"], split["equal"]["mean"]) == (1.0, 0.0, 0.5)


def test_soft_labels_pick_the_side():
    m = pair_metrics([0.0, 1.0], [1.0, 0.0], [0.2, 0.9], [1, 1], [1, 1])
    assert m["accuracy"]["mean"] == 1.0  # label 0.2: rejected preferred, and ranked so


def test_policy_as_implicit_reward_model_end_to_end(tiny_model, tmp_path):  # noqa: F811
    data = _write_jsonl(tmp_path / "pairs.jsonl", _pairs(6, 1, "good answer", "bad reply"))
    cfg = load_stage_config("eval", None, [
        f"policy.path={tiny_model}", f"pairs.data.path={data}", "pairs.beta=0.5",
        "pairs.max_length=64", "pairs.max_prompt_length=32", f"out={tmp_path / 'ev'}"])
    run_eval(cfg, RunFolder(cfg.out, cfg, echo=False))
    out = json.loads((tmp_path / "ev" / "pairs.json").read_text())
    model, tok = load_causal_lm(ModelSettings(path=tiny_model), for_training=False)
    pairs = load_records(DataSettings(path=data), "pair").records

    def logp(texts):
        batch = pad_encoded([encode_completion(tok, p.prompt, t, 64, 32) for p, t in zip(pairs, texts)],
                            tok.pad_token_id)
        with torch.no_grad():
            return sequence_logprobs(model, batch)

    margins = 0.5 * (logp([p.chosen for p in pairs]) - logp([p.rejected for p in pairs]))
    scores = [json.loads(line) for line in (tmp_path / "ev" / "pair_scores.jsonl").read_text().splitlines()]
    assert [s["chosen_score"] - s["rejected_score"] for s in scores] == pytest.approx(margins.tolist(),
                                                                                       abs=1e-4)
    assert out["accuracy"]["mean"] == pytest.approx(float((margins > 0).float().mean()))
    assert "no reference" in out["scorer"]
    assert (tmp_path / "ev" / "reliability.png").stat().st_size > 1000


def test_eval_config_needs_prompts_or_pairs(tmp_path):
    with pytest.raises(ConfigError, match="'prompts'.*or 'pairs'"):
        load_stage_config("eval", None, [f"out={tmp_path}"])
    with pytest.raises(ConfigError, match="needs 'reward_model'"):
        load_stage_config("eval", None, ["pairs.data.path=x.jsonl", "pairs.scorer=reward_model",
                                         f"out={tmp_path}"])
