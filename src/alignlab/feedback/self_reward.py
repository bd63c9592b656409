"""The self-rewarding judge: a model scores responses with an additive 5-point rubric.

Yuan et al. 2024, "Self-Rewarding Language Models" (arXiv 2401.10020), sec. 2.1 ("LLM-as-a-Judge")
and Fig. 2: the model reads a rubric that adds one point for each of five criteria — relevant with
some information; covers a substantial part of the request; answers its basic elements usefully;
clearly written from an AI assistant's perspective, direct and comprehensive; impeccably tailored,
expert, nothing extraneous — and ends its judgement with ``Score: <points>``. The paper samples each
response's judgement three times and averages the scores (sec. 2.2 / 3.1); pairs are then the best
and worst of N=4 samples, ties dropped (:mod:`alignlab.sampling.select`), and DPO trains M_{t+1}
from M_t with M_t as reference (sec. 2.3).

Two modes (:class:`alignlab.config.SelfRewardSettings`):

- ``parse`` (the paper): sample ``judgements`` judgements per response through the generation
  backend, parse the last ``Score: N`` of each (:func:`parse_score`), average the parsed ones
  (:func:`mean_of_parsed`); a response none of whose judgements parsed gets ``fallback`` (default
  NaN, which the sample stage keeps out of every selection).
- ``digits`` (ours, not in the paper): one forward over the rubric prompt followed by the assistant
  writing ``Score:``; the judge's score is the expected score under its next-token probabilities of
  the digits 0..5, renormalised over them (:func:`expected_digit_score`). Deterministic and
  never unparseable, so small models that cannot write a judgement still give a graded signal.

EFT seed data (sec. 3.1: M1 is fine-tuned on instruction data plus evaluation fine-tuning data,
judge prompts whose targets are judgements ending in ``Score: N``): :func:`eft_conversations` turns
rated single responses into such conversations, N the rating's quantile bin
(:func:`quantile_scores`); :func:`eft_fit` checks the ``sft`` stage's truncation keeps the target.

Departures: the rubric is our wording of the paper's five criteria; the judge prompt is a user turn
in the model's own chat template; contexts longer than ``max_length`` keep their end (the question
and the score line).
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from alignlab.config import GenerationSettings, SelfRewardSettings
from alignlab.data.records import Conversation, Message, Messages, conversation_text
from alignlab.scoring import check_lengths

RUBRIC_TEMPLATE = (
    "Rate the answer to the request below with a score from 0 to 5 built up point by point:\n"
    "- add 1 point if the answer is on topic and gives some useful information, even if it is "
    "incomplete or partly off topic;\n"
    "- add 1 more if it deals with a large part of the request without settling it;\n"
    "- add 1 more if it usefully answers the core of the request;\n"
    "- add 1 more if it is written clearly from an AI assistant's point of view and answers "
    "directly and fully;\n"
    "- add 1 more if it fits the request exactly, shows expert knowledge and holds nothing "
    "extraneous.\n\n"
    "Request: {prompt}\n\nAnswer: {response}\n\n"
    "Explain the total briefly, then end with the line \"Score: <points>\"."
)

SCORE_PREFIX = "Score:"
MAX_SCORE = 5
_SCORE = re.compile(r"score\s*[:=]\s*\**\s*(\d+(?:\.\d+)?)\s*(?:/\s*(\d+))?", re.IGNORECASE)


def parse_score(text: str) -> float | None:
    """The last ``Score: N`` in ``text`` (case-insensitive; ``"4/5"``, ``"4.0"`` and ``**4**``
    accepted), or None when there is none or N is outside 0..5 (Yuan et al. 2024, Fig. 2's
    final line). A denominator other than 5 (``"3/10"``) is not this rubric's score: None."""
    matches = list(_SCORE.finditer(text))
    if not matches:
        return None
    value, denominator = matches[-1].group(1), matches[-1].group(2)
    if denominator is not None and int(denominator) != MAX_SCORE:
        return None
    score = float(value)
    return score if 0.0 <= score <= MAX_SCORE else None


