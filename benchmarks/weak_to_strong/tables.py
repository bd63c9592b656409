"""Markdown tables of one or more ``alignlab w2s`` reports (``report.json``), for the README.

    python benchmarks/weak_to_strong/tables.py runs/gym-w2s/helpful/report.json [...]

For each report: a row per (weak, strong) pair with the weak, ceiling and student accuracies of
every loss, PGR with its 95 % bootstrap CI, the share of resamples without a gap, and the students'
agreement with the supervisor's mistakes; then bootstrapping vs direct when the run has chains.
Seed 0 rows only when a report has several seeds (their means are in the report's own tables).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _f(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def pair_table(report: dict) -> list[str]:
    """One row per (weak, strong): accuracies, and per loss the student's accuracy and PGR."""
    losses = sorted({r["loss"] for r in report["students"]}, key=["ce", "aux_conf", "product",
                                                                  "window"].index)
    head = ["weak", "strong", "weak acc", "ceiling acc", "gap (no-gap share)"]
    for loss in losses:
        head += [f"{loss} acc", f"{loss} PGR [95% CI]", f"{loss} copies weak errors"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = [r for r in report["students"] if r["seed"] == report["students"][0]["seed"]]
    for weak, strong in dict.fromkeys((r["weak"], r["strong"]) for r in rows):
        by_loss = {r["loss"]: r for r in rows if (r["weak"], r["strong"]) == (weak, strong)}
        first = next(iter(by_loss.values()))
        cells = [weak, strong, _f(first["acc_weak"]), _f(first["acc_ceiling"]),
                 f"{_f(first['gap'])} ({_f(first['no_gap_share'], 2)})"]
        for loss in losses:
            r = by_loss[loss]
            cells += [_f(r["acc_w2s"]),
                      f"{_f(r['pgr'], 2)} [{_f(r['pgr_low'], 2)}, {_f(r['pgr_high'], 2)}]",
                      _f(r["weak_error_agreement"], 2)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def chain_table(report: dict) -> list[str]:
    """Bootstrapping through the ladder vs the direct student, per loss."""
    if not report["bootstrapping"]:
        return []
    lines = ["| loss | chain acc | direct acc | chain PGR [95% CI] | chain copies weak errors |",
             "|---|---|---|---|---|"]
    for r in report["bootstrapping"]:
        lines.append(f"| {r['loss']} | {_f(r['acc_w2s'])} | {_f(r['acc_direct'])} | "
                     f"{_f(r['pgr'], 2)} [{_f(r['pgr_low'], 2)}, {_f(r['pgr_high'], 2)}] | "
                     f"{_f(r['weak_error_agreement'], 2)} |")
    return lines


def main(paths: list[str]) -> None:
    for path in paths:
        report = json.loads(Path(path).read_text())
        sizes = ", ".join(f"{m['name']} {m['parameters']:,}" for m in report["models"]
                          if m["parameters"])
        print(f"### {report['task']}: {report['data']} ({report['n_test']} test; {sizes})\n")
        print("\n".join(pair_table(report)))
        chains = chain_table(report)
        if chains:
            print("\nBootstrapping (first -> ... -> last) vs direct:\n")
            print("\n".join(chains))
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
