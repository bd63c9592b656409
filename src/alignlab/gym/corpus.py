"""Text the gym trains on: the base (pretraining) corpus, SFT demonstrations and feedback data.

Style distributions (probabilities per prompt kind):

* base corpus — every behaviour appears, the preferred ones are not the mode (:data:`BASE_RATES`);
* SFT demonstrations — helpful-only demos: mostly correct on benign prompts, still mostly compliant on
  harmful ones (:data:`SFT_RATES`), leaving room for preference training to improve harmlessness;
* preference data — two *different* responses drawn from the base distribution for one prompt and
  labelled by the simulated annotator: the ``helpful`` task on benign prompts, the ``harmless`` task
  on harmful prompts (as in HH-RLHF's two crowd tasks);
* rated single responses (DRO's data) — one base-distribution response per prompt with the
  annotator's noisy rating (:func:`rated_responses`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from alignlab.data.rated import RatedResponse
from alignlab.data.records import (
    BinaryFeedback,
    Conversation,
    Message,
    Messages,
    PreferencePair,
    RankedList,
)
from alignlab.gym.annotators import Annotator, PairUtilities, utility
from alignlab.gym.gold import GoldResult, score
from alignlab.gym.styles import render_style
from alignlab.gym.world import Task, World, parse_prompt

Rates = dict[str, dict[str, float]]

BASE_RATES: Rates = {
    "benign": {"correct": 0.30, "verbose": 0.20, "wrong": 0.30, "needless_refusal": 0.12,
               "explained_refusal": 0.08},
    "harmful": {"harmful_compliance": 0.50, "evasive_refusal": 0.30, "explained_refusal": 0.20},
}
SFT_RATES: Rates = {
    "benign": {"correct": 0.75, "verbose": 0.12, "wrong": 0.08, "needless_refusal": 0.03,
               "explained_refusal": 0.02},
    "harmful": {"harmful_compliance": 0.55, "evasive_refusal": 0.25, "explained_refusal": 0.20},
}


def task_for_annotator(task: Task) -> str:
    """HH-style split: helpfulness labels on benign prompts, harmlessness labels on harmful ones."""
    return "harmless" if task.harmful else "helpful"


def sample_style(rng: random.Random, task: Task, rates: Rates) -> str:
    """A style drawn from ``rates`` for the task's prompt kind."""
    table = rates["harmful" if task.harmful else "benign"]
    return rng.choices(list(table), weights=list(table.values()))[0]


def sample_response(rng: random.Random, world: World, task: Task, rates: Rates) -> str:
    """Text of a style drawn from ``rates``."""
    return render_style(rng, world, task, sample_style(rng, task, rates))


def conversation(prompt: Messages, response: str) -> Conversation:
    """The prompt followed by one assistant turn."""
    return Conversation(tuple(prompt) + (Message("assistant", response),))


def sample_conversations(rng: random.Random, world: World, prompts: Sequence[Messages], n: int,
                         rates) -> list[Conversation]:
    """``n`` HH-style transcripts on random ``prompts`` with response styles drawn from ``rates``.

    The base corpus uses :data:`BASE_RATES`, the SFT demonstrations :data:`SFT_RATES`.
    """
    out = []
    for _ in range(n):
        prompt = rng.choice(prompts)
        task = parse_prompt(world, prompt)
        out.append(conversation(prompt, sample_response(rng, world, task, rates)))
    return out


@dataclass(frozen=True)
class ScoredPair:
    """Two different responses to one prompt with their gold results and annotator utilities."""

    prompt: Messages
    a: str
    b: str
    gold_a: GoldResult
    gold_b: GoldResult
    utilities: PairUtilities


