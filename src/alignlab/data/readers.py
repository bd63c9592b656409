"""Format readers: one function per on-disk format, mapping a raw row to canonical records.

Every reader has the signature ``read_x(row, where, notes) -> list[record]``: ``where`` is the row's
:class:`~alignlab.data.errors.Location`, ``notes`` a Counter of handled quirks (reported by the loader,
so nothing is dropped silently). A missing or wrong-typed field raises ``RecordError(source, line,
field, problem)``. A reader returns a list because one OASST tree yields many records; a prompt-only
``alignlab`` row yields a :class:`PromptOnly`.

Formats (``data.format``):

- ``alignlab``: the forms of :func:`alignlab.data.records.record_to_dict` plus prompt-only
  ``{"prompt": [...]}``. ``prompt`` may be a plain string (one user turn). ``chosen``/``rejected``/
  ``completion`` may also be an assistant message ``{"role": "assistant", "content"}`` or a one-message
  list of it. Ranked ``scores`` may be omitted: the responses are then best first (score −i).
- ``hh``: Anthropic HH-RLHF transcripts ``{"chosen": "\\n\\nHuman: …\\n\\nAssistant: …", "rejected": …}``;
  see :func:`parse_hh_transcript` for the quirks handled.
- ``chat``: ``{"messages": [{role, content}]}`` (a conversation); ``{"messages"|"prompt": [...],
  "chosen", "rejected"}`` (a pair on that prompt); ``{"chosen": [messages], "rejected": [messages]}``
  (two full conversations that share all turns but the last reply). Optional ``label`` (float).
- ``sharegpt``: ``{"conversations": [{from, value}], "system"?}``; with ``chosen``/``rejected``
  ``{from, value}`` a pair. ``from``: human/user → user, gpt/assistant/chatgpt → assistant, system.
- ``alpaca``: ``instruction``, ``input`` (appended to the instruction after a blank line when not
  blank), ``output`` → a two-turn Conversation; ``chosen``/``rejected`` instead of ``output`` → a pair;
  optional ``system``.
- ``kto``: ``{"messages": [...], "label": bool}`` → BinaryFeedback (the last message, which must be an
  assistant turn, is the completion); the canonical ``{"prompt", "completion", "label"}`` is accepted too.
- ``oasst``: OpenAssistant message trees (see :func:`read_oasst`).
- ``stackexchange``: a question with vote-scored answers (see :func:`read_stackexchange`).

``format: auto`` (:func:`detect_format`) looks at the first row's keys; the rules are in
``FORMAT_RULES``. No match or more than one match is an error telling the user to set ``format``.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from alignlab.config import shown
from alignlab.data.errors import DataSourceError, Location
from alignlab.data.pmp import vote_score
from alignlab.data.records import (
    ROLES,
    BinaryFeedback,
    Conversation,
    Message,
    Messages,
    PreferencePair,
    RankedList,
    Record,
)


@dataclass(frozen=True)
class PromptOnly:
    """A prompt without any completion (``{"prompt": [...]}``): usable only by ``load_prompts``."""

    prompt: Messages


Item = Record | PromptOnly
Reader = Callable[[dict[str, Any], Location, Counter], list[Item]]


# ----------------------------------------------------------------------------- field helpers


def require(row: dict[str, Any], key: str, where: Location, kind: type | tuple = object,
            field: str | None = None) -> Any:
    """``row[key]``, checked to exist and be of ``kind``; ``field`` names it in errors."""
    name = field or key
    if key not in row or row[key] is None:
        raise where.error(name, "required field is missing")
    value = row[key]
    if kind is object:
        return value
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        raise where.error(name, f"expected {_type_name(kind)}, got {type(value).__name__}")
    return value


def _as_tuple(kind: type | tuple) -> tuple:
    return kind if isinstance(kind, tuple) else (kind,)


def _type_name(kind: type | tuple) -> str:
    names = {str: "a string", list: "a list", dict: "an object", bool: "true or false",
             int: "an integer", float: "a number"}
    return " or ".join(names.get(k, k.__name__) for k in _as_tuple(kind))


def parse_messages(value: Any, where: Location, field: str) -> Messages:
    """A list of ``{"role", "content"}`` objects with roles system/user/assistant."""
    if not isinstance(value, list):
        raise where.error(field, f"expected a list of messages, got {type(value).__name__}")
    out = []
    for i, item in enumerate(value):
        name = f"{field}[{i}]"
        if not isinstance(item, dict):
            raise where.error(name, f"expected a message object, got {type(item).__name__}")
        role = require(item, "role", where, str, f"{name}.role")
        if role not in ROLES:
            raise where.error(f"{name}.role", f"unknown role {shown(role)}; expected one of {ROLES}")
        out.append(Message(role, require(item, "content", where, str, f"{name}.content")))
    return tuple(out)


def parse_prompt(value: Any, where: Location, field: str) -> Messages:
    """A prompt: a plain string (one user turn) or a message list ending with a user turn."""
    messages = (Message("user", value),) if isinstance(value, str) else \
        parse_messages(value, where, field)
    check_prompt(messages, where, field)
    return messages


def check_prompt(messages: Messages, where: Location, field: str) -> None:
    """A prompt must be non-empty and end with a user turn."""
    if not messages:
        raise where.error(field, "the prompt has no messages")
    if messages[-1].role != "user":
        raise where.error(field, f"the prompt must end with a user turn, not {messages[-1].role!r}")


def check_conversation(messages: Messages, where: Location, field: str) -> None:
    """A training conversation: its first non-system turn is a user turn, it has an assistant turn
    and no user turn is empty (blank)."""
    for i, message in enumerate(messages):
        if message.role == "user" and not message.content.strip():
            raise where.error(f"{field}[{i}].content", "the user turn is empty")
    turns = [m for m in messages if m.role != "system"]
    if not turns:
        raise where.error(field, "the conversation has no user or assistant turns")
    if turns[0].role != "user":
        raise where.error(field, "the conversation must start with a user turn (after any system)")
    if not any(m.role == "assistant" for m in turns):
        raise where.error(field, "the conversation has no assistant turn to train on")


def completion_text(value: Any, where: Location, field: str) -> str:
    """A completion: a string, an assistant message object, or a list holding one assistant message."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        role = value.get("role", "assistant")
        if role != "assistant":
            raise where.error(f"{field}.role", f"a completion must be an assistant turn, not {shown(role)}")
        return require(value, "content", where, str, f"{field}.content")
    raise where.error(field, "expected a string or an assistant message, "
                             f"got {type(value).__name__}")


