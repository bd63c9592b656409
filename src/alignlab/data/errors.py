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
