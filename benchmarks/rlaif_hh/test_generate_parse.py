"""Tests of the generate-then-parse baseline (no model: the judge's generator is replaced)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from generate_parse import GenerateParseJudge, label_requests, parse_choice

from alignlab.data.records import Message
from alignlab.feedback.labeling import LabelRequest, label_stats


@pytest.mark.parametrize("text, letter", [
    ("(A) Sounds good", "A"), ("The answer is: (B).", "B"), ("Option B is better", "B"),
    ("answer: A", "A"), ("B.", "B"), ("A", "A"), ("The answer is: (A", "A"),
    ("A good reply would be", None), ("The response is a kind one", None), ("I think (b)", None),
    ("", None), ("(B) is worse than (A)", "B"),
])
def test_parse_choice(text, letter):
    assert parse_choice(text) == letter


class _ScriptedJudge(GenerateParseJudge):
    """Answers from a script instead of a model: the letter of the first-listed reply's marker."""

    def __init__(self):
        self.answer_prefix, self.answers = "", []

    def choices(self, messages):
        self.answers = ["(A)" if "(A) good" in m[-1].content else "no idea" for m in messages]
        return [parse_choice(a) for a in self.answers]


def test_label_requests_orders_and_unparseable():
    prompt = (Message("user", "hi"),)
    requests = [LabelRequest(0, prompt, "good", "bad", 1.0, ("Which is better?",)),
                LabelRequest(1, prompt, "bad", "good", 1.0, ("Which is better?",))]
    rows = label_requests(_ScriptedJudge(), requests)
    # pair 0: chosen first -> "(A)" (chosen); chosen second -> unparseable (0.5)
    assert rows[0]["p_chosen_first"] == [1.0] and rows[0]["p_chosen_second"] == [0.5]
    assert rows[0]["unparseable"] == 1 and rows[0]["label"] == 0.75
    # pair 1: "good" is the rejected reply; listed first in the second order -> A = rejected
    assert rows[1]["p_chosen_first"] == [0.5] and rows[1]["p_chosen_second"] == [0.0]
    stats = label_stats(rows)
    assert stats["agreement_both_orders"] == 0.5 and stats["agreement_first_order"] == 0.75