def pair_label(row: dict[str, Any], where: Location) -> float:
    """The optional soft label of a pair: P(chosen preferred) in [0, 1], default 1.0."""
    if row.get("label") is None:
        return 1.0
    label = require(row, "label", where, (int, float))
    if not 0.0 <= float(label) <= 1.0:
        raise where.error("label", f"a pair label is P(chosen preferred) in [0, 1], got {label}")
    return float(label)


def split_shared_prompt(chosen: Messages, rejected: Messages, where: Location) -> Messages:
    """The turns two full conversations share before their last (assistant) reply."""
    for name, messages in (("chosen", chosen), ("rejected", rejected)):
        if not messages or messages[-1].role != "assistant":
            raise where.error(name, "the conversation must end with an assistant reply")
    prompt, other = chosen[:-1], rejected[:-1]
    if prompt != other:
        turn = next((i for i, (a, b) in enumerate(zip(prompt, other)) if a != b),
                    min(len(prompt), len(other)))
        raise where.error("rejected", "the turns before the last reply differ from 'chosen' "
                                      f"(first difference at turn {turn})")
    check_prompt(prompt, where, "chosen")
    return prompt


# ----------------------------------------------------------------------------- alignlab


def read_alignlab(row: dict[str, Any], where: Location, notes: Counter) -> list[Item]:
    """The canonical forms of :func:`record_to_dict`, plus prompt-only rows."""
    if "messages" in row:
        messages = parse_messages(row["messages"], where, "messages")
        check_conversation(messages, where, "messages")
        return [Conversation(messages)]
    prompt = parse_prompt(require(row, "prompt", where, (str, list)), where, "prompt")
    if "chosen" in row or "rejected" in row:
        chosen = completion_text(require(row, "chosen", where), where, "chosen")
        rejected = completion_text(require(row, "rejected", where), where, "rejected")
        return [PreferencePair(prompt, chosen, rejected, pair_label(row, where))]
    if "completion" in row:
        completion = completion_text(require(row, "completion", where), where, "completion")
        return [BinaryFeedback(prompt, completion, require(row, "label", where, bool))]
    if "responses" in row:
        return [_ranked_list(row, prompt, where)]
    return [PromptOnly(prompt)]


