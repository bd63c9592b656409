"""Attack files: the prompts a red-teaming run sends to a target model, as :class:`Attack` records.

Formats (``AttackDataSettings.format``; ``auto`` looks at the first readable row's keys):

- ``redteam_attempts``: Anthropic's red-team attempts (Ganguli et al. 2022, "Red Teaming Language
  Models to Reduce Harms", arXiv 2209.07858): ``{"transcript": "\\n\\nHuman: …\\n\\nAssistant: …",
  "rating": 0-4 (the red-teamer's own success rating), "task_description", "tags": [str] | null,
  "min_harmlessness_score_transcript", "model_type", "num_params", "is_upworthy", …}``. The
  transcript is split by the HH parser (:func:`alignlab.data.readers.parse_hh_transcript`). With
  ``turns: first`` the attack is the first Human turn (after any text before the first marker, kept
  as a system turn); with ``turns: all_human`` it is the conversation up to and including the last
  Human turn (the Assistant reply after it is dropped). ``category`` is the first tag; every other
  field goes to ``meta`` (``rating`` as a float). The published file is one JSON array although
  it is named ``.jsonl``; such a file is read as that array (rows located by 0-based index; counted
  as ``jsonl_holds_json_array``).
- ``harmbench``: HarmBench behaviour lists (Mazeika et al. 2024, "HarmBench: A Standardized
  Evaluation Framework for Automated Red Teaming and Robust Refusal", arXiv 2402.04249), as CSV (the
  published ``harmbench_behaviors_*.csv``) or JSONL rows ``{"Behavior", "FunctionalCategory",
  "SemanticCategory", "Tags", "ContextString", "BehaviorID"}``. The prompt is the behaviour; for a
  contextual behaviour (non-blank ``ContextString``) it is the context, a blank line, then the
  behaviour. ``category`` is ``SemanticCategory`` (else ``FunctionalCategory``), ``id`` the
  ``BehaviorID``; ``Tags`` (comma-separated text or a list) goes to ``meta["tags"]``.
- ``prompts``: ``{"prompt": text or messages, "category"?: str, "id"?: str}``; other keys go to
  ``meta``.
- every record format of :mod:`alignlab.data.readers` (``hh``, ``alignlab``, ``chat``, …): one
  attack per record, its prompt as :func:`alignlab.data.loading.load_prompt_data` gives it (so HH
  harmless-base, the prompts of red-team conversations, is an attack file).

An attack's ``id`` is the file's id (``id`` / ``BehaviorID``) or else :func:`attack_id`, a hash of
the red-team transcript or of the prompt, so ids are the same on every run. Malformed rows (a
transcript without a Human turn, an empty behaviour, a non-string category, a rating that is not a
number, bad JSON, non-UTF-8 bytes, …) are RecordErrors naming file, line and field;
``on_bad_record: skip`` skips and counts them like every other reader. Duplicate ids are kept and
counted (``attack_duplicate_id``).

Local ``.csv`` files are read with :func:`iter_csv` (records located by the line they start on);
every other source goes through :func:`alignlab.data.loading.read_items`.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from alignlab.config import DataSettings
from alignlab.data.errors import DataSourceError, Location
from alignlab.data.loading import AnyReader, LoadedData, prompt_of, read_items
from alignlab.data.readers import (
    FORMAT_RULES,
    READERS,
    check_prompt,
    match_format_rules,
    parse_hh_transcript,
    parse_prompt,
    require,
)
from alignlab.data.records import Message, Messages, messages_to_list
from alignlab.data.sources import RawRow, iter_json
from alignlab.data.step_readers import text_id

AttackFormat = Literal["auto", "redteam_attempts", "harmbench", "prompts", "alignlab", "hh", "chat",
                       "sharegpt", "alpaca", "kto", "oasst", "stackexchange"]
RATING_RANGE = (0.0, 4.0)


@dataclass(frozen=True)
class Attack:
    """One attack: the conversation sent to the target (ending with a user turn) and its labels.

    ``source`` is ``"file"`` for attacks read from a file, or the name of the method that generated
    them; ``meta`` holds the extra fields kept for the report (rating, task_description, tags, …).
    """

    id: str
    prompt: Messages
    category: str | None = None
    source: str = "file"
    meta: dict[str, Any] = field(default_factory=dict, hash=False)


class AttackDataSettings(DataSettings):
    """A source of attacks: :class:`DataSettings` with the attack formats and ``turns`` (how much
    of a red-team transcript is the attack: ``first`` Human turn, or ``all_human`` turns)."""

    format: AttackFormat = "auto"  # type: ignore[assignment]
    turns: Literal["first", "all_human"] = "first"


def attack_id(text: str | Messages) -> str:
    """A stable id: the hash (:func:`alignlab.data.step_readers.text_id`) of a text or a prompt."""
    if not isinstance(text, str):
        text = json.dumps(messages_to_list(text), ensure_ascii=False)
    return text_id(text)


def attack_to_dict(attack: Attack) -> dict[str, Any]:
    """The JSON form ``{"id", "prompt": [messages], "category", "source", "meta"}``."""
    return {"id": attack.id, "prompt": messages_to_list(attack.prompt),
            "category": attack.category, "source": attack.source, "meta": dict(attack.meta)}


# ----------------------------------------------------------------------------- field helpers


def _optional_text(row: dict[str, Any], key: str, where: Location) -> str | None:
    """``row[key]`` as a string, or None when absent, null or blank; other types are an error."""
    value = row.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise where.error(key, f"expected a string, got {type(value).__name__}")
    return value if value.strip() else None


def _file_id(row: dict[str, Any], key: str, where: Location) -> str | None:
    """The row's own id (a non-blank string or an integer), or None when it has none."""
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise where.error(key, f"expected a string or an integer, got {type(value).__name__}")
    return str(value)


