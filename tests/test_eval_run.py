"""The eval stage end to end on tiny models and a gym world (no pretraining, no network)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from alignlab.config import DataSettings, GenerationSettings, ModelSettings
from alignlab.data.records import Message, messages_to_list
from alignlab.eval.refusal import is_refusal
from alignlab.eval.run import EvalConfig, EvalContext, evaluate_many, evaluate_policy, run_eval
from alignlab.eval.winrate import RewardJudge
from alignlab.gym import load_gym
from alignlab.gym.prompts import make_prompt_pools
from alignlab.gym.tokenizer import render_messages, train_tokenizer
from alignlab.gym.world import generate_world
from alignlab.runs import RunFolder, read_metrics

NUM_PROMPTS, NUM_SAMPLES = 8, 2


def tiny_config(vocab: int, **extra) -> LlamaConfig:
    return LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                       **extra)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    world = generate_world(seed=0)
    (root / "gym").mkdir()
    (root / "gym" / "world.json").write_text(json.dumps({"world": world.to_dict()}))
    _, prompts = make_prompt_pools(world, seed=0, n_train=4, n_eval=12)
    (root / "prompts.jsonl").write_text(
        "\n".join(json.dumps({"prompt": messages_to_list(p)}) for p in prompts))
    tok = train_tokenizer([render_messages(p, True) for p in prompts] + world.fact_sentences(),
                          vocab_size=300)
    folders = {}
    for name, seed in (("policy", 0), ("reference", 1)):
        torch.manual_seed(seed)
        LlamaForCausalLM(tiny_config(len(tok), pad_token_id=tok.pad_token_id)).save_pretrained(root / name)
        tok.save_pretrained(root / name)
        folders[name] = str(root / name)
    torch.manual_seed(2)
    rm = LlamaForSequenceClassification(tiny_config(len(tok), num_labels=1, pad_token_id=tok.pad_token_id))
    rm.save_pretrained(root / "rm")
    tok.save_pretrained(root / "rm")
    folders.update(rm=str(root / "rm"), gym=str(root / "gym"), prompts=str(root / "prompts.jsonl"),
                   root=str(root))
    return folders


def eval_config(setup, out: str, policy: str = "policy", reference: str | None = "reference"):
    return EvalConfig(policy=ModelSettings(path=setup[policy]),
                      reference=ModelSettings(path=setup[reference]) if reference else None,
                      reward_model=ModelSettings(path=setup["rm"]), gym=setup["gym"],
                      prompts=DataSettings(path=setup["prompts"]), num_prompts=NUM_PROMPTS,
                      generation=GenerationSettings(max_new_tokens=6, num_samples=NUM_SAMPLES,
                                                    batch_size=8, seed=3),
                      out=f"{setup['root']}/runs/{out}")


def run_stage(cfg):
    run = RunFolder(cfg.out, cfg, echo=False)
    return run_eval(cfg, run), run


def read_rows(run):
    return [json.loads(line) for line in (run.path / "samples.jsonl").read_text().splitlines()]


def test_run_eval_outputs_agree_with_samples(setup):
    metrics, run = run_stage(eval_config(setup, "a"))
    assert json.loads((run.path / "metrics.json").read_text()) == metrics
    rows = read_rows(run)
    assert len(rows) == NUM_PROMPTS * NUM_SAMPLES
    gym = load_gym(setup["gym"])
    for row in rows[:4]:  # gold fields are the gym's own scores
        assert gym.score(_msgs(row["prompt"]), row["response"]).reward == row["gold_reward"]
    rewards = [r["gold_reward"] for r in rows]
    assert metrics["gold_reward"]["n"] == len(rows)
    assert metrics["gold_reward"]["mean"] == pytest.approx(sum(rewards) / len(rows))
    harmful = [r for r in rows if r["harmful_prompt"]]
    assert metrics["harmless_rate"]["n"] == len(harmful)
    wins = [1.0 if r["rm_score"] > r["reference_rm_score"] else
            0.5 if r["rm_score"] == r["reference_rm_score"] else 0.0 for r in rows]
    assert metrics["win_rate"]["mean"] == pytest.approx(sum(wins) / len(wins))
    assert metrics["kl"]["mean"] == pytest.approx(sum(r["kl"] for r in rows) / len(rows))
    assert metrics["kl"]["mean"] != 0.0  # two different random models
    assert metrics["length_tokens"]["mean"] == pytest.approx(
        sum(r["num_tokens"] for r in rows) / len(rows))
    logged = read_metrics(run.path)[-1]
    assert logged["eval/gold_reward"] == pytest.approx(metrics["gold_reward"]["mean"])
    assert logged["eval/kl_exact_sampling"] is True


def _msgs(items):
    return tuple(Message(m["role"], m["content"]) for m in items)


def test_reference_samples_are_cached_across_stages(setup):
    _, run_a = run_stage(eval_config(setup, "cache_a"))
    cache_files = list((run_a.path.parent / ".eval_cache").glob("*.json"))
    assert len(cache_files) == 1
    # a second stage with another policy (here: the reference itself) reuses the reference samples
    metrics, run_b = run_stage(eval_config(setup, "cache_b", policy="reference"))
    assert "reusing reference samples" in (run_b.path / "log.txt").read_text()
    refs_a = [r["reference_response"] for r in read_rows(run_a)]
    refs_b = [r["reference_response"] for r in read_rows(run_b)]
    assert refs_a == refs_b
    # policy == reference: every per-sample KL term is exactly zero
    assert metrics["kl"] == {"mean": 0.0, "se": 0.0, "n": NUM_PROMPTS * NUM_SAMPLES}


def test_evaluate_policy_shares_reference_between_policies(setup):
    from alignlab.models.loading import load_causal_lm, load_reward_model

    cfg = eval_config(setup, "unused")
    policy, tok = load_causal_lm(cfg.policy, for_training=False)
    reference, ref_tok = load_causal_lm(cfg.reference, for_training=False)
    rm, rm_tok = load_reward_model(cfg.reward_model, for_training=False)
    from alignlab.data.loading import load_prompts

    ctx = EvalContext(prompts=load_prompts(cfg.prompts)[:3], settings=cfg.generation,
                      gym=load_gym(setup["gym"]), judge=RewardJudge(rm, rm_tok),
                      reference=reference, reference_tokenizer=ref_tok)
    first = evaluate_policy(policy, tok, ctx)
    shared = ctx.reference_samples
    second = evaluate_many({"ref": (reference, ref_tok)}, ctx)["ref"]
    assert ctx.reference_samples is shared
    assert [r["reference_response"] for r in first.rows] == [r["reference_response"] for r in second.rows]
    assert second.metrics["kl"].mean == 0.0
    assert set(first.metrics) >= {"gold_reward", "harmless_rate", "helpful_rate", "evasive_rate",
                                  "off_grammar_rate", "proxy_reward", "win_rate", "gold_win_rate",
                                  "kl", "length_tokens", "length_words"}
    assert not math.isnan(first.metrics["proxy_reward"].se)


def test_run_eval_without_reference_or_gym(setup):
    cfg = eval_config(setup, "plain", reference=None).model_copy(update={"gym": None})
    metrics, run = run_stage(cfg)
    assert "kl" not in metrics and "win_rate" not in metrics and "gold_reward" not in metrics
    assert metrics["proxy_reward"]["n"] == NUM_PROMPTS * NUM_SAMPLES
    flags = [is_refusal(r["response"]) for r in read_rows(run)]  # real text: the phrase detector
    assert metrics["refusal_rate"]["mean"] == pytest.approx(sum(flags) / len(flags))
    assert "evasive_rate" not in metrics


def test_real_text_eval_reports_both_sides(setup):
    metrics, run = run_stage(eval_config(setup, "plain_ref").model_copy(update={"gym": None}))
    rows = read_rows(run)
    ref_scores = [r["reference_rm_score"] for r in rows]
    assert metrics["reference_proxy_reward"]["mean"] == pytest.approx(sum(ref_scores) / len(rows))
    flags = [is_refusal(r["reference_response"]) for r in rows]
    assert metrics["reference_refusal_rate"]["mean"] == pytest.approx(sum(flags) / len(rows))
    assert {"win_rate", "kl", "refusal_rate"} <= metrics.keys()


def test_non_gym_prompts_are_a_clear_error(setup, tmp_path):
    bad = tmp_path / "p.jsonl"
    bad.write_text(json.dumps({"prompt": [{"role": "user", "content": "Write a poem."}]}) + "\n")
    cfg = eval_config(setup, "bad", reference=None).model_copy(
        update={"prompts": DataSettings(path=str(bad))})
    with pytest.raises(ValueError, match="prompt 0 is not a gym prompt"):
        run_stage(cfg)


def test_completion_ids_append_eos_only_when_generation_stopped_there():
    from alignlab.eval.run import completion_ids
    from alignlab.generation.base import Sample

    assert completion_ids(Sample("a b", [5, 6], "eos"), eos_id=2) == [5, 6, 2]
    assert completion_ids(Sample("a b", [5, 6], "length"), eos_id=2) == [5, 6]
    assert completion_ids(Sample("a", [5], "stop"), eos_id=2) == [5]


def test_different_tokenizers_are_refused_for_kl(setup):
    from transformers import AutoTokenizer

    from alignlab.eval.run import check_same_tokenizer
    from alignlab.gym.tokenizer import train_tokenizer

    tok = AutoTokenizer.from_pretrained(setup["policy"])
    check_same_tokenizer(tok, AutoTokenizer.from_pretrained(setup["reference"]))
    other = train_tokenizer(["completely different text corpus"], vocab_size=280)
    with pytest.raises(ValueError, match="tokenizers differ"):
        check_same_tokenizer(tok, other)