def _ranked_list(row: dict[str, Any], prompt: Messages, where: Location) -> RankedList:
    responses = require(row, "responses", where, list)
    texts = tuple(completion_text(r, where, f"responses[{i}]") for i, r in enumerate(responses))
    scores = row.get("scores") or [-float(i) for i in range(len(texts))]
    if not isinstance(scores, list) or len(scores) != len(texts):
        raise where.error("scores", f"expected a list of {len(texts)} numbers (one per response)")
    for i, score in enumerate(scores):
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            raise where.error(f"scores[{i}]", f"expected a number, got {type(score).__name__}")
        if not math.isfinite(score):
            raise where.error(f"scores[{i}]", f"expected a finite number, got {score}")
    return RankedList(prompt, texts, tuple(float(s) for s in scores))


# ----------------------------------------------------------------------------- HH-RLHF


HH_MARKER = re.compile(r"(?:\A|\n\n)(Human|Assistant):")
HH_INLINE_LABEL = re.compile(r"(?<!\n\n)\b(Human|Assistant):")


def parse_hh_transcript(text: str, where: Location, field: str) -> tuple[Messages, set[str]]:
    """Turns of one ``\\n\\nHuman: …\\n\\nAssistant: …`` transcript, and the quirks met in it.

    Quirks of the real files and how they are handled (names as counted by :func:`read_hh`):

    - whitespace beyond the single space after a marker, or trailing whitespace, is stripped
      (``hh_irregular_whitespace``);
    - an empty turn (``\\n\\nAssistant: `` at the end) is kept as an empty string
      (``hh_empty_turn``); for a pair it means the empty reply was the chosen / rejected one;
    - two consecutive turns of the same speaker (``\\n\\nAssistant: a\\n\\nAssistant: b``) are
      merged into one, joined by a blank line (``hh_merged_repeated_turn``);
    - ``Human:``/``Assistant:`` not preceded by a blank line is text, not a turn boundary
      (``hh_inline_speaker_label``);
    - text before the first marker is a system message (the inverse of the fallback rendering).

    An empty transcript, or one without any Human/Assistant marker, is a RecordError.
    """
    if not text.strip():
        raise where.error(field, "empty transcript")
    parts = HH_MARKER.split(text)
    if len(parts) == 1:
        raise where.error(field, "no '\\n\\nHuman:' / '\\n\\nAssistant:' turns in the transcript")
    quirks: set[str] = set()
    messages: list[Message] = [Message("system", parts[0].strip())] if parts[0].strip() else []
    for speaker, body in zip(parts[1::2], parts[2::2]):
        role, content = ("user" if speaker == "Human" else "assistant"), body.strip()
        quirks.update(_hh_turn_quirks(body, content))
        if messages and messages[-1].role == role:
            quirks.add("hh_merged_repeated_turn")
            content = f"{messages.pop().content}\n\n{content}"
        messages.append(Message(role, content))
    return tuple(messages), quirks


def _hh_turn_quirks(body: str, content: str) -> set[str]:
    quirks = set()
    if content == "":
        quirks.add("hh_empty_turn")
    elif body != f" {content}":
        quirks.add("hh_irregular_whitespace")
    if HH_INLINE_LABEL.search(content):
        quirks.add("hh_inline_speaker_label")
    return quirks


def read_hh(row: dict[str, Any], where: Location, notes: Counter) -> list[Item]:
    """An HH-RLHF pair: shared turns → prompt; the two last assistant replies → chosen / rejected.

    Quirks are counted once per pair in ``notes`` (see :func:`parse_hh_transcript`), plus
    ``hh_raw_prefix_differs`` (the raw texts before the last ``Assistant:`` differ, but the parsed
    turns agree once repeated turns are merged), ``hh_empty_chosen`` / ``hh_empty_rejected`` and
    ``hh_identical_replies``. Turns that still differ after parsing are a RecordError.
    """
    chosen_text = require(row, "chosen", where, str)
    rejected_text = require(row, "rejected", where, str)
    chosen, quirks = parse_hh_transcript(chosen_text, where, "chosen")
    rejected, more = parse_hh_transcript(rejected_text, where, "rejected")
    prompt = split_shared_prompt(chosen, rejected, where)
    quirks |= more
    last = "\n\nAssistant:"
    if chosen_text[:chosen_text.rfind(last)] != rejected_text[:rejected_text.rfind(last)]:
        quirks.add("hh_raw_prefix_differs")
    quirks |= {name for name, reply in (("hh_empty_chosen", chosen), ("hh_empty_rejected", rejected))
               if reply[-1].content == ""}
    if chosen[-1].content == rejected[-1].content:
        quirks.add("hh_identical_replies")
    notes.update(quirks)
    return [PreferencePair(prompt, chosen[-1].content, rejected[-1].content)]


