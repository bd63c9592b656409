"""Shared by the benchmark scripts: write a generated table between two markers of a markdown file,
and run a generated recipe."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml


def replace_block(text: str, marker: str, body: str) -> str:
    """Replace what lies between ``<!-- marker:start -->`` and ``<!-- marker:end -->``."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    head, rest = text.split(start)
    _, tail = rest.split(end)
    return f"{head}{start}\n{body.strip()}\n{end}{tail}"


def write_block(path: Path, marker: str, body: str) -> None:
    """:func:`replace_block` on the file at ``path``."""
    path.write_text(replace_block(path.read_text(), marker, body))


def run_recipe(path: Path, recipe: dict[str, Any]) -> None:
    """Write ``recipe`` to ``path`` (YAML) and run it with ``alignlab run`` (finished stages, those
    with a DONE marker, are skipped); a failing stage raises."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False, width=110))
    subprocess.run([sys.executable, "-m", "alignlab.cli", "run", str(path)], check=True)