def mean_of_parsed(scores: Sequence[float | None]) -> float | None:
    """The mean of the parsed scores (the paper averages 3 sampled judgements, sec. 3.1);
    unparsed ones (None) are left out; None when none parsed."""
    parsed = [s for s in scores if s is not None]
    return sum(parsed) / len(parsed) if parsed else None


def expected_digit_score(probs: Sequence[float]) -> float:
    """``sum_n p_n n / sum_n p_n`` over the digits n = 0..len(probs)-1 (``digits`` mode; ours)."""
    total = math.fsum(probs)
    if total <= 0:
        raise ValueError("digit probabilities sum to zero")
    return math.fsum(p * n for n, p in enumerate(probs)) / total


def judge_request(template: str, prompt: Messages, response: str) -> str:
    """The judge's user turn: ``template`` with the prompt (as plain text) and the response filled
    in (Yuan et al. 2024, Fig. 2)."""
    return template.format(prompt=conversation_text(prompt), response=response.strip())


def judge_text(tokenizer, template: str, prompt: Messages, response: str) -> str:
    """The rendered judge prompt: ``template`` as one user turn, ending where the judge answers."""
    from alignlab.data.tokenize import render_prompt

    return render_prompt(tokenizer, (Message("user", judge_request(template, prompt, response)),))


def score_prefix(tokenizer) -> str:
    """What the judge's answer adds up to and including ``Score:`` when it starts with it, in the
    chat template (``" Score:"`` in the HH format, whose assistant text follows a space)."""
    from alignlab.data.tokenize import render_completion

    added = render_completion(tokenizer, (Message("user", "q"),), f"{SCORE_PREFIX} 0")
    return added[:added.index(SCORE_PREFIX) + len(SCORE_PREFIX)]