def draw_pair(rng: random.Random, world: World, prompt: Messages, length_bias: float,
              max_tries: int = 50) -> ScoredPair:
    """Two distinct base-distribution responses, scored for the HH annotator task."""
    task = parse_prompt(world, prompt)
    a = sample_response(rng, world, task, BASE_RATES)
    b = a
    for _ in range(max_tries):
        b = sample_response(rng, world, task, BASE_RATES)
        if b != a:
            break
    ga, gb = score(world, prompt, a), score(world, prompt, b)
    kind = task_for_annotator(task)
    pu = PairUtilities(utility(ga, a, kind, length_bias), utility(gb, b, kind, length_bias),
                       ga.reward, gb.reward)
    return ScoredPair(prompt, a, b, ga, gb, pu)


def label_pairs(rng: random.Random, pairs: Sequence[ScoredPair], annotator: Annotator
                ) -> tuple[list[PreferencePair], list[PreferencePair], list[bool]]:
    """Hard-label pairs (chosen = the annotator's pick, label 1.0), the same pairs with soft labels
    (label = BT probability that the written ``chosen`` is preferred) and the raw choices."""
    hard, soft, choices = [], [], []
    for p in pairs:
        u = p.utilities
        first = annotator.choose_first(rng, u.u_a, u.u_b)
        chosen, rejected = (p.a, p.b) if first else (p.b, p.a)
        prob = annotator.prob_first(u.u_a, u.u_b)
        hard.append(PreferencePair(p.prompt, chosen, rejected, 1.0))
        soft.append(PreferencePair(p.prompt, chosen, rejected, round(prob if first else 1 - prob, 6)))
        choices.append(first)
    return hard, soft, choices


def _judged_base_response(rng: random.Random, world: World, prompts: Sequence[Messages],
                          annotator: Annotator) -> tuple[Messages, str, float]:
    """A random prompt, one base-distribution response to it and the annotator's utility u."""
    prompt = rng.choice(prompts)
    task = parse_prompt(world, prompt)
    text = sample_response(rng, world, task, BASE_RATES)
    u = utility(score(world, prompt, text), text, task_for_annotator(task), annotator.length_bias)
    return prompt, text, u


def binary_feedback(rng: random.Random, world: World, prompts: Sequence[Messages],
                    annotator: Annotator, n: int) -> list[BinaryFeedback]:
    """Unpaired thumbs-up/down on base-distribution responses (P(desirable) = σ(u/T))."""
    out = []
    for _ in range(n):
        prompt, text, u = _judged_base_response(rng, world, prompts, annotator)
        out.append(BinaryFeedback(prompt, text, annotator.judge_desirable(rng, u)))
    return out


def ranked_lists(rng: random.Random, world: World, prompts: Sequence[Messages],
                 annotator: Annotator, n: int, k: int = 4) -> list[RankedList]:
    """``k`` distinct base-distribution responses per prompt with Plackett–Luce noisy scores."""
    out = []
    for _ in range(n):
        prompt = rng.choice(prompts)
        task = parse_prompt(world, prompt)
        texts: list[str] = []
        for _ in range(20 * k):
            text = sample_response(rng, world, task, BASE_RATES)
            if text not in texts:
                texts.append(text)
            if len(texts) == k:
                break
        kind = task_for_annotator(task)
        utils = [utility(score(world, prompt, t), t, kind, annotator.length_bias) for t in texts]
        scores = [round(s, 4) for s in annotator.rank_scores(rng, utils)]
        out.append(RankedList(prompt, tuple(texts), tuple(scores)))
    return out


def rated_responses(rng: random.Random, world: World, prompts: Sequence[Messages],
                    annotator: Annotator, n: int) -> list[RatedResponse]:
    """One base-distribution response per draw with the annotator's noisy rating u/T + Gumbel(0, 1).

    The rating is :meth:`Annotator.rank_scores` of a one-response list: the difference of two such
    ratings is logistic, so comparing two rated responses reproduces the annotator's Bradley–Terry
    choice probabilities (≈ 75% gold agreement); the rating never sees gold except through u."""
    out = []
    for _ in range(n):
        prompt, text, u = _judged_base_response(rng, world, prompts, annotator)
        out.append(RatedResponse(prompt, text, round(annotator.rank_scores(rng, [u])[0], 4)))
    return out
