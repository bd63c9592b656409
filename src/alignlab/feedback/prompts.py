"""The texts a feedback model reads: multiple-choice comparisons, ratings, critiques and revisions.

Layouts follow Bai et al. 2022 ("Constitutional AI"): the comparison question shows the conversation,
a principle and the options ``(A)``/``(B)``, and the answer is read from the probability of the
option letter after ``The answer is: (`` (sec. 4.1); in chain-of-thought mode the assistant turn first
says ``Let's think step by step:`` and writes a rationale (sec. 4.2). Critique and revision requests are
appended to the conversation as user turns, and the model's replies are the critique and the revision
(sec. 3.1). Departure: the paper concatenates raw text for a pretrained LM; alignlab uses chat turns
so the same layout works with any chat template (and the HH rendering for models without one).

The gym feedback model is trained on documents built with these same functions
(:mod:`alignlab.gym.feedback`), so what it learned is exactly what the labeler asks.
"""

from __future__ import annotations

from collections.abc import Sequence

from alignlab.data.records import Message, Messages
from alignlab.feedback.constitution import ComparisonExample, Principle, RevisionExample

OPTIONS = ("A", "B")
ANSWER_PREFIX = "The answer is: ("
COT_PREFIX = "Let's think step by step:"
COT_ANSWER = "\nSo the answer is: ("
RATING_PREFIX = "Rating: "
RATING_OPTIONS = ("1", "2", "3", "4", "5")


def transcript_text(messages: Sequence[Message]) -> str:
    """A conversation as plain ``Human:``/``Assistant:`` lines, for quoting inside a question."""
    names = {"user": "Human", "assistant": "Assistant", "system": "System"}
    return "\n".join(f"{names[m.role]}: {m.content}" for m in messages)


def comparison_question(prompt: Messages, first: str, second: str, principle: str) -> str:
    """The multiple-choice question (CAI sec. 4.1): conversation, principle, options (A) and (B)."""
    return (f"Consider the following conversation between a human and an assistant:\n"
            f"{transcript_text(prompt)}\n{principle}\nOptions:\n(A) {first}\n(B) {second}")


def comparison_messages(prompt: Messages, first: str, second: str, principle: str,
                        examples: Sequence[ComparisonExample] = ()) -> Messages:
    """The judge's conversation: optional few-shot question/answer turns, then the question."""
    turns: list[Message] = []
    for ex in examples:
        turns.append(Message("user", comparison_question(ex.conversation, *ex.options, ex.principle)))
        turns.append(Message("assistant", f"{ANSWER_PREFIX}{ex.answer})"))
    turns.append(Message("user", comparison_question(prompt, first, second, principle)))
    return tuple(turns)


def cot_answer_prefix(rationale: str) -> str:
    """The assistant text after a chain-of-thought rationale, ending where the option letter goes."""
    return f"{COT_PREFIX} {rationale.strip()}{COT_ANSWER}"


def rating_messages(prompt: Messages, response: str, question: str) -> Messages:
    """Direct RLAIF's pointwise question (Lee et al. 2024): rate the last reply on a 1-5 scale."""
    convo = tuple(prompt) + (Message("assistant", response),)
    return (Message("user", f"Consider the following conversation between a human and an "
                            f"assistant:\n{transcript_text(convo)}\n{question}"),)


def revision_example_turns(ex: RevisionExample) -> list[Message]:
    """A worked example as chat turns: conversation, critique request/critique, revision request/
    revision."""
    return [*ex.conversation, Message("user", ex.critique_request), Message("assistant", ex.critique),
            Message("user", ex.revision_request), Message("assistant", ex.revision)]


def critique_messages(prompt: Messages, answer: str, principle: Principle,
                      examples: Sequence[RevisionExample] = ()) -> Messages:
    """Few-shot examples, the conversation with the answer to critique, then the critique request."""
    turns = [t for ex in examples for t in revision_example_turns(ex)]
    turns += [*prompt, Message("assistant", answer), Message("user", principle.critique)]
    return tuple(turns)


def revision_messages(critique_turns: Messages, critique: str, principle: Principle) -> Messages:
    """The critique conversation continued with the critique and the revision request."""
    return tuple(critique_turns) + (Message("assistant", critique), Message("user", principle.revision))


def render_judge_text(tokenizer, messages: Messages, assistant_prefix: str = "") -> str:
    """The rendered conversation followed by the start of the assistant turn, ``assistant_prefix``.

    The text ends exactly where the judge's answer begins. ``tokenizer`` None (an HTTP judge without a
    local tokenizer) renders the HH transcript format.
    """
    from alignlab.data.tokenize import render_completion, render_hh, render_prompt

    if tokenizer is None:
        head = render_hh(messages, add_generation_prompt=True)
        return head + (f" {assistant_prefix}" if assistant_prefix else "")
    head = render_prompt(tokenizer, messages)
    if not assistant_prefix:
        return head
    turn = render_completion(tokenizer, messages, assistant_prefix, rendered_prompt=head)
    cut = turn.find(assistant_prefix)
    if cut < 0:
        raise ValueError(f"the chat template does not keep the assistant text {assistant_prefix!r}")
    return head + turn[: cut + len(assistant_prefix)]
