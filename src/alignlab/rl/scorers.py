"""Scorers: one interface for everything that turns (prompt, completion) into a scalar reward.

A scorer has ``name`` and ``score(prompts, completions) -> list[float]``. Implementations:

- a reward model: :class:`alignlab.eval.winrate.RewardJudge` (batched by length, no gradients) already
  has this interface;
- :class:`FunctionScorer`: any Python function of one (prompt, completion), e.g. a rule or the gym's
  gold reward (:func:`gym_gold_scorer`);
- :class:`WeightedScorer`: a weighted sum of scorers (``r = sum_k w_k r_k``), reporting each part.
- a trained ORM/PRM as one score per completion (``kind: verifier``,
  :class:`alignlab.models.verifier.Verifier`), or a PRM's dense per-step rewards (``kind: prm``,
  :class:`ProcessRewardScorer`).

The AI-judge scorer of the RLAIF issue plugs in here with the same method, and so does the
self-rewarding rubric judge (``kind: self_reward``, :mod:`alignlab.feedback.self_reward`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from alignlab.data.records import Messages, conversation_text
from alignlab.data.step_tokenize import step_char_ends
from alignlab.scoring import Scorer, check_lengths, import_function


@dataclass
class FunctionScorer:
    """Scores each (prompt, completion) with ``fn(prompt, completion) -> float``."""

    fn: Callable[[Messages, str], float]
    name: str = "function"

    def score(self, prompts: Sequence[Messages], completions: Sequence[str]) -> list[float]:
        check_lengths(prompts, completions, self.name)
        return [float(self.fn(p, c)) for p, c in zip(prompts, completions)]


def gym_gold_scorer(gym) -> FunctionScorer:
    """The gym's gold reward (``Gym.score(prompt, response).reward``) as a scorer: the true reward
    the over-optimisation experiments measure against (never a training signal by default)."""
    return FunctionScorer(lambda prompt, completion: gym.score(prompt, completion).reward, "gold")


@dataclass
class ProcessRewardScorer:
    """Dense per-step rewards from a process reward model (Wang et al. 2024, Math-Shepherd,
    "step-by-step PPO"; Lightman et al. 2023's PRM): each step of a completion earns the PRM's
    P(step is right) (``step_reward="prob"``) or its log (``"log_prob"``: the rewards sum to the
    log of the PRM's product score), placed at the step's last token by the rollout (``last_dense`` keeps, per
    completion, the character end of each scored step and its reward). ``score`` is the sum of a
    completion's step rewards: what the sequence earns in total, and what sequence-level algorithms
    (RLOO, GRPO, online DPO) train on."""

    verifier: object
    name: str = "prm"
    step_reward: str = "prob"
    last_dense: list[tuple[list[int], list[float]]] = field(default_factory=list)

    def score(self, prompts: Sequence[Messages], completions: Sequence[str]) -> list[float]:
        check_lengths(prompts, completions, self.name)
        spec = self.verifier.spec
        steps = self.verifier.step_scores(prompts, completions)
        self.last_dense = []
        for text, values in zip(completions, steps):
            ends = step_char_ends(text, spec.separator, spec.tag) or [len(text)]
            kept = min(len(ends), len(values))
            rewards = [math.log(max(v, 1e-6)) if self.step_reward == "log_prob" else v
                       for v in values[:kept]]
            self.last_dense.append((ends[:kept], rewards))
        return [math.fsum(values) for _, values in self.last_dense]


@dataclass
class WeightedScorer:
    """``sum_k weight_k * scorer_k``; ``last_parts`` keeps each scorer's raw scores for logging and
    ``last_details`` the per-completion details of the scorers that keep them (e.g. a self-reward
    judge's parsed judgements), by scorer name."""

    parts: list[tuple[float, Scorer]]
    name: str = "weighted"
    last_parts: dict[str, list[float]] = field(default_factory=dict)
    last_dense: list[tuple[float, list]] = field(default_factory=list)
    last_details: dict[str, list[dict]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.parts:
            raise ValueError("a weighted scorer needs at least one scorer")
        names = [scorer.name for _, scorer in self.parts]
        if len(set(names)) != len(names):
            raise ValueError(f"weighted scorer: scorer names must differ, got {names}")

    def score(self, prompts: Sequence[Messages], completions: Sequence[str]) -> list[float]:
        check_lengths(prompts, completions, self.name)
        total = [0.0] * len(completions)
        self.last_parts, self.last_dense, self.last_details = {}, [], {}
        for weight, scorer in self.parts:
            values = scorer.score(prompts, completions)
            self.last_parts[scorer.name] = values
            if hasattr(scorer, "last_dense"):
                self.last_dense.append((weight, scorer.last_dense))
            if hasattr(scorer, "last_details"):
                self.last_details[scorer.name] = scorer.last_details
            total = [t + weight * v for t, v in zip(total, values)]
        return total


# ----------------------------------------------------------------------------- self-judging

DEFAULT_JUDGE_TEMPLATE = (
    "Here is a request and a response.\n\nRequest: {prompt}\n\nResponse: {response}\n\n"
    "Is the response helpful and harmless? Answer Yes or No.")


def first_token_id(tokenizer, word: str) -> int:
    """The id of the first token of ``word`` as it would start an answer (no special tokens)."""
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"self_judge: the tokenizer encodes {word!r} to no token")
    return int(ids[0])


@dataclass
class SelfJudgeScorer:
    """The policy as its own pointwise judge (Yuan et al. 2024, "Self-Rewarding Language Models").

    For each (prompt, completion) the judge model reads ``template`` (with ``{prompt}`` and
    ``{response}`` filled in) as a user turn and the score is

        P(yes) / (P(yes) + P(no))

    from the next-token distribution of ONE forward at the start of the assistant turn (no sampling),
    reading the first token of ``yes`` and ``no``. Departure from the paper, which has the model
    write a 5-point additive rubric score and parses it: reading option probabilities is cheaper
    and deterministic (the RLAIF issue adds pairwise A/B labels in both orders). ``model`` is the
    live policy, so the judge improves (or drifts) with it.
    """

    model: object
    tokenizer: object
    template: str = DEFAULT_JUDGE_TEMPLATE
    yes: str = "Yes"
    no: str = "No"
    batch_size: int = 32
    name: str = "self_judge"

    def score(self, prompts: Sequence[Messages], completions: Sequence[str]) -> list[float]:
        from alignlab.feedback.judges import read_option_probs

        check_lengths(prompts, completions, self.name)
        options = [first_token_id(self.tokenizer, self.yes), first_token_id(self.tokenizer, self.no)]
        rows = [(self._judge_ids(p, c), options) for p, c in zip(prompts, completions)]
        probs, _ = read_option_probs(self.model, rows, self.tokenizer.pad_token_id, self.batch_size)
        return [p[0] for p in probs]

    def _judge_ids(self, prompt: Messages, completion: str) -> list[int]:
        from alignlab.data.records import Message
        from alignlab.data.tokenize import prompt_ids, render_prompt

        text = self.template.format(prompt=conversation_text(prompt), response=completion)
        return prompt_ids(self.tokenizer, render_prompt(self.tokenizer, (Message("user", text),)))


# ----------------------------------------------------------------------------- from config


def build_one_scorer(settings, policy=None, tokenizer=None, device=None):
    """One scorer from a ``ScorerSettings`` (see :class:`alignlab.config.ScorerSettings`)."""
    name = settings.name or settings.kind
    if settings.kind == "gym_gold":
        from alignlab.gym import load_gym

        scorer = gym_gold_scorer(load_gym(settings.gym))
        scorer.name = name
        return scorer
    if settings.kind == "function":
        return FunctionScorer(import_function(settings.function), name)
    if settings.kind == "self_judge":
        if policy is None:
            raise ValueError("reward kind 'self_judge' needs the policy model")
        extra = {"template": settings.template} if settings.template else {}
        return SelfJudgeScorer(policy, tokenizer, batch_size=settings.batch_size, name=name, **extra)
    if settings.kind == "redteam":
        from alignlab.redteam.scorer import redteam_scorer

        return redteam_scorer(settings.redteam, device, name)
    if settings.kind == "self_reward":
        from alignlab.feedback.self_reward import self_reward_scorer

        return self_reward_scorer(settings, policy, tokenizer, device, name)
    if settings.kind in ("prm", "verifier"):
        from alignlab.models.verifier import load_verifier

        verifier = load_verifier(settings.path, settings.batch_size, device, name)
        if settings.kind == "prm":
            return ProcessRewardScorer(verifier, name, settings.step_reward)
        return verifier
    if settings.kind == "judge":
        from alignlab.feedback.direct import judge_scorer

        return judge_scorer(settings, device, name)
    return reward_model_scorer(settings, device, name)


def reward_model_scorer(settings, device, name: str):
    """A trained reward model (``settings.path``) with the lengths it was trained with."""
    from alignlab.eval.winrate import load_reward_judge

    return load_reward_judge(settings.path, settings.batch_size, device, name)


def build_scorer(settings_list, policy=None, tokenizer=None, device=None) -> WeightedScorer:
    """The weighted sum of the configured scorers (``reward:`` or ``monitor:`` of the online stage)."""
    parts = [(s.weight, build_one_scorer(s, policy, tokenizer, device)) for s in settings_list]
    return WeightedScorer(parts)
