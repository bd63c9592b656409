"""Nash-MD (Munos et al. 2023) and XPO (Xie et al. 2024): the geometric mixture, rewards, pairs and
losses by hand, limiting mixture coefficients, and first steps of the online stage."""

import math
import sys

import pytest
import torch
from test_models_tiny import save_tiny_lm
from test_rl_sppo import _experience as sppo_experience
from test_rl_trainer import _config, _run, prompt_file, reward_fn  # noqa: F401
from test_train_stages import tiny_model  # noqa: F401

from alignlab.config import ConfigError, GenerationSettings, ModelSettings, build_config
from alignlab.data.records import Message
from alignlab.generation.hf import HFGenerator
from alignlab.generation.mixture import MixtureGenerator, mixture_logprobs, top_p_filter
from alignlab.losses.registry import get_loss
from alignlab.models.loading import load_causal_lm
from alignlab.rl.algorithms import (
    LossContext,
    group_pairs,
    online_dpo_loss,
    prepare_nash_md,
    prepare_xpo,
    sppo_win_rates,
    win_rates_from_pairs,
    xpo_loss,
)
from alignlab.rl.objectives import ppo_policy_loss
from alignlab.rl.settings import RLSettings
from alignlab.rl.trainer import OnlineConfig


def test_geometric_mixture_by_hand():
    # pi = (1/3, 2/3), mu = (2/3, 1/3). beta 1/2: both tokens get sqrt(2/9) -> (1/2, 1/2).
    # beta 1/4: ratio token0/token1 = (1/2)^(3/4) * 2^(1/4) = 2^(-1/2) -> p0 = 1 / (1 + sqrt 2)
    pi, mu = torch.tensor([[0.0, math.log(2)]]), torch.tensor([[math.log(2), 0.0]])
    assert mixture_logprobs(pi, mu, 0.5).exp().tolist()[0] == pytest.approx([0.5, 0.5])
    p0 = 1 / (1 + math.sqrt(2))
    assert mixture_logprobs(pi, mu, 0.25).exp().tolist()[0] == pytest.approx([p0, 1 - p0])
    assert mixture_logprobs(pi, mu, 0.0).exp().tolist()[0] == pytest.approx([1 / 3, 2 / 3])
    assert mixture_logprobs(pi, mu, 1.0).exp().tolist()[0] == pytest.approx([2 / 3, 1 / 3])
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        mixture_logprobs(pi, mu, 1.5)


def test_top_p_keeps_the_smallest_nucleus():
    logprobs = torch.tensor([[0.5, 0.3, 0.2]]).log()
    assert torch.isfinite(top_p_filter(logprobs, 0.6)).tolist()[0] == [True, True, False]
    assert torch.isfinite(top_p_filter(logprobs, 0.45)).tolist()[0] == [True, False, False]
    assert torch.isfinite(top_p_filter(logprobs, 1.0)).all()


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mix")
    save_tiny_lm(folder / "a", seed=1)
    save_tiny_lm(folder / "b", seed=2)
    return [load_causal_lm(ModelSettings(path=str(folder / name)), for_training=False)
            for name in ("a", "b")]


PROMPTS = [(Message("user", "hello there"),), (Message("user", "why is the sky blue?"),)]


@pytest.mark.parametrize("coef, source", [(0.0, 0), (1.0, 1)])
def test_mixture_at_its_limits_decodes_like_each_model(two_models, coef, source):
    """Greedy decoding of the mixture at coefficient 0 (1) is the policy's (reference's)."""
    (policy, tokenizer), (reference, _) = two_models
    settings = GenerationSettings(max_new_tokens=8, temperature=0.0, num_samples=2)
    mixed = MixtureGenerator(policy, tokenizer, reference, coef).generate(PROMPTS, settings)
    alone = HFGenerator(two_models[source][0], tokenizer).generate(PROMPTS, settings)
    assert [[s.token_ids for s in g] for g in mixed] == [[s.token_ids for s in g] for g in alone]


