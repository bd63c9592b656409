"""Errors for bad input records, and the counter used when the user asks to skip them."""

from __future__ import annotations

from dataclasses import dataclass, field


class RecordError(ValueError):
    """A record that cannot be read; names the file, the line (or row) and the field."""

    def __init__(self, source: str, line: int | None, field_name: str | None, problem: str):
        self.source, self.line, self.field_name, self.problem = source, line, field_name, problem
        where = source if line is None else f"{source}:{line}"
        what = f" field {field_name!r}:" if field_name else ""
        super().__init__(f"{where}:{what} {problem}")


@dataclass
class BadRecordLog:
    """Counts skipped records (``on_bad_record: skip``) and keeps the first few messages."""

    skipped: int = 0
    examples: list[str] = field(default_factory=list)
    keep: int = 20

    def add(self, error: RecordError) -> None:
        self.skipped += 1
        if len(self.examples) < self.keep:
            self.examples.append(str(error))


class RowError(RecordError):
    """A bad record addressed by row index (JSON lists, parquet, ``datasets``) rather than by line."""

    def __init__(self, source: str, line: int | None, field_name: str | None, problem: str):
        super().__init__(source, line, field_name, problem)
        what = f" field {field_name!r}:" if field_name else ""
        self.args = (f"{source} row {line}:{what} {problem}",)


class DataSourceError(RecordError):
    """A data source that cannot be used as a whole: missing file, unreadable dataset, undetectable
    format, or a record kind that cannot be converted to the kind a stage needs."""

    def __init__(self, source: str, problem: str):
        super().__init__(source, None, None, problem)


@dataclass(frozen=True)
class Location:
    """Where a raw row came from: a 1-based ``line`` of a JSONL file, or a 0-based ``row`` index."""

    source: str
    index: int
    unit: str = "line"

    def error(self, field_name: str | None, problem: str) -> RecordError:
        """A RecordError (or RowError) pointing at this row and ``field_name``."""
        cls = RecordError if self.unit == "line" else RowError
        return cls(self.source, self.index, field_name, problem)
