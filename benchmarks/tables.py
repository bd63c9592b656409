"""Shared by the benchmark scripts: write a generated table between two markers of a markdown file."""

from __future__ import annotations

from pathlib import Path


def replace_block(text: str, marker: str, body: str) -> str:
    """Replace what lies between ``<!-- marker:start -->`` and ``<!-- marker:end -->``."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    head, rest = text.split(start)
    _, tail = rest.split(end)
    return f"{head}{start}\n{body.strip()}\n{end}{tail}"


def write_block(path: Path, marker: str, body: str) -> None:
    """:func:`replace_block` on the file at ``path``."""
    path.write_text(replace_block(path.read_text(), marker, body))