# ----------------------------------------------------------------------------- chat messages


def read_chat(row: dict[str, Any], where: Location, notes: Counter) -> list[Item]:
    """Role/content messages: a conversation, a pair on a prompt, or two full conversations."""
    if "chosen" not in row and "rejected" not in row:
        messages = parse_messages(require(row, "messages", where), where, "messages")
        check_conversation(messages, where, "messages")
        return [Conversation(messages)]
    require(row, "chosen", where)
    require(row, "rejected", where)
    label = pair_label(row, where)
    key = "prompt" if "prompt" in row else "messages" if "messages" in row else None
    if key is not None:
        prompt = parse_prompt(row[key], where, key)
        chosen = completion_text(row["chosen"], where, "chosen")
        return [PreferencePair(prompt, chosen, completion_text(row["rejected"], where, "rejected"),
                               label)]
    chosen_msgs = parse_messages(row["chosen"], where, "chosen")
    rejected_msgs = parse_messages(row["rejected"], where, "rejected")
    prompt = split_shared_prompt(chosen_msgs, rejected_msgs, where)
    return [PreferencePair(prompt, chosen_msgs[-1].content, rejected_msgs[-1].content, label)]


# ----------------------------------------------------------------------------- ShareGPT


SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "system": "system"}


def sharegpt_turn(value: Any, where: Location, field: str) -> Message:
    """One ``{"from", "value"}`` turn, with the speaker mapped to system/user/assistant."""
    if not isinstance(value, dict):
        raise where.error(field, f"expected a {{from, value}} object, got {type(value).__name__}")
    speaker = require(value, "from", where, str, f"{field}.from")
    if speaker not in SHAREGPT_ROLES:
        raise where.error(f"{field}.from", f"unknown speaker {shown(speaker)}; expected one of "
                                           f"{sorted(SHAREGPT_ROLES)}")
    return Message(SHAREGPT_ROLES[speaker], require(value, "value", where, str, f"{field}.value"))


def read_sharegpt(row: dict[str, Any], where: Location, notes: Counter) -> list[Item]:
    """ShareGPT ``conversations`` (a Conversation) or, with ``chosen``/``rejected``, a pair."""
    turns = require(row, "conversations", where, list)
    messages = tuple(sharegpt_turn(t, where, f"conversations[{i}]") for i, t in enumerate(turns))
    if row.get("system"):
        messages = (Message("system", require(row, "system", where, str)),) + messages
    if "chosen" not in row and "rejected" not in row:
        check_conversation(messages, where, "conversations")
        return [Conversation(messages)]
    check_prompt(messages, where, "conversations")
    replies = [sharegpt_turn(require(row, k, where), where, k) for k in ("chosen", "rejected")]
    for key, reply in zip(("chosen", "rejected"), replies):
        if reply.role != "assistant":
            raise where.error(f"{key}.from", "a reply must come from gpt/assistant")
    return [PreferencePair(messages, replies[0].content, replies[1].content, pair_label(row, where))]


# ----------------------------------------------------------------------------- Alpaca


def read_alpaca(row: dict[str, Any], where: Location, notes: Counter) -> list[Item]:
    """Alpaca ``instruction`` (+ ``input`` after a blank line) → user turn; ``output`` → assistant."""
    instruction = require(row, "instruction", where, str)
    extra = row.get("input") or ""
    if not isinstance(extra, str):
        raise where.error("input", f"expected a string, got {type(extra).__name__}")
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    prompt: Messages = (Message("user", user),)
    if row.get("system"):
        prompt = (Message("system", require(row, "system", where, str)),) + prompt
    if "output" not in row and ("chosen" in row or "rejected" in row):
        chosen = completion_text(require(row, "chosen", where), where, "chosen")
        rejected = completion_text(require(row, "rejected", where), where, "rejected")
        return [PreferencePair(prompt, chosen, rejected, pair_label(row, where))]
    output = require(row, "output", where, str)
    return [Conversation(prompt + (Message("assistant", output),))]


