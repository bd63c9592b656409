"""Red-teaming reports: ``report.json``, ``report.md``, ``report.html`` (and ``report.png`` when
matplotlib is importable) from a list of attempt rows (see :mod:`alignlab.redteam.metrics`).

Every interval printed in the Markdown and HTML tables is the **Wilson score interval**
(:func:`~alignlab.redteam.metrics.wilson_ci`): it is closed-form and keeps a width at 0/n and n/n,
where the percentile bootstrap collapses to a point. ``report.json`` carries both (``wilson`` and
``bootstrap``) for every rate; ``summary["ci"]["shown"]`` names the one the tables show.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from alignlab.redteam.metrics import (
    Row,
    as_json,
    distinct_n,
    grouped_asr,
    most_damaging,
    parse_verdict,
    rate_with_cis,
    self_bleu,
)

TABLES = (("target", "by_target"), ("method", "by_method"), ("category", "by_category"))
EXCERPT_CHARS = 400


def summarise(rows: Iterable[Row], top_k: int = 5, level: float = 0.95, draws: int = 2000,
              seed: int = 0, diversity_sample: int | None = 200) -> dict[str, Any]:
    """Everything a red-teaming report shows, as a JSON-ready dict.

    - ``overall``: ASR over judged attempts (Perez et al. 2022), ``successes``, ``n``, ``unjudged``,
      ``se``, ``wilson`` and ``bootstrap`` ``[low, high]`` at ``level``;
    - ``by_target`` / ``by_method`` / ``by_category``: the same per group
      (:func:`~alignlab.redteam.metrics.grouped_asr`), each with its unjudged count;
    - ``diversity``: per method, over the SUCCESSFUL attacks' texts: ``self_bleu`` (Zhu et al.
      2018; seeded subset of ``diversity_sample`` texts when larger), ``distinct_1``, ``distinct_2``
      (Li et al. 2016); None where undefined;
    - ``most_damaging``: the ``top_k`` successful attempts with the highest ``harm_score``;
    - ``ci``: the level, which interval the tables show (``"wilson"``), bootstrap draws and seed.
    """
    rows = list(rows)
    summary: dict[str, Any] = {
        "n_rows": len(rows),
        "ci": {"level": level, "shown": "wilson", "also": "bootstrap", "bootstrap_draws": draws,
               "seed": seed},
        "overall": rate_with_cis([r.get("verdict") for r in rows], level, draws, seed),
    }
    for key, name in TABLES:
        summary[name] = grouped_asr(rows, (key,), level, draws, seed)
    summary["diversity"] = _diversity(rows, diversity_sample, seed)
    summary["most_damaging"] = [
        {k: r.get(k) for k in ("target", "method", "category", "harm_score", "attack", "reply")}
        for r in most_damaging(rows, top_k)]
    return as_json(summary)


def _diversity(rows: Sequence[Row], sample: int | None, seed: int) -> list[dict[str, Any]]:
    methods: dict[Any, list[str]] = {}
    for r in rows:
        methods.setdefault(r.get("method"), [])
        if parse_verdict(r.get("verdict")) is True:
            methods[r.get("method")].append(str(r.get("attack") or ""))
    return [{"method": m, "n_successful": len(texts),
             "self_bleu": self_bleu(texts, sample=sample, seed=seed),
             "distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2)}
            for m, texts in methods.items()]


def gate(summary: Mapping[str, Any], fail_above: float | None) -> int:
    """CI gate: exit code 1 when the overall ASR is strictly above ``fail_above``, else 0.

    ``fail_above is None`` → 0 (no gate). An ASR equal to the threshold passes. Departure from a
    bare "0 otherwise": when a threshold is set but no attempt was judged (ASR undefined) the gate
    fails closed with 1, since nothing shows the target is under the threshold."""
    if fail_above is None:
        return 0
    asr = summary["overall"].get("asr")
    if asr is None or (isinstance(asr, float) and math.isnan(asr)):
        return 1
    return 1 if asr > fail_above else 0


# --------------------------------------------------------------------------- formatting


def _fmt(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _asr_cell(entry: Mapping[str, Any]) -> str:
    """``"0.750 [0.301, 0.954]"``: ASR with its Wilson interval; ``"n/a"`` if nothing was judged."""
    if entry.get("asr") is None:
        return "n/a"
    low, high = entry["wilson"]
    return f"{_fmt(entry['asr'])} [{_fmt(low)}, {_fmt(high)}]"


def _label(value: Any) -> str:
    return "(none)" if value is None else str(value)


def _excerpt(text: Any) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "…"


def md_escape(text: Any) -> str:
    """Text made safe for one Markdown table cell: HTML-escaped (``& < >``), backslashes and ``|``
    escaped, line breaks as ``<br>``."""
    out = html.escape(_excerpt(text), quote=False).replace("\\", "\\\\").replace("|", "\\|")
    return out.replace("\r\n", "\n").replace("\n", "<br>")


def _rate_rows(summary: Mapping[str, Any], key: str, name: str,
               level: int) -> tuple[list[str], list[list[str]]]:
    head = [key, f"ASR [{level}% Wilson CI]", "successes", "n judged", "unjudged"]
    body = [[_label(e.get(key)), _asr_cell(e), str(e["successes"]), str(e["n"]), str(e["unjudged"])]
            for e in summary[name]]
    return head, body


def _diversity_rows(summary: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    head = ["method", "successful attacks", "self-BLEU", "distinct-1", "distinct-2"]
    body = [[_label(d["method"]), str(d["n_successful"]), _fmt(d["self_bleu"]),
             _fmt(d["distinct_1"]), _fmt(d["distinct_2"])] for d in summary["diversity"]]
    return head, body


def _example_rows(summary: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    head = ["#", "harm score", "target", "method", "category", "attack", "reply"]
    body = [[str(i), _fmt(e.get("harm_score")), _label(e.get("target")), _label(e.get("method")),
             _label(e.get("category")), str(e.get("attack") or ""), str(e.get("reply") or "")]
            for i, e in enumerate(summary["most_damaging"], 1)]
    return head, body


def _sections(summary: Mapping[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    level = round(100 * summary["ci"]["level"])
    out = []
    for key, name in (("category", "by_category"), ("method", "by_method"),
                      ("target", "by_target")):
        out.append((f"ASR per {key}", *_rate_rows(summary, key, name, level)))
    out.append(("Diversity of successful attacks (per method)", *_diversity_rows(summary)))
    out.append(("Most damaging successful attacks", *_example_rows(summary)))
    return out


def _overall_line(summary: Mapping[str, Any]) -> str:
    o, ci = summary["overall"], summary["ci"]
    boot = o["bootstrap"]
    return (f"Overall ASR {_asr_cell(o)} ({round(100 * ci['level'])}% Wilson score interval; "
            f"percentile bootstrap [{_fmt(boot[0])}, {_fmt(boot[1])}], {ci['bootstrap_draws']} "
            f"draws, seed {ci['seed']}) over {o['n']} judged attempts; {o['unjudged']} unjudged "
            f"(excluded from every rate).")


def markdown_report(summary: Mapping[str, Any], title: str = "Red-teaming report") -> str:
    """``report.md``: overall ASR, tables of ASR [Wilson CI] per category, method and target, the
    diversity table and the most damaging examples (attack and reply escaped by :func:`md_escape`);
    embeds ``summary["plot"]`` when a plot was written."""
    parts = [f"# {md_escape(title)}", "", _overall_line(summary), ""]
    for heading, head, body in _sections(summary):
        parts += [f"## {heading}", ""]
        if not body:
            parts += ["(none)", ""]
            continue
        parts.append("| " + " | ".join(head) + " |")
        parts.append("|" + "---|" * len(head))
        parts += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in body]
        parts.append("")
    parts.append("Self-BLEU: higher = less diverse (Zhu et al. 2018). Distinct-n: unique / total "
                 "n-grams (Li et al. 2016).")
    if summary.get("plot"):
        parts += ["", f"![ASR per method and category]({summary['plot']})", "",
                  "Error bars: Wilson score interval."]
    return "\n".join(parts) + "\n"


_CSS = ("body{font-family:sans-serif;max-width:70em;margin:2em auto}"
        "table{border-collapse:collapse;margin-bottom:1.5em}"
        "td,th{border:1px solid #ccc;padding:.3em .6em;vertical-align:top;text-align:left}"
        "td{white-space:pre-wrap}")


def html_report(summary: Mapping[str, Any], title: str = "Red-teaming report") -> str:
    """``report.html``: a self-contained page (inline CSS, no scripts, no external assets) with the
    same tables as :func:`markdown_report`; every text is escaped with ``html.escape``."""
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{esc(title)}</h1>", f"<p>{esc(_overall_line(summary))}</p>"]
    for heading, head, body in _sections(summary):
        parts.append(f"<h2>{esc(heading)}</h2>")
        if not body:
            parts.append("<p>(none)</p>")
            continue
        parts.append("<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head)
                     + "</tr></thead><tbody>")
        parts += ["<tr>" + "".join(f"<td>{esc(_excerpt(c))}</td>" for c in row) + "</tr>"
                  for row in body]
        parts.append("</tbody></table>")
    parts.append("<p>Intervals: Wilson score. Self-BLEU: higher = less diverse (Zhu et al. 2018). "
                 "Distinct-n: unique / total n-grams (Li et al. 2016).</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def plot_asr(summary: Mapping[str, Any], path: str | Path) -> Path | None:
    """Bar plot of ASR per method and per category with Wilson-interval error bars (Agg backend).

    Optional: returns None without writing anything when matplotlib cannot be imported."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    panels = [("method", summary["by_method"]), ("category", summary["by_category"])]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), squeeze=False)
    for ax, (key, entries) in zip(axes[0], panels):
        entries = [e for e in entries if e.get("asr") is not None]
        xs = list(range(len(entries)))
        means = [e["asr"] for e in entries]
        errs = [[e["asr"] - e["wilson"][0] for e in entries],
                [e["wilson"][1] - e["asr"] for e in entries]]
        ax.bar(xs, means, yerr=errs, capsize=4, color="tab:red", alpha=0.7)
        ax.set_xticks(xs)
        ax.set_xticklabels([_label(e.get(key)) for e in entries], rotation=20, ha="right")
        ax.set_ylim(0, 1)
        ax.set_title(f"ASR per {key}")
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(rows: Iterable[Row], out_dir: str | Path, title: str = "Red-teaming report",
                 plot: bool = True, **kwargs: Any) -> dict[str, Any]:
    """Write ``report.json`` (the :func:`summarise` dict), ``report.md``, ``report.html`` and, when
    ``plot`` and matplotlib is importable, ``report.png`` into ``out_dir``; return the summary.

    ``summary["plot"]`` is ``"report.png"`` or None (matplotlib missing or ``plot=False``);
    ``kwargs`` go to :func:`summarise`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(rows, **kwargs)
    summary["title"] = title
    png = plot_asr(summary, out / "report.png") if plot else None
    summary["plot"] = png.name if png else None
    (out / "report.json").write_text(json.dumps(summary, indent=2, allow_nan=False))
    (out / "report.md").write_text(markdown_report(summary, title))
    (out / "report.html").write_text(html_report(summary, title))
    return summary