def quantile_scores(ratings: Sequence[float], bins: int = MAX_SCORE + 1) -> list[int]:
    """Each rating's quantile bin over ``ratings``: ``floor(bins * r / n)`` with r the number of
    ratings strictly below it (ties share the lower bin), so the scores 0..bins-1 are used about
    equally often. Ours: the EFT scores of :func:`eft_conversations` (see there)."""
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    ordered, n = sorted(ratings), len(ratings)
    return [min(bins - 1, bins * bisect.bisect_left(ordered, r) // n) for r in ratings]


def eft_conversations(rated: Sequence, template: str = RUBRIC_TEMPLATE,
                      bins: int = MAX_SCORE + 1) -> list[Conversation]:
    """Evaluation fine-tuning (EFT) data from rated single responses (anything with ``prompt``,
    ``response`` and ``rating``, e.g. :class:`alignlab.data.rated.RatedResponse`).

    Yuan et al. 2024, sec. 2.1 / 3.1: the seed data of M1 includes EFT examples — the judge prompt
    (rubric, prompt, response) as the input and a judgement ending in ``Score: N`` as the target —
    built from human rankings (Open Assistant). Here each conversation's user turn is
    :func:`judge_request` and its assistant turn just ``Score: N``, N the rating's quantile bin over
    ``rated`` (:func:`quantile_scores`). Departures: the scores come from whatever produced the
    ratings (in the gym, the annotator's noisy utility — never the gold reward), not from human
    rankings, and the target has no written justification before the score line.
    """
    scores = quantile_scores([r.rating for r in rated], bins)
    return [Conversation((Message("user", judge_request(template, r.prompt, r.response)),
                          Message("assistant", f"{SCORE_PREFIX} {n}")))
            for r, n in zip(rated, scores)]


def eft_fit(tokenizer, conversation: Conversation, max_length: int,
            max_prompt_length: int) -> dict:
    """How the ``sft`` stage's truncation (:func:`alignlab.data.tokenize.encode_conversation`)
    treats an EFT conversation: its full ``tokens``, and whether the judge prompt (``prompt_cut``)
    or the ``Score: N`` target (``target_cut``) loses tokens within ``max_length`` /
    ``max_prompt_length``."""
    from alignlab.data.tokenize import encode_conversation

    full = encode_conversation(tokenizer, conversation, 10**9, 10**9)
    kept = encode_conversation(tokenizer, conversation, max_length, max_prompt_length)
    targets, kept_targets = sum(full.loss_mask), sum(kept.loss_mask)
    return {"tokens": len(full), "target_cut": kept_targets < targets,
            "prompt_cut": len(kept) - kept_targets < len(full) - targets}


def context_limit(model, settings: SelfRewardSettings) -> int:
    """How many context tokens the judge keeps: ``max_length``, and room for the judgement within
    the model's positions when its config names them."""
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    room = settings.max_new_tokens if settings.mode == "parse" else 1
    limit = settings.max_length if not positions else min(settings.max_length, positions - room)
    return max(limit, 1)


@dataclass
class SelfRewardScorer:
    """Scores (prompt, response) pairs with the rubric judge (module docstring); ``last_details``
    keeps, per response, the parsed judgements (``parse``) or the digit probabilities
    (``digits``), which the sample stage stores and counts."""

    model: object
    tokenizer: object
    settings: SelfRewardSettings = field(default_factory=SelfRewardSettings)
    template: str = RUBRIC_TEMPLATE
    batch_size: int = 32
    name: str = "self_reward"
    last_details: list[dict] = field(default_factory=list)

    def score(self, prompts: Sequence[Messages], completions: Sequence[str]) -> list[float]:
        """The rubric score of each completion, in 0..5 (NaN or ``fallback``: nothing parsed)."""
        check_lengths(prompts, completions, self.name)
        texts = [self._context(p, c) for p, c in zip(prompts, completions)]
        if self.settings.mode == "digits":
            return self._digit_scores(texts)
        return self._parsed_scores(texts)

    def _context(self, prompt: Messages, completion: str) -> str:
        """The judge prompt, cut to its last ``context_limit`` tokens."""
        text = judge_text(self.tokenizer, self.template, prompt, completion)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        limit = context_limit(self.model, self.settings)
        return text if len(ids) <= limit else self.tokenizer.decode(ids[-limit:])

    def _digit_scores(self, texts: list[str]) -> list[float]:
        from alignlab.feedback.judges import LocalJudge

        judge = LocalJudge(self.model, self.tokenizer, self.batch_size, name=self.name,
                           max_length=context_limit(self.model, self.settings))
        options = [f" {n}" for n in range(MAX_SCORE + 1)]
        prefix = score_prefix(self.tokenizer)
        probs = judge.option_probs([t + prefix for t in texts], options)
        self.last_details = [{"digit_probs": [round(p, 4) for p in row]} for row in probs]
        return [expected_digit_score(row) for row in probs]

    def _parsed_scores(self, texts: list[str]) -> list[float]:
        from alignlab.generation.factory import make_generator

        s = self.settings
        generator = make_generator("hf", self.model, self.tokenizer,
                                   render_prompt=lambda _tokenizer, text: text)
        config = GenerationSettings(max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                                    top_p=s.top_p, num_samples=s.judgements, seed=s.seed,
                                    batch_size=max(self.batch_size, s.judgements))
        judged = generator.generate(texts, config)
        parsed = [[parse_score(j.text) for j in group] for group in judged]
        self.last_details = [{"judgements": row} for row in parsed]
        fallback = math.nan if s.fallback is None else s.fallback
        return [fallback if (m := mean_of_parsed(row)) is None else m for row in parsed]


def self_reward_scorer(settings, policy=None, tokenizer=None, device=None,
                       name: str = "self_reward") -> SelfRewardScorer:
    """The scorer of a ``kind: self_reward`` :class:`alignlab.config.ScorerSettings`: the judge is
    the model at ``settings.path`` or, without one, ``policy`` (the model being sampled — the
    paper's self-rewarding case)."""
    model = policy
    if settings.path is not None:
        from alignlab.config import ModelSettings
        from alignlab.models.loading import load_causal_lm

        model, tokenizer = load_causal_lm(ModelSettings(path=settings.path), for_training=False)
        if device is not None:
            model.to(device)
    elif policy is None:
        raise ValueError("reward kind 'self_reward' without 'path' judges with the policy, which "
                         "this stage does not load (backend vllm?): set path to the judge model")
    return SelfRewardScorer(model, tokenizer, settings.self_reward or SelfRewardSettings(),
                            settings.template or RUBRIC_TEMPLATE, settings.batch_size, name)
