"""Reports over several evaluated models: ``report.json``, ``report.md`` (table + plot), ``report.png``.

``results`` maps a model (or stage) name to its metrics, ``{metric: Stat or {"mean", "se", "n"}}`` —
exactly what :func:`alignlab.eval.run.run_eval` returns and writes to ``metrics.json``. Every number in
the markdown table is the one in ``report.json``, printed as ``mean ± se``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from alignlab.config import StageConfig
from alignlab.eval.stats import Stat, format_stat, paired_difference, z_score


class ReportConfig(StageConfig):
    """Merge several evaluations into one report (report.md, report.json, a PNG plot)."""

    stage: Literal["report"] = "report"
    inputs: dict[str, str]
    title: str = "alignlab report"
    compare: list[tuple[str, str]] = Field(default_factory=list)
    out: str


PLOT_METRICS = ("gold_reward", "harmless_rate")
Results = Mapping[str, Mapping[str, Any]]


def as_stats(results: Results) -> dict[str, dict[str, Stat]]:
    """Normalise ``results`` so every metric is a :class:`Stat` (dicts are converted)."""
    out: dict[str, dict[str, Stat]] = {}
    for model, metrics in results.items():
        out[model] = {}
        for name, value in metrics.items():
            if isinstance(value, Stat):
                out[model][name] = value
            elif isinstance(value, Mapping) and {"mean", "se", "n"} <= set(value):
                out[model][name] = Stat.from_dict(value)
    return out


def metric_names(stats: Mapping[str, Mapping[str, Stat]]) -> list[str]:
    """Every metric that appears for any model, in first-seen order."""
    names: list[str] = []
    for metrics in stats.values():
        names.extend(m for m in metrics if m not in names)
    return names


def write_report(results: Results, out_dir: str | Path, title: str = "alignlab report",
                 notes: str | None = None) -> dict[str, Path]:
    """Write ``report.json``, ``report.png`` and ``report.md`` into ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stats = as_stats(results)
    payload = {"title": title, "notes": notes,
               "results": {m: {k: s.to_dict() for k, s in ms.items()} for m, ms in stats.items()}}
    paths = {"json": out / "report.json", "png": out / "report.png", "md": out / "report.md"}
    paths["json"].write_text(json.dumps(payload, indent=2))
    plot_metrics(stats, paths["png"], title)
    paths["md"].write_text(markdown_report(stats, title, notes, image=paths["png"].name))
    return paths


