"""Generate-then-parse judge: the baseline the option-logprob labeller is compared with.

The judge sees exactly the comparison question of :mod:`alignlab.feedback.prompts` (Bai et al. 2022,
"Constitutional AI", sec. 4.1: conversation, principle, options (A)/(B)), GENERATES a short answer
greedily and a parser extracts the letter. This is how a judge is used when only text comes back
(no log-probs). Departures from the labeller: the label is hard (1, 0, or 0.5 when the answer cannot
be parsed) instead of the normalised option probability, and it costs ``max_new_tokens`` decoding
steps per query instead of one forward pass.

Rows have the labeller's layout (``p_chosen_first`` / ``p_chosen_second`` / ``label``) so
:func:`alignlab.feedback.labeling.label_stats` computes agreement and position bias the same way.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from alignlab.config import GenerationSettings
from alignlab.data.records import messages_to_list
from alignlab.feedback.labeling import LabelRequest
from alignlab.feedback.prompts import comparison_messages, render_judge_text

# Ordered from most to least specific; the first pattern that matches decides.
_PATTERNS = (
    re.compile(r"\(\s*([AB])\s*\)"),                                  # "(A)"
    re.compile(r"\b(?i:answer|option|response|reply)\s*(?i:is)?\s*:?\s*\(?([AB])\b"),  # "Option B"
    re.compile(r"^\s*\(?([AB])(?:[).:]|\s*$)"),                     # "A) ...", "B." (not "A good")
)


def parse_choice(text: str) -> str | None:
    """"A" or "B" named in a generated answer, or None when it names neither; when several
    patterns match, the most specific wins, and within a pattern the earliest hit."""
    for pattern in _PATTERNS:
        match = pattern.search(text)
        if match:
            return match.group(1).upper()
    return None


def _p_first(choice: str | None) -> float:
    """A parsed letter as a hard probability that the first-listed reply is preferred."""
    return {"A": 1.0, "B": 0.0}.get(choice, 0.5)


class GenerateParseJudge:
    """Greedy generation of ``max_new_tokens`` after the open assistant turn, then :func:`parse_choice`.

    ``answer_prefix`` (default empty: a free answer) is put at the start of the assistant turn, e.g.
    ``"The answer is: ("`` to force the letter to be the first token.
    """

    def __init__(self, model, tokenizer, max_new_tokens: int = 12, batch_size: int = 16,
                 answer_prefix: str = ""):
        from alignlab.generation.hf import HFGenerator

        self.tokenizer, self.answer_prefix = tokenizer, answer_prefix
        self.generator = HFGenerator(model, tokenizer, render_prompt=lambda _tok, text: text)
        self.settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=0.0,
                                           batch_size=batch_size)
        self.answers: list[str] = []

    def choices(self, messages) -> list[str | None]:
        """The parsed letter for each judge conversation (raw answers kept in ``self.answers``)."""
        texts = [render_judge_text(self.tokenizer, m, self.answer_prefix) for m in messages]
        answers = [s[0].text for s in self.generator.generate(texts, self.settings)]
        self.answers = [self.answer_prefix + a for a in answers]
        return [parse_choice(a) for a in self.answers]


def label_requests(judge: GenerateParseJudge, requests: Sequence[LabelRequest],
                   examples=(), both_orders: bool = True) -> list[dict]:
    """One row per request, in the labeller's layout, plus the raw answers and unparseable count."""
    orders = (0, 1) if both_orders else (0,)
    queries = [(r, principle, order) for r in requests for principle in r.principles for order in orders]
    messages = [comparison_messages(r.prompt, *((r.chosen, r.rejected) if order == 0 else
                                                (r.rejected, r.chosen)), principle, examples)
                for r, principle, order in queries]
    letters = judge.choices(messages)
    rows: dict[int, dict] = {}
    for (r, principle, order), letter, answer in zip(queries, letters, judge.answers):
        row = rows.setdefault(r.index, {
            "index": r.index, "prompt": messages_to_list(r.prompt), "chosen": r.chosen,
            "rejected": r.rejected, "data_label": r.data_label, "principles": list(r.principles),
            "p_chosen_first": [], "p_chosen_second": [], "answers": [], "unparseable": 0})
        p_first = _p_first(letter)
        row["p_chosen_first" if order == 0 else "p_chosen_second"].append(
            p_first if order == 0 else 1.0 - p_first)
        row["answers"].append(answer)
        row["unparseable"] += letter is None
    out = [rows[r.index] for r in requests]
    for row in out:
        values = row["p_chosen_first"] + row["p_chosen_second"]
        row["label"] = sum(values) / len(values)
    return out