def _rating(row: dict[str, Any], where: Location) -> float | None:
    """The red-teamer's success rating: absent, or a finite number in 0-4."""
    if row.get("rating") is None:
        return None
    value = require(row, "rating", where, (int, float))
    low, high = RATING_RANGE
    if not math.isfinite(value) or not low <= value <= high:
        raise where.error("rating", f"expected a success rating from {low:g} to {high:g}, "
                                    f"got {value}")
    return float(value)


def _tag_list(value: Any, where: Location, field_name: str) -> list[str]:
    """Tags as a list: null → [], comma-separated text → its parts, a list → its strings."""
    if value is None:
        return []
    if isinstance(value, str):
        return [tag.strip() for tag in value.split(",") if tag.strip()]
    if not isinstance(value, list):
        raise where.error(field_name, f"expected a list of strings, got {type(value).__name__}")
    for i, tag in enumerate(value):
        if not isinstance(tag, str):
            raise where.error(f"{field_name}[{i}]", f"expected a string, got {type(tag).__name__}")
    return list(value)


def _check_text(prompt: Messages, where: Location, field_name: str, what: str) -> None:
    if not prompt[-1].content.strip():
        raise where.error(field_name, f"{what} is empty")


# ----------------------------------------------------------------------------- readers


def read_redteam_attempt(row: dict[str, Any], where: Location, notes: Counter,
                         turns: str = "first") -> list[Attack]:
    """One attack from a red-team attempt (Ganguli et al. 2022; layout in the module docstring).

    HH transcript quirks are counted in ``notes`` as :func:`alignlab.data.readers.read_hh` does.
    A transcript without a Human turn, an empty attack turn, a rating that is not a number in 0-4
    and tags that are not a list of strings are RecordErrors."""
    transcript = require(row, "transcript", where, str)
    messages, quirks = parse_hh_transcript(transcript, where, "transcript")
    human = [i for i, m in enumerate(messages) if m.role == "user"]
    if not human:
        raise where.error("transcript", "the transcript has no Human turn to use as the attack")
    if turns == "first":
        first = human[0]
        prompt = tuple(m for m in messages[:first] if m.role == "system") + (messages[first],)
        _check_text(prompt, where, "transcript", "the first Human turn")
    else:
        prompt = messages[:human[-1] + 1]
        _check_text(prompt, where, "transcript", "the last Human turn")
    rating = _rating(row, where)
    tags = _tag_list(row.get("tags"), where, "tags")
    _optional_text(row, "task_description", where)
    notes.update(quirks)
    meta = {k: v for k, v in row.items() if k not in ("transcript", "id")}
    if rating is not None:
        meta["rating"] = rating
    return [Attack(_file_id(row, "id", where) or attack_id(transcript), prompt,
                   tags[0] if tags else None, "file", meta)]