def test_mixture_of_two_different_models_is_neither(two_models):
    (policy, tokenizer), (reference, _) = two_models
    settings = GenerationSettings(max_new_tokens=8, temperature=0.0)
    ids = {coef: [g[0].token_ids for g in MixtureGenerator(policy, tokenizer, reference, coef)
                  .generate(PROMPTS, settings)] for coef in (0.0, 0.5, 1.0)}
    assert ids[0.0] != ids[1.0]
    assert ids[0.5] not in (ids[0.0], ids[1.0])


def _experience(scores, old, ref, k, opponent):
    return sppo_experience(old, ref, scores, k, opponent)


def test_nash_md_reward_and_first_loss_by_hand():
    # one prompt: policy sample (row 0) scores 1, mixture sample (row 1) scores 0;
    # the policy sample's sequence KL is 2 * 0.1 = 0.2, beta = 0.1:
    # A = sigma(1) - 0.5 - 0.1 * 0.2 = 0.731059 - 0.52 = 0.211059 on each of its 2 tokens
    exp = _experience([1.0, 0.0], [[-1.0, -1.0], [-2.0, -2.0]], [[-1.1, -1.1], [-2.0, -2.0]], 2,
                      [0.0, 1.0])
    metrics = prepare_nash_md(exp, RLSettings(kl_coef=0.1), beta=0.1)
    advantage = 1 / (1 + math.exp(-1)) - 0.52
    assert exp.advantages.flatten().tolist() == pytest.approx([advantage, advantage, 0.0, 0.0])
    assert exp.extra["units"].tolist() == [0]
    assert metrics["preference_vs_mixture"] == pytest.approx(1 / (1 + math.exp(-1)))
    # on-policy first step: ratio 1, so the loss is -A per token summed over 2 tokens / L = 4
    own = exp.select(exp.extra["units"])
    loss, _ = ppo_policy_loss(own.old_logp, own.old_logp, own.advantages, own.mask, 0.2, None,
                              "seq_mean_token_sum_norm", 4.0)
    assert float(loss) == pytest.approx(-advantage * 2 / 4)


def test_xpo_pairs_follow_the_scores_and_drop_ties():
    # two prompts, one policy + one reference sample each: prompt 0 the reference wins,
    # prompt 1 ties (dropped)
    exp = _experience([0.2, 0.7, 0.5, 0.5], [[-1.0]] * 4, [[-1.0]] * 4, 2, [0.0, 1.0, 0.0, 1.0])
    metrics = prepare_xpo(exp, RLSettings(), beta=0.0)
    assert exp.extra["units"].tolist() == [1, 0]
    assert metrics == {"pairs": 1, "tied_pairs": 1, "policy_beats_reference": 0.0}


def _ctx(alpha):
    spec = get_loss("dpo")
    objective = spec.build(spec.parse({"beta": 0.1}))
    return LossContext(RLSettings(xpo_alpha=alpha), 0.0, "token_mean", 4.0, objective)


def test_xpo_loss_is_dpo_plus_alpha_times_the_reference_samples_logp():
    # chosen = the policy's sample (row 0): log-ratio (-1 - -1.5) = 0.5; rejected = the
    # reference's sample (row 1): log-ratio (-3 - -2.5) = -0.5. DPO beta 0.1:
    # -log sigma(0.1 * (0.5 + 0.5)) = log(1 + e^-0.1) = 0.644397; exploration: alpha * log pi(y~)
    # = 0.5 * -3 = -1.5 -> 0.644397 - 1.5
    exp = _experience([1.0, 0.0], [[-1.0], [-3.0]], [[-1.5], [-2.5]], 2, [0.0, 1.0])
    prepare_xpo(exp, RLSettings(), beta=0.0)
    pair = exp.select(exp.extra["units"])
    dpo = math.log(1 + math.exp(-0.1))
    loss, metrics = xpo_loss(pair.old_logp, pair, _ctx(0.5))
    assert float(loss) == pytest.approx(dpo - 1.5)
    assert float(metrics["reference_sample_logp"]) == pytest.approx(-3.0)
    # alpha = 0: exactly online DPO on the same pair
    assert float(xpo_loss(pair.old_logp, pair, _ctx(0.0))[0]) == pytest.approx(
        float(online_dpo_loss(pair.old_logp, pair, _ctx(0.0))[0]))
    # the exploration term adds alpha / pairs to the gradient of each of the reference sample's
    # token log-probs (minimising pushes them down) and nothing to the policy sample's
    grads = []
    for alpha in (0.5, 0.0):
        logp = pair.old_logp.clone().requires_grad_(True)
        xpo_loss(logp, pair, _ctx(alpha))[0].backward()
        grads.append(logp.grad)
    extra = (grads[0] - grads[1]).flatten().tolist()
    assert extra == pytest.approx([0.0, 0.5] if pair.opponent.tolist() == [0.0, 1.0] else [0.5, 0.0])