# ----------------------------------------------------------------------------- KTO


def read_kto(row: dict[str, Any], where: Location, notes: Counter) -> list[Item]:
    """``messages`` + boolean ``label``: the last (assistant) message is the judged completion."""
    if "messages" not in row and "prompt" in row:
        return read_alignlab(row, where, notes)
    messages = parse_messages(require(row, "messages", where), where, "messages")
    desirable = require(row, "label", where, bool)
    if not messages or messages[-1].role != "assistant":
        raise where.error("messages", "the last message must be the assistant completion")
    check_prompt(messages[:-1], where, "messages")
    return [BinaryFeedback(messages[:-1], messages[-1].content, desirable)]


# ----------------------------------------------------------------------------- OASST trees


OASST_ROLES = {"prompter": "user", "assistant": "assistant"}


def read_oasst(row: dict[str, Any], where: Location, notes: Counter) -> list[Item]:
    """Ranked lists from one OpenAssistant message tree (Köpf et al., 2023).

    For every prompter message with at least two ranked assistant replies, one RankedList whose
    prompt is the path from the root to that message and whose responses are the ranked replies best
    first, with ``score = -rank`` (``rank`` 0 is best). Converting to pairs then gives every
    better/worse sibling pair. Counted in ``notes``: replies without a rank
    (``oasst_unranked_reply_skipped``), prompter messages with a single ranked reply
    (``oasst_single_ranked_reply``), deleted messages and their subtrees (``oasst_deleted_skipped``).
    """
    out: list[Item] = []
    _walk_oasst(row, (), where, "", notes, out)
    return out


def _walk_oasst(node: dict[str, Any], path: Messages, where: Location, field: str,
                notes: Counter, out: list[Item]) -> None:
    path = path + (_oasst_message(node, where, field),)
    prefix = f"{field}." if field else ""
    replies = node.get("replies") or []
    if not isinstance(replies, list):
        raise where.error(f"{prefix}replies", "expected a list of messages")
    live = []
    for i, child in enumerate(replies):
        if not isinstance(child, dict):
            raise where.error(f"{prefix}replies[{i}]", "expected a message object")
        if child.get("deleted"):
            notes["oasst_deleted_skipped"] += 1
            continue
        live.append((i, child))
    if path[-1].role == "user":
        _collect_ranked(path, live, where, prefix, notes, out)
    for i, child in live:
        _walk_oasst(child, path, where, f"{prefix}replies[{i}]", notes, out)


def _oasst_message(node: dict[str, Any], where: Location, field: str) -> Message:
    prefix = f"{field}." if field else ""
    role = require(node, "role", where, str, f"{prefix}role")
    if role not in OASST_ROLES:
        raise where.error(f"{prefix}role", f"unknown role {shown(role)}; expected prompter or assistant")
    return Message(OASST_ROLES[role], require(node, "text", where, str, f"{prefix}text"))


def _collect_ranked(path: Messages, replies: list, where: Location, prefix: str, notes: Counter,
                    out: list[Item]) -> None:
    ranked = []
    for i, child in replies:
        if child.get("role") != "assistant":
            continue
        rank = child.get("rank")
        if rank is None:
            notes["oasst_unranked_reply_skipped"] += 1
            continue
        if isinstance(rank, bool) or not isinstance(rank, int):
            raise where.error(f"{prefix}replies[{i}].rank",
                              f"expected an integer, got {shown(rank)}")
        ranked.append((rank, require(child, "text", where, str, f"{prefix}replies[{i}].text")))
    if len(ranked) == 1:
        notes["oasst_single_ranked_reply"] += 1
    if len(ranked) >= 2:
        ranked.sort(key=lambda item: item[0])
        out.append(RankedList(path, tuple(t for _, t in ranked), tuple(-float(r) for r, _ in ranked)))


# ----------------------------------------------------------------------------- Stack Exchange votes


