"""``alignlab redteam compare A B``: are two red-team runs different?

Reads both runs' ``attempts.jsonl`` and reports each run's attack success rate, the difference
(B − A) and its significance (:func:`alignlab.redteam.metrics.compare_runs`: the exact McNemar test
on the discordant pairs when the runs tried the same attacks — e.g. one attack file against a model
before and after training — else the pooled two-proportion z-test).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alignlab.data.sources import iter_jsonl
from alignlab.redteam.metrics import as_json, compare_runs


def read_attempts(folder: str | Path) -> list[dict[str, Any]]:
    """The attempt rows of a red-team run folder; an unreadable line is an error naming the file
    and line (a torn last line of a killed run included: resume the run first)."""
    path = Path(folder) / "attempts.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: not a red-team run folder")
    rows = []
    for raw in iter_jsonl(path):
        if raw.error is not None:
            raise raw.error
        rows.append(raw.data)
    return rows


def compare_folders(a: str | Path, b: str | Path, group: str | None = None) -> dict[str, Any]:
    """:func:`compare_runs` of two run folders (``group``: target, method or category)."""
    if group not in (None, "target", "method", "category"):
        raise ValueError(f"--group must be target, method or category, got {group!r}")
    result = as_json(compare_runs(read_attempts(a), read_attempts(b), group))
    return {"run_a": str(a), "run_b": str(b), **result}


def _asr(entry: dict) -> str:
    asr = entry["asr"]
    return "–" if asr is None else f"{asr:.3f} ({entry['successes']}/{entry['n']})"


def _p(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def comparison_markdown(result: dict[str, Any]) -> str:
    """The comparison as a short Markdown report (a table per group when grouped)."""
    lines = [f"A: {result['run_a']}", f"B: {result['run_b']}", "",
             "| group | ASR A | ASR B | B − A | test | p |", "|---|---|---|---|---|---|"]
    for name, entry in [("all", result)] + [(str(g.get(result_key(g))), g)
                                            for g in result.get("groups", [])]:
        paired = entry.get("paired")
        p = paired["p_mcnemar"] if paired else entry["p_z"]
        diff = entry["diff"]
        lines.append(f"| {name} | {_asr(entry['a'])} | {_asr(entry['b'])} | "
                     f"{'–' if diff is None else f'{diff:+.3f}'} | {entry['test']} | {_p(p)} |")
    return "\n".join(lines)


def result_key(group_entry: dict) -> str:
    """The grouping key of one per-group entry (the key that is not a comparison field)."""
    fields = {"a", "b", "diff", "z", "p_z", "test", "n_pairs", "paired", "run_a", "run_b"}
    return next(k for k in group_entry if k not in fields)