def markdown_table(stats: Mapping[str, Mapping[str, Stat]]) -> str:
    """A model × metric table of ``mean ± se`` (``—`` where a model lacks a metric)."""
    names = metric_names(stats)
    lines = ["| model | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for model, metrics in stats.items():
        cells = [format_stat(metrics[n]) if n in metrics else "—" for n in names]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_report(stats: Mapping[str, Mapping[str, Stat]], title: str, notes: str | None,
                    image: str | None) -> str:
    """The whole ``report.md``: title, notes, the table, the embedded plot."""
    parts = [f"# {title}", ""]
    if notes:
        parts += [notes.strip(), ""]
    parts += [markdown_table(stats), "", "Cells are mean ± standard error (n in report.json)."]
    if image:
        parts += ["", f"![{title}]({image})", "", "Error bars: ±2 standard errors."]
    return "\n".join(parts) + "\n"


def plot_metrics(stats: Mapping[str, Mapping[str, Stat]], path: Path, title: str) -> Path:
    """Bar-with-error-bar panels (±2 se) of gold reward and harmless rate per model (Agg backend).

    Falls back to the first two metrics present when neither of those was measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = metric_names(stats)
    panels = [m for m in PLOT_METRICS if m in names] or names[:2]
    models = list(stats)
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4 + 1.2 * len(models), 3.6),
                             squeeze=False)
    for ax, metric in zip(axes[0], panels):
        _plot_panel(ax, models, [stats[m].get(metric) for m in models], metric)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_panel(ax, models: list[str], values: list[Stat | None], metric: str) -> None:
    xs = list(range(len(models)))
    means = [_finite(v.mean) if v else 0.0 for v in values]
    errs = [2 * _finite(v.se) if v else 0.0 for v in values]
    ax.errorbar(xs, means, yerr=errs, fmt="o-", capsize=4)
    ax.set_xticks(xs)
    ax.set_xticklabels(models, rotation=20, ha="right")
    ax.set_title(metric)
    ax.grid(alpha=0.3)


def _finite(x: float) -> float:
    return 0.0 if x is None or math.isnan(x) else float(x)


def print_table(results: Results, title: str = "evaluation") -> None:
    """Print the model × metric table to the terminal with rich."""
    from rich.console import Console
    from rich.table import Table

    stats = as_stats(results)
    table = Table(title=title)
    table.add_column("model")
    names = metric_names(stats)
    for name in names:
        table.add_column(name, justify="right")
    for model, metrics in stats.items():
        table.add_row(model, *[format_stat(metrics[n]) if n in metrics else "—" for n in names])
    Console().print(table)


def compare(results: Results, a: str, b: str, metric: str = "gold_reward") -> float:
    """How many standard errors model ``a`` is above model ``b`` on ``metric`` (independent z-score).

    E.g. ``compare(results, "dpo", "sft") > 2`` for "DPO beats SFT by more than 2 se". For two models
    evaluated on the same prompts, :func:`paired_compare` is tighter."""
    stats = as_stats(results)
    for model in (a, b):
        if model not in stats:
            raise KeyError(f"compare: no model {model!r} in results (have {sorted(stats)})")
        if metric not in stats[model]:
            raise KeyError(f"compare: model {model!r} has no metric {metric!r}")
    return z_score(stats[a][metric], stats[b][metric])


def read_samples(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of an eval run's ``samples.jsonl``."""
    path = Path(run_dir) / "samples.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no samples.jsonl (is {run_dir} an eval run folder?)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def paired_compare(dir_a: str | Path, dir_b: str | Path, field: str = "gold_reward") -> Stat:
    """Mean and se of ``a − b`` on ``field`` over the (prompt, sample index) pairs both runs scored."""
    rows_a = {_row_key(r): r for r in read_samples(dir_a) if r.get(field) is not None}
    rows_b = {_row_key(r): r for r in read_samples(dir_b) if r.get(field) is not None}
    shared = [k for k in rows_a if k in rows_b]
    if not shared:
        raise ValueError(f"paired_compare: {dir_a} and {dir_b} share no scored prompts on {field!r}")
    return paired_difference([float(rows_a[k][field]) for k in shared],
                             [float(rows_b[k][field]) for k in shared])


def _row_key(row: Mapping[str, Any]) -> str:
    return json.dumps([row.get("prompt"), row.get("sample_index", 0)], sort_keys=True)


def load_results(inputs: Mapping[str, str]) -> dict[str, dict[str, Stat]]:
    """Read ``metrics.json`` from each named eval run folder (or a metrics/report JSON file)."""
    results: dict[str, dict[str, Stat]] = {}
    for name, where in inputs.items():
        path = Path(where)
        path = path / "metrics.json" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"report input {name!r}: {path} not found")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"report input {name!r}: {path}: not valid JSON ({exc})") from None
        results[name] = as_stats({name: data})[name]
    return results


def run_report(cfg, run) -> dict[str, Any]:
    """The ``report`` stage: merge eval runs (``cfg.inputs``), write the report, log comparisons.

    Each ``cfg.compare`` pair ``(a, b)`` is reported as ``a − b`` in standard errors (``{a}_vs_{b}`` in
    ``comparisons.json``): positive when ``a`` is better on a higher-is-better metric."""
    results = load_results(cfg.inputs)
    comparisons = {}
    for a, b in cfg.compare:
        comparisons[f"{a}_vs_{b}"] = _comparison(results, cfg.inputs, a, b)
    write_report(results, run.path, title=cfg.title)
    print_table(results, cfg.title)
    if comparisons:
        run.write_json("comparisons.json", comparisons)
        for key, comp in comparisons.items():
            run.log(f"{key}: gold reward ({key.replace('_vs_', ' − ')}) z = "
                    f"{comp.get('gold_reward_z')}, paired z = {comp.get('gold_reward_paired_z')}")
        run.log_metrics({"comparisons": comparisons})
    return {"results": {m: {k: s.to_dict() for k, s in ms.items()} for m, ms in results.items()},
            "comparisons": comparisons}


def _comparison(results, inputs, a: str, b: str) -> dict[str, Any]:
    """z-scores of ``a`` over ``b`` for each shared metric, plus the paired gold-reward difference."""
    shared = [m for m in results[a] if m in results[b]]
    out: dict[str, Any] = {f"{m}_z": _json(compare(results, a, b, m)) for m in shared}
    try:
        diff = paired_compare(inputs[a], inputs[b])
        out["gold_reward_paired"] = diff.to_dict()
        out["gold_reward_paired_z"] = _json(diff.mean / diff.se if diff.se else math.nan)
    except (FileNotFoundError, ValueError, NotADirectoryError):
        pass
    return out


def _json(x: float) -> float | None:
    return None if math.isnan(x) or math.isinf(x) else float(x)