def read_stackexchange(row: dict[str, Any], where: Location, notes: Counter) -> list[Item]:
    """A ranked list from one vote-scored question (Askell et al. 2021's preference-model
    pretraining data).

    ``{"question": text or messages, "answers": [{"text", "upvotes" | "score" | "pm_score",
    "accepted" | "selected"?}, ...]}``: each answer's score is ``pm_score`` when given (already
    Askell-scored, as in H4's stack-exchange-preferences), else :func:`alignlab.data.pmp.vote_score`
    of its net votes (``upvotes`` or Stack Exchange's ``score``) and accepted flag. Responses are
    listed best first; equal scores stay (converting to pairs skips and counts their ties).
    Questions with fewer than two answers are skipped and counted (``stackexchange_single_answer``).
    """
    prompt = parse_prompt(require(row, "question", where), where, "question")
    answers = require(row, "answers", where, list)
    scored = [_vote_scored_answer(a, where, f"answers[{i}]") for i, a in enumerate(answers)]
    if len(scored) < 2:
        notes["stackexchange_single_answer"] += 1
        return []
    scored.sort(key=lambda item: -item[1])
    return [RankedList(prompt, tuple(t for t, _ in scored), tuple(float(s) for _, s in scored))]


def _vote_scored_answer(answer: Any, where: Location, field: str) -> tuple[str, int]:
    if not isinstance(answer, dict):
        raise where.error(field, "expected an answer object")
    text = require(answer, "text", where, str, f"{field}.text")
    accepted = answer.get("accepted", answer.get("selected", False))
    if not isinstance(accepted, bool):
        raise where.error(f"{field}.accepted", f"expected true or false, got {shown(accepted)}")
    for key in ("pm_score", "upvotes", "score"):
        if key in answer:
            votes = require(answer, key, where, int, f"{field}.{key}")
            return text, votes if key == "pm_score" else vote_score(votes, accepted)
    raise where.error(f"{field}.upvotes", "required field is missing (or score / pm_score)")


# ----------------------------------------------------------------------------- detection


def _is_message_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict) \
        and "role" in value[0]


def _is_hh_text(value: Any) -> bool:
    return isinstance(value, str) and bool(HH_MARKER.search(value))


FORMAT_RULES: tuple[tuple[str, str, Callable[[dict[str, Any]], bool]], ...] = (
    ("stackexchange", "keys question + answers",
     lambda r: "question" in r and isinstance(r.get("answers"), list)),
    ("oasst", "keys replies + role + text",
     lambda r: {"replies", "role", "text"} <= r.keys()),
    ("sharegpt", "key conversations", lambda r: "conversations" in r),
    ("alpaca", "keys instruction + output (or chosen)",
     lambda r: "instruction" in r and ("output" in r or "chosen" in r)),
    ("kto", "key messages with a boolean label",
     lambda r: "messages" in r and isinstance(r.get("label"), bool)),
    ("chat", "key messages (no boolean label), or chosen/rejected message lists without prompt",
     lambda r: ("messages" in r and not isinstance(r.get("label"), bool))
     or (_is_message_list(r.get("chosen")) and "prompt" not in r)),
    ("alignlab", "key prompt", lambda r: "prompt" in r),
    ("hh", "chosen and rejected transcripts with Human:/Assistant: turns",
     lambda r: _is_hh_text(r.get("chosen")) and isinstance(r.get("rejected"), str)),
)


def detect_format(row: dict[str, Any], source: str) -> str:
    """The format whose rule in ``FORMAT_RULES`` matches the row's keys; 0 or 2+ matches → error."""
    return match_format_rules(row, source, FORMAT_RULES, "data format", "data.format")


def match_format_rules(row: dict[str, Any], source: str, rules: tuple, what: str,
                       setting: str) -> str:
    """The one ``(name, description, rule)`` of ``rules`` whose rule accepts ``row``; none or
    several is a DataSourceError telling the user to set ``setting``."""
    matches = [name for name, _, rule in rules if rule(row)]
    if len(matches) == 1:
        return matches[0]
    keys = sorted(row)
    names = ", ".join(name for name, _, _ in rules)
    if not matches:
        described = "; ".join(f"{name}: {text}" for name, text, _ in rules)
        raise DataSourceError(source, f"cannot detect the {what} from the keys {keys} "
                                      f"({described}); set {setting} to one of {names}")
    raise DataSourceError(source, f"the keys {keys} fit several formats ({', '.join(matches)}); "
                                  f"set {setting} to the one you mean")


READERS: dict[str, Reader] = {
    "alignlab": read_alignlab, "hh": read_hh, "chat": read_chat, "sharegpt": read_sharegpt,
    "alpaca": read_alpaca, "kto": read_kto, "oasst": read_oasst,
    "stackexchange": read_stackexchange,
}
