"""Direct RLAIF: a feedback model's rating as the reward of the online trainer.

Lee et al. 2024, "RLAIF vs. RLHF: Scaling Reinforcement Learning from Human Feedback with AI Feedback",
sec. 2.3 (d-RLAIF): the judge rates each response and the reward is the expected score under the
judge's probabilities of the score tokens, with no reward model in between. The paper uses a 1-10
scale; alignlab uses the constitution's 1-5 rating question (every score is one token in common
vocabularies) and scales the expected rating to [0, 1]: reward = (E[s] - 1) / 4.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from alignlab.data.records import Messages
from alignlab.feedback.prompts import (
    RATING_OPTIONS,
    RATING_PREFIX,
    rating_messages,
    render_judge_text,
)
from alignlab.scoring import check_lengths


def expected_rating(probs: Sequence[float]) -> float:
    """(E[s] - 1) / (k - 1) for probabilities over the scores 1..k."""
    k = len(probs)
    return sum(p * i for i, p in enumerate(probs)) / (k - 1)


@dataclass
class JudgeScorer:
    """The online trainer's Scorer interface (``name``, ``score``) over a text judge's rating."""

    judge: object
    question: str
    name: str = "judge"

    def score(self, prompts: Sequence[Messages], completions: Sequence[str]) -> list[float]:
        """Expected rating in [0, 1] of each completion, from one forward per completion."""
        check_lengths(prompts, completions, self.name)
        texts = [render_judge_text(self.judge.tokenizer, rating_messages(p, c, self.question),
                                   RATING_PREFIX) for p, c in zip(prompts, completions)]
        return [expected_rating(row) for row in self.judge.option_probs(texts, RATING_OPTIONS)]


def judge_scorer(settings, device=None, name: str = "judge") -> JudgeScorer:
    """A :class:`JudgeScorer` from a ``ScorerSettings`` of kind ``judge``."""
    from alignlab.feedback.constitution import load_constitution
    from alignlab.feedback.judges import build_judge

    if settings.judge.kind == "reward_model":
        raise ValueError("reward kind 'judge' rates with a local or http judge; for a reward model "
                         "use kind 'reward_model'")
    question = load_constitution(settings.constitution).rating_question()
    return JudgeScorer(build_judge(settings.judge, device), question, name)