@pytest.mark.parametrize("change, message", [
    ({"rl": {"mixture_coef": 1.5}}, "mixture_coef"),
    ({"rl": {"mixture_coef": []}}, "mixture_coef"),
    ({"rl": {"xpo_alpha": -1}}, "xpo_alpha"),
    ({"loss": {"name": "kto"}}, "xpo trains on sampled pairs"),
    ({"backend": "vllm"}, "hf backend"),
])
def test_bad_parameters_fail_when_the_config_is_read(tiny_model, prompt_file, reward_fn,  # noqa: F811
                                                     tmp_path, change, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        _config(tiny_model, prompt_file, reward_fn, tmp_path / "x", "xpo", **change)


def test_mixture_schedule_holds_its_last_value():
    rl = RLSettings(mixture_coef=[0.2, 0.4])
    assert [rl.mixture_coef_at(i) for i in range(4)] == [0.2, 0.4, 0.4, 0.4]


@pytest.fixture(scope="module")
def length_reward(tmp_path_factory):
    """A reward that rarely ties on a random tiny model's samples: the text's length / 10."""
    folder = tmp_path_factory.mktemp("lengthfn")
    (folder / "rl_length_reward.py").write_text("def length(prompt, text):\n"
                                                 "    return len(text) / 10\n")
    sys.path.insert(0, str(folder))
    yield "rl_length_reward:length"
    sys.path.remove(str(folder))


def test_first_nash_md_iteration_pairs_every_policy_sample(tiny_model, prompt_file,  # noqa: F811
                                                           length_reward, tmp_path):
    """At the first iteration the policy is its reference: the logged KL (of the policy's own
    samples) is 0 and every probability ratio is 1, and the preference against the mixture
    samples is a probability."""
    cfg = _config(tiny_model, prompt_file, length_reward, tmp_path / "n", "nash_md",
                  generation={"num_samples": 2}, train={"max_steps": 1},
                  rl={"mixture_coef": 0.5, "kl_coef": 0.0})
    _, rows = _run(cfg)
    row = rows[0]
    assert 0.0 <= row["preference_vs_mixture"] <= 1.0
    assert row["kl"] == pytest.approx(0.0, abs=1e-5)
    assert row["policy/ratio_mean"] == pytest.approx(1.0, abs=1e-5)


def test_first_xpo_iteration_is_log2_per_pair_at_alpha_zero(tiny_model, prompt_file,  # noqa: F811
                                                            length_reward, tmp_path):
    """At step one the policy is the reference: every DPO margin is 0, so the loss is log 2."""
    cfg = _config(tiny_model, prompt_file, length_reward, tmp_path / "x", "xpo",
                  generation={"num_samples": 2}, train={"max_steps": 1}, rl={"xpo_alpha": 0.0})
    _, rows = _run(cfg)
    assert rows[0]["pairs"] >= 1
    assert rows[0]["policy/loss"] == pytest.approx(math.log(2), abs=1e-4)


# ----------------------------------------------------------------------------- a pair judge's P


def test_win_rates_from_a_judges_pair_probabilities_by_hand():
    # k = 3, P(0>1) = 0.9, P(0>2) = 0.6, P(1>2) = 0.3 (triu order), self-comparisons 1/2:
    # row 0: (0.5 + 0.9 + 0.6) / 3 = 2/3; row 1: (0.1 + 0.5 + 0.3) / 3 = 0.3;
    # row 2: (0.4 + 0.7 + 0.5) / 3 = 0.5333
    win = win_rates_from_pairs(torch.tensor([0.9, 0.6, 0.3]), 3)
    assert win.tolist() == pytest.approx([2 / 3, 0.3, 1.6 / 3])
    # Bradley-Terry probabilities of scores give back the scores' win rates
    scores = torch.tensor([0.0, 1.0, -0.5, 2.0])
    exp = _experience(scores.tolist(), [[-1.0]] * 4, [[-1.0]] * 4, 4, [0.0] * 4)
    first, second = group_pairs(exp)
    judged = torch.sigmoid(scores[first] - scores[second])
    assert win_rates_from_pairs(judged, 4).tolist() == pytest.approx(
        sppo_win_rates(scores, 4).tolist())


def test_nash_md_and_xpo_read_the_judges_probability_over_the_scores():
    # the scores say the policy sample wins (1 > 0); the judge says P = 0.2 (it loses)
    exp = _experience([1.0, 0.0], [[-1.0]] * 2, [[-1.0]] * 2, 2, [0.0, 1.0])
    exp.extra["pair_probs"] = torch.tensor([0.2])
    prepare_nash_md(exp, RLSettings(kl_coef=0.0), beta=0.0)
    assert float(exp.advantages[0, 0]) == pytest.approx(0.2 - 0.5)
    exp.extra = {"pair_probs": torch.tensor([0.2])}
    prepare_xpo(exp, RLSettings(), beta=0.0)
    assert exp.extra["units"].tolist() == [1, 0]  # the reference's sample is chosen


def test_a_local_pair_judge_drives_nash_md(tiny_model, prompt_file, length_reward,  # noqa: F811
                                           tmp_path):
    """With ``preference:`` the algorithm's P(y ≻ y') is the judge's (both option orders), not
    σ of the reward difference: the logged preference equals the judge's mean."""
    judge = str(save_tiny_lm(tmp_path / "judge", seed=3))  # its tokenizer has the letters A and B
    cfg = _config(tiny_model, prompt_file, length_reward, tmp_path / "j", "nash_md",
                  generation={"num_samples": 1}, train={"max_steps": 1},
                  preference={"judge": {"kind": "local", "model": {"path": judge}}})
    _, rows = _run(cfg)
    row = rows[0]
    assert row["judge/pairs"] == 4
    assert row["preference_vs_mixture"] == pytest.approx(row["judge/p_first_mean"], abs=1e-6)
    with pytest.raises((ConfigError, ValueError), match="pair judge is read by"):
        _config(tiny_model, prompt_file, length_reward, tmp_path / "r", "rloo",
                preference={"judge": {"kind": "local", "model": {"path": tiny_model}}})


def test_sppo_asks_the_judge_about_every_pair_of_a_prompts_samples(tiny_model, prompt_file,  # noqa: F811
                                                                   length_reward, tmp_path):
    judge = str(save_tiny_lm(tmp_path / "judge", seed=3))
    cfg = _config(tiny_model, prompt_file, length_reward, tmp_path / "s", "sppo",
                  generation={"num_samples": 3}, train={"max_steps": 1},
                  preference={"judge": {"kind": "local", "model": {"path": judge}},
                              "both_orders": False})
    _, rows = _run(cfg)
    assert rows[0]["judge/pairs"] == 4 * 3  # 4 prompts x C(3, 2) pairs
    assert rows[0]["pairs"] == 4  # a winner and a loser per prompt (a judge never ties exactly)


def test_an_online_self_reward_judge_needs_a_number_for_unparsed_judgements(
        tiny_model, prompt_file, tmp_path):  # noqa: F811
    def config(judge, out):
        cfg = _config(tiny_model, prompt_file, "x:y", tmp_path / "ok", "rloo").model_dump()
        cfg["reward"] = [{"kind": "self_reward", "self_reward": judge}]
        cfg["out"] = str(tmp_path / out)
        return build_config(OnlineConfig, cfg)

    with pytest.raises((ConfigError, ValueError), match="set self_reward.fallback"):
        config({"mode": "parse", "judgements": 2}, "a")
    assert config({"mode": "parse", "judgements": 2, "fallback": 0.0}, "b").reward
    assert config({"mode": "digits", "judgements": 1}, "c").reward
