"""The weak-to-strong report: accuracies, PGR with confidence intervals, imitation of the
supervisor's mistakes, bootstrapping vs direct, as ``report.json``, ``report.md`` and ``w2s.png``.

For each seed and each (weak, strong, loss): test accuracy of the weak supervisor, the student and
the strong ceiling; PGR with a percentile bootstrap over test examples
(:func:`alignlab.eval.pgr.bootstrap_pgr`, the three models' correctness resampled together); and
:func:`alignlab.eval.pgr.weak_error_agreement` — among test examples the supervisor gets wrong, the
share where the student gives the supervisor's answer. ``gap`` is ceiling minus weak accuracy and
``no_gap_share`` the share of bootstrap resamples in which the ceiling does not beat the weak model:
PGR divides by the gap, so where that share is large PGR is noise. With several seeds, PGR's mean ± standard
error over seeds (:func:`alignlab.eval.pgr.pgr_over_seeds`). PGR is NaN (``null`` in JSON) where the
ceiling does not beat the weak model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alignlab.eval.pgr import bootstrap_pgr, pgr_over_seeds, weak_error_agreement
from alignlab.w2s.tasks import Example


def predictions(probs: dict[int, list[float]], test: Sequence[Example]) -> list[int]:
    """The predicted class (argmax) for each test example, in test order."""
    return [max(range(len(probs[ex.index])), key=probs[ex.index].__getitem__) for ex in test]


def correctness(probs: dict[int, list[float]], test: Sequence[Example]) -> list[float]:
    return [float(p == ex.label) for p, ex in zip(predictions(probs, test), test)]


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def _json(value: float) -> float | None:
    return None if isinstance(value, float) and math.isnan(value) else round(value, 4)


def pair_row(weak: dict, student: dict, ceiling: dict, test: Sequence[Example],
             resamples: int, seed: int) -> dict[str, Any]:
    """Accuracies, PGR with its bootstrap CI, and weak-error agreement for one student."""
    w, s, c = (correctness(p, test) for p in (weak, student, ceiling))
    boot = bootstrap_pgr(w, s, c, resamples=resamples, seed=seed)
    gold = [ex.label for ex in test]
    agree = weak_error_agreement(predictions(student, test), predictions(weak, test), gold)
    return {"acc_weak": _mean(w), "acc_w2s": _mean(s), "acc_ceiling": _mean(c),
            "gap": _mean(c) - _mean(w), "pgr": boot["pgr"], "pgr_low": boot["low"],
            "pgr_high": boot["high"], "no_gap_share": boot["undefined"] / resamples,
            "weak_error_agreement": agree}


def seed_rows(cfg, test: Sequence[Example], seed: int, result: dict) -> tuple[list, list]:
    """(student rows, bootstrapping rows) of one seed."""
    rows = []
    for (weak, strong, loss), probs in result["student"].items():
        row = pair_row(result["weak"][weak], probs, result["ceiling"][strong], test,
                       cfg.resamples, seed)
        rows.append({"seed": seed, "weak": weak, "strong": strong, "loss": loss, **row})
    chains = []
    first, last = cfg.models[0].name, cfg.models[-1].name
    for loss, probs in result["chain"].items():
        row = pair_row(result["weak"][first], probs, result["ceiling"][last], test,
                       cfg.resamples, seed)
        direct = result["student"].get((first, last, loss))
        chains.append({"seed": seed, "weak": first, "strong": last, "loss": loss, **row,
                       "acc_direct": _mean(correctness(direct, test)) if direct else None})
    return rows, chains


def over_seeds(rows: list[dict]) -> list[dict]:
    """Per (weak, strong, loss): mean accuracies and PGR mean ± se over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["weak"], row["strong"], row["loss"]), []).append(row)
    out = []
    for (weak, strong, loss), group in groups.items():
        stat = pgr_over_seeds([(r["acc_weak"], r["acc_w2s"], r["acc_ceiling"]) for r in group])
        out.append({"weak": weak, "strong": strong, "loss": loss, "seeds": len(group),
                    **{k: _mean([r[k] for r in group]) for k in ("acc_weak", "acc_w2s",
                                                                 "acc_ceiling")},
                    "pgr_mean": stat.mean, "pgr_se": stat.se, "pgr_seeds_used": stat.n})
    return out


def write_report(cfg, test: Sequence[Example], results: dict[int, dict],
                 counts: list[int | None], out: Path) -> dict[str, Any]:
    """Compute every row, write report.json / report.md / w2s.png; returns the report."""
    rows, chains = [], []
    for seed, result in results.items():
        student, chain = seed_rows(cfg, test, seed, result)
        rows += student
        chains += chain
    params = {m.name: n for m, n in zip(cfg.models, counts)}
    report = {"task": cfg.task.kind, "data": cfg.task.data.path, "n_test": len(test),
              "models": [{"name": m.name, "parameters": params[m.name]} for m in cfg.models],
              "students": rows, "over_seeds": over_seeds(rows), "bootstrapping": chains}
    report["summary"] = summary_lines(report)
    (out / "report.json").write_text(json.dumps(_nan_to_null(report), indent=2) + "\n")
    (out / "report.md").write_text(markdown(report))
    plot(report, out / "w2s.png")
    return report


