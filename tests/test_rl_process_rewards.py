"""Dense process rewards: where each step's reward lands, by hand, and through a real rollout."""

import pytest
import torch
from test_rl_rollout import _tiny

from alignlab.config import GenerationSettings
from alignlab.data.records import Message
from alignlab.data.step_tokenize import step_char_ends
from alignlab.generation.base import Sample
from alignlab.rl import advantages as adv
from alignlab.rl.experience import experience_from_rollout
from alignlab.rl.rollout import collect_rollout
from alignlab.rl.scorers import ProcessRewardScorer, WeightedScorer


def test_place_step_rewards_by_hand():
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], dtype=torch.float32)
    # row 0: steps end at tokens 1 and 3; row 1: two steps end on token 0, one past the end
    out = adv.place_step_rewards([[1, 3], [0, 0, 7]], [[0.5, 0.25], [0.1, 0.2, 0.4]], mask)
    torch.testing.assert_close(out, torch.tensor([[0, 0.5, 0, 0.25, 0], [0.3, 0.4, 0, 0, 0]]))
    with pytest.raises(ValueError, match="step ends"):
        adv.place_step_rewards([[1]], [[0.5, 0.5]], mask[:1])


def test_token_rewards_add_dense_rewards_by_hand():
    mask = torch.tensor([[1.0, 1.0, 1.0]])
    kl = torch.tensor([[0.1, 0.2, 0.3]])
    dense = torch.tensor([[0.5, 0.0, 0.25]])
    # -0.1 * kl everywhere, outcome 1.0 at the last token, dense where the steps end
    rewards = adv.token_rewards(torch.tensor([1.0]), kl, mask, 0.1, dense=dense)
    torch.testing.assert_close(rewards, torch.tensor([[0.49, -0.02, 1.22]]))
    # REINFORCE++ returns-to-go (gamma 1) of those rewards: 1.69, 1.20, 1.22 before whitening
    torch.testing.assert_close(adv.discounted_returns(rewards, mask), torch.tensor([[1.69, 1.20, 1.22]]))


def test_step_char_ends():
    assert step_char_ends("ab\n\ncd  \ne") == [2, 6, 10]
    assert step_char_ends("") == []


class _FakeVerifier:
    """Step i of every completion scores (i + 1) / 10."""

    class spec:
        separator, tag = "\n", None

    def step_scores(self, prompts, completions):
        from alignlab.data.step_tokenize import split_steps

        return [[(i + 1) / 10 for i in range(len(split_steps(c) or [""]))] for c in completions]


class _Canned:
    """A generator returning fixed texts (token ids from the tokenizer)."""

    def __init__(self, tok, texts):
        self.tok, self.texts = tok, texts

    def generate(self, prompts, settings):
        ids = [self.tok(t, add_special_tokens=False)["input_ids"] for t in self.texts]
        return [[Sample(t, i, "eos") for t, i in zip(self.texts, ids)] for _ in prompts]


def test_rollout_places_prm_rewards_on_each_steps_last_token():
    model, tok = _tiny()
    scorer = WeightedScorer([(2.0, ProcessRewardScorer(_FakeVerifier()))])
    prompts = [(Message("user", "hi"),)]
    texts = ["ab\ncd", "xyz"]
    rollout = collect_rollout(model, tok, _Canned(tok, texts), prompts,
                              GenerationSettings(num_samples=2, max_new_tokens=8), scorer,
                              max_prompt_length=32)
    assert rollout.scores.tolist() == pytest.approx([2 * 0.3, 2 * 0.1])
    exp = experience_from_rollout(rollout)
    # "ab\ncd" + eos: tokens a b \n c d eos -> step 1 ends on "b" (1), step 2 on "d" (4)
    assert exp.dense[0].tolist() == pytest.approx([0, 0.2, 0, 0, 0.4, 0])
    assert exp.dense[1].tolist() == pytest.approx([0, 0, 0.2, 0, 0, 0])
    from alignlab.rl.algorithms import last_token_scores

    assert last_token_scores(exp).tolist() == pytest.approx([0.0, 0.0], abs=1e-6)


def test_prm_rewards_refuse_sequence_level_score_shaping():
    from alignlab.config import ConfigError
    from alignlab.stages import build_stage_config

    raw = {"stage": "online", "algorithm": "ppo", "out": "x", "model": {"path": "m"},
           "prompts": {"path": "p.jsonl"}, "reward": [{"kind": "prm", "path": "prm"}]}
    build_stage_config(raw, "test")  # fine on its own
    for rl in ({"score_norm": "batch"}, {"reward_clip": 1.0}):
        with pytest.raises(ConfigError, match="dense step rewards"):
            build_stage_config({**raw, "rl": rl}, "test")
    with pytest.raises(ConfigError, match="needs 'path'"):
        build_stage_config({**raw, "reward": [{"kind": "prm"}]}, "test")
