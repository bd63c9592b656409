"""Load canonical records of the kind a stage needs from any supported source and format.

``load_records(settings, kind)`` reads raw rows (:mod:`alignlab.data.sources`), maps each with the
format's reader (:mod:`alignlab.data.readers`), and converts records to ``kind``:

==============  ==============  ===================================================================
have            need            conversion
==============  ==============  ===================================================================
pair            conversation    prompt + chosen as the assistant turn (soft labels are ignored)
pair            binary          two records: chosen desirable, rejected undesirable
ranked          pair            every (better, worse) pair of responses; equal scores are skipped
                                and counted (``ranked_tie_skipped``)
ranked          conversation    prompt + the best-scored response
==============  ==============  ===================================================================

Any other combination (e.g. conversations for a preference stage) is a DataSourceError that says
what the data holds and what the stage needs. Nothing is dropped silently: bad rows either raise
(``on_bad_record: error``, the first RecordError) or are counted in ``LoadedData.bad`` (``skip``);
quirks a reader handles are counted in ``LoadedData.notes``. ``limit`` caps the number of records
returned (after conversion); reading stops once it is reached. An empty source (no rows at all), and
one whose every row is bad under ``skip``, is a DataSourceError: a stage never starts on no data.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from alignlab.config import DataSettings
from alignlab.data.errors import BadRecordLog, DataSourceError, Location, RecordError
from alignlab.data.readers import READERS, Item, PromptOnly, detect_format
from alignlab.data.records import (
    KIND_OF,
    BinaryFeedback,
    Conversation,
    Message,
    Messages,
    PreferencePair,
    RankedList,
    Record,
)
from alignlab.data.sources import RawRow, iter_rows

KINDS = ("conversation", "pair", "binary", "ranked")

AnyReader = Callable[[dict[str, Any], Location, Counter], list[Any]]
Detector = Callable[[dict[str, Any], str], str]


@dataclass
class LoadedData:
    """Records of one kind (or prompts, for :func:`load_prompt_data`) with what was skipped and why."""

    records: list[Any]
    bad: BadRecordLog
    source: str
    format: str = ""
    notes: dict[str, int] = field(default_factory=dict)
    rows_read: int = 0


# ----------------------------------------------------------------------------- conversions


def pair_to_conversation(pair: PreferencePair, notes: Counter) -> list[Record]:
    """The prompt followed by the chosen reply as an assistant turn."""
    return [Conversation(pair.prompt + (Message("assistant", pair.chosen),))]


def pair_to_binary(pair: PreferencePair, notes: Counter) -> list[Record]:
    """Chosen → desirable, rejected → undesirable (KTO-style unpaired feedback)."""
    return [BinaryFeedback(pair.prompt, pair.chosen, True),
            BinaryFeedback(pair.prompt, pair.rejected, False)]


def ranked_to_pairs(ranked: RankedList, notes: Counter) -> list[Record]:
    """Every pair (i, j) with score_i > score_j as (chosen = i, rejected = j); ties are counted."""
    scored = list(zip(ranked.responses, ranked.scores or [-float(i) for i in
                                                          range(len(ranked.responses))]))
    scored.sort(key=lambda item: -item[1])
    pairs: list[Record] = []
    for (better, s_better), (worse, s_worse) in itertools.combinations(scored, 2):
        if s_better == s_worse:
            notes["ranked_tie_skipped"] += 1
            continue
        pairs.append(PreferencePair(ranked.prompt, better, worse))
    return pairs


def ranked_to_conversation(ranked: RankedList, notes: Counter) -> list[Record]:
    """The prompt followed by the best-scored response (the first one on equal scores)."""
    scores = ranked.scores or [-float(i) for i in range(len(ranked.responses))]
    best = max(range(len(ranked.responses)), key=lambda i: (scores[i], -i))
    return [Conversation(ranked.prompt + (Message("assistant", ranked.responses[best]),))]


CONVERSIONS: dict[tuple[str, str], Callable[[Any, Counter], list[Record]]] = {
    ("pair", "conversation"): pair_to_conversation,
    ("pair", "binary"): pair_to_binary,
    ("ranked", "pair"): ranked_to_pairs,
    ("ranked", "conversation"): ranked_to_conversation,
}


def convert(item: Item, kind: str, where: Location, notes: Counter) -> list[Record]:
    """``item`` as records of ``kind`` (see the module table); impossible conversions raise."""
    if isinstance(item, PromptOnly):
        raise where.error(None, f"a prompt-only record has no completion, so it cannot be "
                                f"{kind} data (prompt-only files serve generation prompts)")
    have = KIND_OF[type(item)]
    if have == kind:
        return [item]
    if (have, kind) not in CONVERSIONS:
        known = ", ".join(f"{a} → {b}" for a, b in CONVERSIONS)
        raise DataSourceError(where.source, f"the data holds {have} records but this stage needs "
                                            f"{kind} records; known conversions: {known}")
    return CONVERSIONS[(have, kind)](item, notes)


# ----------------------------------------------------------------------------- reading


def open_rows(settings: DataSettings, readers: Mapping[str, AnyReader] = READERS,
              detect: Detector = detect_format, rows: Iterator[RawRow] | None = None
              ) -> tuple[str, AnyReader, Iterator[RawRow]]:
    """The format name, its reader and the row iterator (auto-detected from the first good row).

    ``readers`` maps format names to readers and ``detect`` picks one from a row (default: the
    record formats of :mod:`alignlab.data.readers`; :mod:`alignlab.data.step_readers` passes its
    own). ``rows``: rows a caller has opened itself (e.g. a CSV file), instead of
    ``settings.path``'s."""
    rows = iter_rows(settings.path, settings.split) if rows is None else rows
    if settings.format != "auto":
        if settings.format not in readers:
            raise DataSourceError(settings.path, f"unknown format {settings.format!r}; expected "
                                                 f"one of {sorted(readers)}")
        return settings.format, readers[settings.format], rows
    held: list[RawRow] = []
    for raw in rows:
        held.append(raw)
        if raw.data is not None:
            fmt = detect(raw.data, raw.where.source)
            return fmt, readers[fmt], itertools.chain(held, rows)
    if not held:
        raise DataSourceError(settings.path, EMPTY_SOURCE)
    if settings.on_bad_record == "error":
        raise held[0].error
    raise _all_bad(settings.path, len(held), str(held[0].error))


