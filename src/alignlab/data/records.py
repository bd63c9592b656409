"""Canonical record types every reader produces and every trainer consumes.

A prompt is the conversation so far (a tuple of messages ending with a user turn); completions are the
text of the next assistant turn. The canonical on-disk form (``format: alignlab``) is one JSON object
per line, as written by :func:`record_to_dict`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    """One turn: ``role`` is system, user or assistant."""

    role: str
    content: str


Messages = tuple[Message, ...]


@dataclass(frozen=True)
class Conversation:
    """A multi-turn conversation for SFT; assistant turns are the training targets."""

    messages: Messages


@dataclass(frozen=True)
class PreferencePair:
    """A shared prompt with a chosen and a rejected completion.

    ``label`` is the probability that ``chosen`` is preferred (1.0 for a hard label; soft labels from
    AI feedback or annotator votes lie in [0, 1]).
    """

    prompt: Messages
    chosen: str
    rejected: str
    label: float = 1.0


@dataclass(frozen=True)
class BinaryFeedback:
    """Unpaired feedback: one completion marked desirable or not (KTO-style data)."""

    prompt: Messages
    completion: str
    desirable: bool


@dataclass(frozen=True)
class RankedList:
    """Several completions of one prompt with scores (higher is better)."""

    prompt: Messages
    responses: tuple[str, ...]
    scores: tuple[float, ...] = field(default=())


Record = Conversation | PreferencePair | BinaryFeedback | RankedList

KIND_OF = {Conversation: "conversation", PreferencePair: "pair", BinaryFeedback: "binary",
           RankedList: "ranked"}


def messages_to_list(messages: Messages) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


def conversation_text(prompt: Messages) -> str:
    """A conversation as plain text for a judge's template: the turn's text alone when there is
    one turn, else ``role: content`` lines."""
    if len(prompt) == 1:
        return prompt[0].content
    return "\n".join(f"{m.role}: {m.content}" for m in prompt)


def messages_from_list(items: list[dict[str, str]]) -> Messages:
    """The inverse of :func:`messages_to_list` (for rows this project wrote; user data goes through
    the readers, which check every field)."""
    return tuple(Message(m["role"], m["content"]) for m in items)


def record_to_dict(record: Record) -> dict[str, Any]:
    """The canonical JSON form of a record (the ``alignlab`` format)."""
    if isinstance(record, Conversation):
        return {"messages": messages_to_list(record.messages)}
    out: dict[str, Any] = {"prompt": messages_to_list(record.prompt)}
    if isinstance(record, PreferencePair):
        out.update(chosen=record.chosen, rejected=record.rejected, label=record.label)
    elif isinstance(record, BinaryFeedback):
        out.update(completion=record.completion, label=record.desirable)
    elif isinstance(record, RankedList):
        out.update(responses=list(record.responses), scores=list(record.scores))
    return out
