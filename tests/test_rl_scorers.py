"""Scorers: functions, the gym's gold reward, weighted sums, and the reward model interface."""

from types import SimpleNamespace

import pytest

from alignlab.data.records import Message
from alignlab.rl.scorers import FunctionScorer, WeightedScorer, gym_gold_scorer

PROMPTS = [(Message("user", "hi"),), (Message("user", "2+2?"),)]


def test_function_scorer_scores_each_pair():
    scorer = FunctionScorer(lambda prompt, text: len(text) + len(prompt[0].content), "chars")
    assert scorer.score(PROMPTS, ["abc", "4"]) == [5.0, 5.0]  # 3 + 2, 1 + 4
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        scorer.score(PROMPTS, ["x"])


def test_gym_gold_scorer_reads_the_gold_reward():
    fake_gym = SimpleNamespace(score=lambda prompt, text: SimpleNamespace(reward=-1.0 if "!" in text
                                                                          else 0.5))
    assert gym_gold_scorer(fake_gym).score(PROMPTS, ["fine", "no!"]) == [0.5, -1.0]


def test_weighted_scorer_sums_parts_and_keeps_them():
    length = FunctionScorer(lambda p, t: len(t), "length")
    polite = FunctionScorer(lambda p, t: 1.0 if "please" in t else 0.0, "polite")
    scorer = WeightedScorer([(0.5, length), (2.0, polite)])
    # "please" -> 0.5*6 + 2*1 = 5.0; "no" -> 0.5*2 + 0 = 1.0
    assert scorer.score(PROMPTS, ["please", "no"]) == [5.0, 1.0]
    assert scorer.last_parts == {"length": [6.0, 2.0], "polite": [1.0, 0.0]}
    with pytest.raises(ValueError, match="names must differ"):
        WeightedScorer([(1.0, length), (1.0, length)])



def test_self_judge_reads_yes_versus_no_from_one_forward():
    import torch
    from test_rl_rollout import _tiny

    from alignlab.data.records import Message
    from alignlab.data.tokenize import prompt_ids, render_prompt
    from alignlab.rl.scorers import SelfJudgeScorer

    model, tok = _tiny()
    judge = SelfJudgeScorer(model, tok, template="q {prompt} a {response} ok?", yes="y", no="n",
                            batch_size=2)
    prompts = [(Message("user", "hi"),), (Message("user", "why?"),), (Message("user", "go"),)]
    completions = ["yes", "no way", "?"]
    scores = judge.score(prompts, completions)
    for prompt, completion, score in zip(prompts, completions, scores):
        text = f"q {prompt[0].content} a {completion} ok?"
        ids = prompt_ids(tok, render_prompt(tok, (Message("user", text),)))
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        y, n = tok.convert_tokens_to_ids("y"), tok.convert_tokens_to_ids("n")
        expected = torch.sigmoid(logits[y] - logits[n]).item()  # P(y) / (P(y) + P(n))
        assert abs(score - expected) < 1e-5
    assert len({round(s, 6) for s in scores}) == 3