EMPTY_SOURCE = "the source is empty (no records), so there is nothing to read"


def _all_bad(path: str, count: int, first: str) -> DataSourceError:
    return DataSourceError(path, f"no usable records: all {count} rows are bad and were skipped "
                                 f"(on_bad_record: skip); the first: {first}")


def read_items(settings: DataSettings, to_records: Callable[[Any, Location, Counter], list[Any]],
               readers: Mapping[str, AnyReader] = READERS, detect: Detector = detect_format,
               rows: Iterator[RawRow] | None = None) -> LoadedData:
    """Read every row, map it with ``to_records``, apply ``on_bad_record``, ``offset`` and ``limit``
    (``readers``, ``detect`` and ``rows`` as in :func:`open_rows`)."""
    fmt, reader, rows = open_rows(settings, readers, detect, rows)
    out = LoadedData([], BadRecordLog(), settings.path, fmt)
    notes: Counter = Counter()
    for raw in rows:
        out.rows_read += 1
        row_notes: Counter = Counter()
        try:
            made = _read_row(raw, reader, to_records, row_notes)
        except DataSourceError:
            raise
        except RecordError as err:
            if settings.on_bad_record == "error":
                raise
            out.bad.add(err)
            continue
        notes.update(row_notes)
        out.records.extend(made)
        if len(out.records) > settings.offset and settings.limit is not None \
                and len(out.records) - settings.offset >= settings.limit:
            break
    if out.rows_read == 0:
        raise DataSourceError(settings.path, EMPTY_SOURCE)
    if not out.records and out.bad.skipped == out.rows_read:
        raise _all_bad(settings.path, out.bad.skipped, out.bad.examples[0])
    out.records = out.records[settings.offset:]
    if settings.limit is not None:
        del out.records[settings.limit:]
    out.notes = {k: v for k, v in sorted(notes.items()) if v}
    return out


def _read_row(raw: RawRow, reader: AnyReader, to_records: Callable, notes: Counter) -> list[Any]:
    if raw.error is not None:
        raise raw.error
    items = reader(raw.data, raw.where, notes)
    return [made for item in items for made in to_records(item, raw.where, notes)]


def load_records(settings: DataSettings, kind: str) -> LoadedData:
    """Records of ``kind`` (conversation | pair | binary | ranked) from ``settings``' source."""
    if kind not in KINDS:
        raise ValueError(f"unknown record kind {kind!r}; expected one of {KINDS}")
    return read_items(settings, lambda item, where, notes: convert(item, kind, where, notes))


# ----------------------------------------------------------------------------- prompts


def prompt_of(item: Item) -> Messages:
    """The prompt of any record; a conversation's prompt is everything before its last assistant turn."""
    if isinstance(item, Conversation):
        last = max(i for i, m in enumerate(item.messages) if m.role == "assistant")
        return item.messages[:last]
    return item.prompt


def load_prompt_data(settings: DataSettings) -> LoadedData:
    """Like :func:`load_records` but ``records`` holds one prompt (Messages) per record."""
    return read_items(settings, lambda item, where, notes: [prompt_of(item)])


def load_prompts(settings: DataSettings) -> list[Messages]:
    """One prompt per record, from any format (prompt-only records included)."""
    return load_prompt_data(settings).records