def read_harmbench(row: dict[str, Any], where: Location, notes: Counter) -> list[Attack]:
    """One attack from a HarmBench behaviour row (Mazeika et al. 2024; module docstring).

    An empty ``Behavior`` and non-string categories or context are RecordErrors; a row without
    ``BehaviorID`` gets :func:`attack_id` of its prompt (counted: ``harmbench_id_from_hash``)."""
    behavior = require(row, "Behavior", where, str)
    if not behavior.strip():
        raise where.error("Behavior", "the behaviour is empty")
    context = _optional_text(row, "ContextString", where)
    semantic = _optional_text(row, "SemanticCategory", where)
    functional = _optional_text(row, "FunctionalCategory", where)
    tags = _tag_list(row.get("Tags"), where, "Tags")
    prompt: Messages = (Message("user", f"{context}\n\n{behavior}" if context else behavior),)
    behavior_id = _file_id(row, "BehaviorID", where)
    if behavior_id is None:
        notes["harmbench_id_from_hash"] += 1
    meta = {k: v for k, v in row.items() if k not in ("Behavior", "ContextString", "BehaviorID",
                                                      "Tags")}
    meta.update(tags=tags, contextual=context is not None)
    return [Attack(behavior_id or attack_id(prompt), prompt, semantic or functional, "file", meta)]


def read_prompt_row(row: dict[str, Any], where: Location, notes: Counter) -> list[Attack]:
    """One attack from ``{"prompt": text or messages, "category"?, "id"?}``; other keys → meta."""
    prompt = parse_prompt(require(row, "prompt", where, (str, list)), where, "prompt")
    _check_text(prompt, where, "prompt", "the prompt's last user turn")
    category = _optional_text(row, "category", where)
    meta = {k: v for k, v in row.items() if k not in ("prompt", "category", "id")}
    return [Attack(_file_id(row, "id", where) or attack_id(prompt), prompt, category, "file", meta)]


def record_prompt_reader(reader: AnyReader) -> AnyReader:
    """A reader of one of the project's record formats, turned into an attack reader: each record
    gives one attack whose prompt is the record's prompt (:func:`alignlab.data.loading.prompt_of`)."""
    def read(row: dict[str, Any], where: Location, notes: Counter) -> list[Attack]:
        attacks = []
        for item in reader(row, where, notes):
            prompt = prompt_of(item)
            check_prompt(prompt, where, "prompt")
            attacks.append(Attack(attack_id(prompt), prompt))
        return attacks
    return read


def attack_readers(turns: str = "first") -> dict[str, AnyReader]:
    """Every attack format's reader (``turns`` as in :class:`AttackDataSettings`)."""
    readers: dict[str, AnyReader] = {
        "redteam_attempts": lambda row, where, notes: read_redteam_attempt(row, where, notes, turns),
        "harmbench": read_harmbench,
        "prompts": read_prompt_row,
    }
    readers.update({name: record_prompt_reader(reader) for name, reader in READERS.items()})
    return readers


# ----------------------------------------------------------------------------- detection


RECORD_KEYS = frozenset({"chosen", "rejected", "completion", "responses", "messages"})


def _plain_prompt(row: dict[str, Any]) -> bool:
    return "prompt" in row and not RECORD_KEYS & row.keys()


ATTACK_RULES: tuple[tuple[str, str, Callable[[dict[str, Any]], bool]], ...] = (
    ("redteam_attempts", "key transcript", lambda r: "transcript" in r),
    ("harmbench", "key Behavior", lambda r: "Behavior" in r),
    ("prompts", "key prompt without chosen/rejected/completion/responses/messages", _plain_prompt),
) + tuple(
    ("alignlab", "key prompt with chosen/rejected/completion/responses",
     lambda r: "prompt" in r and not _plain_prompt(r)) if name == "alignlab" else (name, text, rule)
    for name, text, rule in FORMAT_RULES
)


