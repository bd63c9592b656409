"""Raw rows with their location, from a local file or a ``datasets`` dataset.

``iter_rows(path, split)`` picks the source from ``path``:

- ``*.jsonl``: one JSON object per line; locations are 1-based line numbers, blank lines are skipped.
  A line that is not valid JSON, or not an object, is yielded as a ``RawRow`` carrying a RecordError
  (so ``on_bad_record: skip`` can count it) rather than raised from inside the generator. A UTF-8
  byte-order mark at the start of the file is ignored (as in ``*.json`` files).
- ``*.json``: a list of objects, or an object holding that list under its single key; locations are
  0-based row indices (``data[i]``).
- ``*.parquet``: read with pyarrow batch by batch; 0-based row indices.
- a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``: ``load_from_disk``
  (``split`` picks the member of a DatasetDict).
- anything else (a hub name such as ``Anthropic/hh-rlhf``, or a local folder of data files that
  ``datasets`` reads without a script): ``datasets.load_dataset(path, split=split)``.

A path that looks local (absolute, ``./``, ``../``, ``~``, or a known file suffix) but does not exist
is a DataSourceError naming it; it is never sent to the hub.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignlab.data.errors import DataSourceError, Location, RecordError

FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


@dataclass(frozen=True)
class RawRow:
    """One raw row: its location and either the decoded object or the error that replaced it."""

    where: Location
    data: dict[str, Any] | None
    error: RecordError | None = None


def iter_rows(path: str, split: str = "train") -> Iterator[RawRow]:
    """Every raw row of the source at ``path`` (see the module docstring for the rules)."""
    local = Path(path).expanduser()
    if local.is_file():
        return _iter_file(local)
    if local.is_dir() and _is_saved_dataset(local):
        return iter_saved_dataset(local, split)
    if not local.exists() and _looks_local(path):
        raise DataSourceError(path, "data file not found")
    return iter_hub_dataset(path, split)


def _iter_file(path: Path) -> Iterator[RawRow]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return iter_jsonl(path)
    if suffix == ".json":
        return iter_json(path)
    if suffix == ".parquet":
        return iter_parquet(path)
    raise DataSourceError(str(path), f"unsupported file type {suffix!r}; use one of {FILE_SUFFIXES}")


def _looks_local(path: str) -> bool:
    starts = ("/", "./", "../", "~", ".\\", "..\\")
    return path.startswith(starts) or path.lower().endswith(FILE_SUFFIXES)


def _is_saved_dataset(folder: Path) -> bool:
    """A ``save_to_disk`` folder: a Dataset (state.json) or a DatasetDict (dataset_dict.json)."""
    return (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file()


def iter_jsonl(path: Path) -> Iterator[RawRow]:
    """Rows of a JSON-lines file, located by 1-based line number."""
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            yield _decode_line(str(path), number, line)


def _decode_line(source: str, number: int, line: bytes) -> RawRow:
    where = Location(source, number, "line")
    try:
        text = line.decode("utf-8")
        data = json.loads(text.removeprefix("\ufeff") if number == 1 else text)
    except UnicodeDecodeError:
        return RawRow(where, None, where.error(None, "not valid UTF-8 text"))
    except json.JSONDecodeError as exc:
        problem = exc.msg.removesuffix(" at")  # json says "Invalid control character at"
        return RawRow(where, None, where.error(None, f"not valid JSON ({problem} at column {exc.colno})"))
    if not isinstance(data, dict):
        return RawRow(where, None, where.error(None, f"expected a JSON object, got {_kind(data)}"))
    return RawRow(where, data)


def iter_json(path: Path) -> Iterator[RawRow]:
    """Rows of a JSON file holding a list of objects (or ``{"key": [objects]}``), by 0-based index."""
    source = str(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise DataSourceError(source, f"not valid UTF-8 text (line {line})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataSourceError(source, f"not valid JSON: {exc.msg} at line {exc.lineno}") from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))
    if not isinstance(data, list):
        raise DataSourceError(source, "expected a list of objects (or an object with one key "
                                      f"holding that list), got {_kind(data)}")
    return _rows_from_sequence(source, data)


def _rows_from_sequence(source: str, rows: Iterable[Any]) -> Iterator[RawRow]:
    for index, data in enumerate(rows):
        where = Location(source, index, "row")
        if isinstance(data, dict):
            yield RawRow(where, data)
        else:
            yield RawRow(where, None, where.error(None, f"expected an object, got {_kind(data)}"))


def iter_parquet(path: Path) -> Iterator[RawRow]:
    """Rows of a parquet file (read batch by batch with pyarrow), by 0-based index."""
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001  (pyarrow raises several types for unreadable files)
        raise DataSourceError(str(path), f"not a readable parquet file: {exc}") from None
    rows = (row for batch in table.iter_batches(batch_size=1024) for row in batch.to_pylist())
    return _rows_from_sequence(str(path), rows)


def iter_saved_dataset(folder: Path, split: str) -> Iterator[RawRow]:
    """Rows of a ``save_to_disk`` folder; ``split`` selects the member of a DatasetDict."""
    import datasets

    loaded = datasets.load_from_disk(str(folder))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataSourceError(str(folder), f"no split {split!r}; available: {sorted(loaded)}")
        loaded = loaded[split]
    return _rows_from_sequence(f"{folder}[{split}]", iter(loaded))


def iter_hub_dataset(name: str, split: str) -> Iterator[RawRow]:
    """Rows of ``datasets.load_dataset(name, split=split)`` (a hub name or a script-free local folder)."""
    import datasets

    try:
        loaded = datasets.load_dataset(name, split=split)
    except Exception as exc:  # noqa: BLE001  (network, bad split, unknown name: one clear message)
        problem = f"could not load dataset (split {split!r}): {type(exc).__name__}: {exc}"
        raise DataSourceError(name, problem) from None
    return _rows_from_sequence(f"{name}[{split}]", iter(loaded))


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", dict: "an object", bool: "a boolean",
            type(None): "null"}.get(type(value), type(value).__name__)