def _nan_to_null(value: Any) -> Any:
    if isinstance(value, float):
        return _json(value)
    if isinstance(value, dict):
        return {k: _nan_to_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_null(v) for v in value]
    return value


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.{digits}f}"


def summary_lines(report: dict) -> list[str]:
    """One line per (weak, strong, loss) averaged over seeds."""
    return [f"{r['weak']} -> {r['strong']} ({r['loss']}): weak {_fmt(r['acc_weak'])}, w2s "
            f"{_fmt(r['acc_w2s'])}, ceiling {_fmt(r['acc_ceiling'])}, PGR {_fmt(r['pgr_mean'], 2)}"
            + (" (the ceiling beats the weak model by less than 0.02: PGR is noise)"
               if r["acc_ceiling"] - r["acc_weak"] < 0.02 else "")
            for r in report["over_seeds"]]


def markdown(report: dict) -> str:
    """report.md: the students table (per seed, with CIs), the seed means, bootstrapping."""
    title = (f"# Weak-to-strong: {report['task']} on {report['data']} ({report['n_test']} test "
             "examples)")
    lines = [title, "", "| model | parameters |", "|---|---|"]
    lines += [f"| {m['name']} | {m['parameters'] or 'n/a'} |" for m in report["models"]]
    lines += ["", ("## Students (accuracy on the test set; PGR with a 95% bootstrap CI over test "
                   "examples)"), "",
              ("| seed | weak | strong | loss | weak acc | w2s acc | ceiling acc | PGR [95% CI] | "
               "resamples without a gap | agreement with weak mistakes |"),
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["students"]:
        lines.append(f"| {r['seed']} | {r['weak']} | {r['strong']} | {r['loss']} | "
                     f"{_fmt(r['acc_weak'])} | {_fmt(r['acc_w2s'])} | {_fmt(r['acc_ceiling'])} | "
                     f"{_fmt(r['pgr'], 2)} [{_fmt(r['pgr_low'], 2)}, {_fmt(r['pgr_high'], 2)}] | "
                     f"{_fmt(r['no_gap_share'], 2)} | {_fmt(r['weak_error_agreement'], 2)} |")
    lines += ["", "## Over seeds (PGR mean ± se)", "", "| weak | strong | loss | seeds | PGR |",
              "|---|---|---|---|---|"]
    lines += [f"| {r['weak']} | {r['strong']} | {r['loss']} | {r['seeds']} | "
              f"{_fmt(r['pgr_mean'], 2)} ± {_fmt(r['pgr_se'], 2)} |" for r in report["over_seeds"]]
    if report["bootstrapping"]:
        lines += ["", "## Bootstrapping (chain through every model) vs direct", "",
                  "| seed | loss | chain acc | direct acc | chain PGR [95% CI] |", "|---|---|---|---|---|"]
        lines += [f"| {r['seed']} | {r['loss']} | {_fmt(r['acc_w2s'])} | {_fmt(r['acc_direct'])} | "
                  f"{_fmt(r['pgr'], 2)} [{_fmt(r['pgr_low'], 2)}, {_fmt(r['pgr_high'], 2)}] |"
                  for r in report["bootstrapping"]]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Accuracy (left) and PGR (right) against the strong model's parameters, one line per
    (weak model, loss); the ceiling in black, each weak supervisor a grey square at its own size. Models of unknown size are placed by rank."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = {m["name"]: m["parameters"] or rank + 1 for rank, m in enumerate(report["models"])}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    ceiling = sorted({(sizes[r["strong"]], r["acc_ceiling"]) for r in report["over_seeds"]})
    if ceiling:
        left.plot(*zip(*ceiling), "k-o", label="strong ceiling (gold)")
    weak = sorted({(sizes[r["weak"]], r["acc_weak"]) for r in report["over_seeds"]})
    left.plot(*zip(*weak), "s", color="grey", label="weak supervisors (gold, half A)")
    for key in sorted({(r["weak"], r["loss"]) for r in report["over_seeds"]}):
        group = sorted((sizes[r["strong"]], r) for r in report["over_seeds"]
                       if (r["weak"], r["loss"]) == key)
        xs = [x for x, _ in group]
        left.plot(xs, [r["acc_w2s"] for _, r in group], "-o", label=f"student of {key[0]} ({key[1]})")
        right.plot(xs, [r["pgr_mean"] for _, r in group], "-o",
                   label=f"student of {key[0]} ({key[1]})")
    for ax, label in ((left, "test accuracy"), (right, "PGR")):
        ax.set_xscale("log")
        ax.set_xlabel("parameters (students and ceilings: of the strong model)")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    right.axhline(0, color="grey", lw=0.5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