def detect_attack_format(row: dict[str, Any], source: str) -> str:
    """The attack format whose rule in ``ATTACK_RULES`` fits the row's keys (0 or 2+ → error)."""
    return match_format_rules(row, source, ATTACK_RULES, "attack file format", "format")


# ----------------------------------------------------------------------------- sources


def iter_csv(path: Path) -> Iterator[RawRow]:
    """Rows of a CSV file with a header line, each located by the 1-based line its record starts
    on (a quoted field may span lines). Blank lines are skipped; a record with non-UTF-8 bytes or
    more fields than the header, or that breaks the quoting rules (an unclosed quote, text after a
    closing quote), is a RawRow carrying a RecordError; missing trailing fields are
    null. A UTF-8 byte-order mark is ignored."""
    source = str(path)
    with open(path, "rb") as fh:
        lines = (_decode(line, number == 0) for number, line in enumerate(fh))
        reader = csv.reader(lines, strict=True)  # an unclosed quote must not swallow the file
        header: list[str] | None = None
        start = 1
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                where = Location(source, start, "line")
                start = reader.line_num + 1
                yield RawRow(where, None, where.error(None, f"not a valid CSV record ({exc})"))
                continue
            where, start = Location(source, start, "line"), reader.line_num + 1
            if not fields:
                continue
            if not _is_utf8(fields):
                if header is None:
                    raise DataSourceError(source, "the CSV header is not valid UTF-8 text")
                yield RawRow(where, None, where.error(None, "not valid UTF-8 text"))
            elif header is None:
                header = [name.strip() for name in fields]
            elif len(fields) > len(header):
                yield RawRow(where, None, where.error(
                    None, f"{len(fields)} fields, but the header names {len(header)}"))
            else:
                yield RawRow(where, dict(zip(header, fields + [None] * (len(header) - len(fields)))))


def _decode(line: bytes, first: bool) -> str:
    text = line.decode("utf-8", errors="surrogateescape")
    return text.removeprefix("\ufeff") if first else text


def _is_utf8(fields: list[str]) -> bool:
    try:
        "".join(fields).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _special_rows(path: str) -> tuple[Iterator[RawRow], str | None] | None:
    """Rows of the local files :func:`alignlab.data.sources.iter_rows` does not read as attack
    files need (CSV, a ``.jsonl`` holding one JSON array) with the note to count, else None."""
    local = Path(path).expanduser()
    if not local.is_file():
        return None
    suffix = local.suffix.lower()
    if suffix == ".csv":
        return iter_csv(local), None
    if suffix == ".jsonl" and _starts_with_array(local):
        return iter_json(local), "jsonl_holds_json_array"
    return None


def _starts_with_array(path: Path) -> bool:
    with open(path, "rb") as fh:
        while chunk := fh.read(4096):
            head = chunk.lstrip()
            if head:
                return head.removeprefix(b"\xef\xbb\xbf")[:1] == b"["
    return False


def load_attacks(settings: DataSettings) -> LoadedData:
    """Every attack of ``settings``' source (``records``: list of :class:`Attack`, in file order),
    with the skipped rows (``bad``) and counted quirks (``notes``). ``settings`` is an
    :class:`AttackDataSettings` (a plain :class:`DataSettings` reads with ``turns: first``)."""
    readers = attack_readers(getattr(settings, "turns", "first"))
    if settings.format not in ("auto", *readers):
        raise DataSourceError(settings.path, f"unknown attack format {settings.format!r}; "
                                             f"expected one of {sorted(readers)}")
    rows, note = _special_rows(settings.path) or (None, None)
    data = read_items(settings, lambda item, where, notes: [item], readers, detect_attack_format,
                      rows)
    if note:
        data.notes[note] = 1
    duplicates = sum(n - 1 for n in Counter(a.id for a in data.records).values())
    if duplicates:
        data.notes["attack_duplicate_id"] = duplicates
    data.notes = dict(sorted(data.notes.items()))
    return data
