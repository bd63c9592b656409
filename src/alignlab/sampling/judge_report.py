"""The ``sample`` stage's judge report: unscored samples, judgement parse counts, and how the
selecting score agrees with each monitor.

- :func:`split_unscored`: rows without the samples the scorers left unscored (``score`` None: e.g. a
  self-rewarding judge none of whose judgements parsed, Yuan et al. 2024), which then take part in no
  selection (best-of-N, RS-SFT, pairs, RSO);
- :func:`judgement_counts`: per scorer that keeps ``judgements`` details (``kind: self_reward``,
  ``mode: parse``), how many judgements were sampled, how many did not parse, the failure rate;
- :func:`agreement_report`: per monitor (e.g. the gym's gold reward), the pair agreement and the
  Pearson / Spearman correlations of the summed score with it (:mod:`alignlab.eval.agreement`), and
  the fraction of selected best-vs-worst pairs the monitor also prefers. Written to
  ``judge_agreement.json``; the headline numbers go into ``summary.json``.
"""

from __future__ import annotations

from alignlab.eval.agreement import judge_agreement
from alignlab.sampling.select import best_worst_pair, scored_indices


def split_unscored(rows: list[dict]) -> tuple[list[dict], dict[str, int]]:
    """Rows holding only their scored samples (rows left with none are dropped), and the counts
    ``samples_unscored`` and ``prompts_unscored`` (no scored sample at all)."""
    kept, samples, prompts = [], 0, 0
    for row in rows:
        keep = scored_indices([s["score"] for s in row["samples"]])
        samples += len(row["samples"]) - len(keep)
        if not keep:
            prompts += 1
            continue
        kept.append(row if len(keep) == len(row["samples"]) else
                    {**row, "samples": [row["samples"][i] for i in keep]})
    return kept, {"samples_unscored": samples, "prompts_unscored": prompts}


def judgement_counts(rows: list[dict]) -> dict[str, float | int]:
    """``<scorer>_judgements``, ``<scorer>_unparsed`` and ``<scorer>_parse_failure_rate`` for every
    scorer whose per-sample details list its parsed ``judgements`` (None: unparsed)."""
    totals: dict[str, list[int]] = {}
    for row in rows:
        for sample in row["samples"]:
            for name, detail in sample.get("details", {}).items():
                if "judgements" in detail:
                    count = totals.setdefault(name, [0, 0])
                    count[0] += len(detail["judgements"])
                    count[1] += sum(j is None for j in detail["judgements"])
    out: dict[str, float | int] = {}
    for name, (made, failed) in sorted(totals.items()):
        out.update({f"{name}_judgements": made, f"{name}_unparsed": failed,
                    f"{name}_parse_failure_rate": failed / made if made else 0.0})
    return out


def agreement_report(rows: list[dict]) -> dict[str, dict]:
    """Per monitor: :func:`alignlab.eval.agreement.judge_agreement` of the samples' ``score``
    (None: unscored) with the monitor, plus ``selected_pairs`` and ``selected_pair_agreement`` (the
    best-vs-worst pairs by score whose monitor scores agree; monitor ties count half)."""
    names = sorted({n for row in rows for s in row["samples"] for n in s.get("monitor", {})})
    report = {}
    for name in names:
        groups = [([s["score"] for s in row["samples"]],
                   [s["monitor"][name] for s in row["samples"]]) for row in rows]
        report[name] = {**judge_agreement(groups), **selected_agreement(groups)}
    return report


def selected_agreement(groups) -> dict[str, float | int | None]:
    """How often the monitor prefers the chosen sample of each best-vs-worst pair (ties half)."""
    credit, count = 0.0, 0
    for judge, reference in groups:
        keep = scored_indices(judge)
        pair = best_worst_pair([judge[i] for i in keep]) if keep else None
        if pair is None:
            continue
        chosen, rejected = reference[keep[pair[0]]], reference[keep[pair[1]]]
        credit += 1.0 if chosen > rejected else 0.5 if chosen == rejected else 0.0
        count += 1
    return {"selected_pairs": count, "selected_pair_agreement": credit / count if count else None}


def headline(report: dict[str, dict]) -> dict[str, float | None]:
    """The numbers of the report that go into ``summary.json``, ``<monitor>_<metric>``."""
    keys = ("pair_agreement", "spearman", "pearson", "selected_pair_agreement")
    return {f"{name}_{key}": values[key] for name, values in report.items() for key in keys}
