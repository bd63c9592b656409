"""Tables of the issue-20 SmolLM2 recipes, read from their run folders (nothing is retyped by hand).

    python benchmarks/smollm2_recipes/collect.py [--runs runs] [--ablations runs/abl] \
        [--time-logs benchmarks/smollm2_recipes/results/time]

Writes ``results/results.md`` and ``results/results.json``. Standard errors: accuracies and rates are
proportions over n held-out items, se = sqrt(p (1 - p) / n); win rates, rewards and KL are means over
prompts with the sample se (``alignlab eval``'s own). A ``--time-logs`` folder holds ``/usr/bin/time -v``
logs named ``<recipe>.txt``: their wall clock and maximum RSS go into the tables.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

from alignlab.eval.agreement import pearson
from alignlab.eval.verify import discrimination

HERE = Path(__file__).resolve().parent
RM_ABLATIONS = [  # (folder under --ablations or a recipe run, time log, label)
    ("recipe:rm_heldout/rm", "rm_heldout", "full fine-tuning, lr 3e-5, 1 epoch (the recipe)"),
    ("rm_last8_1ep/rm", "rm_last8_1ep", "last 8 of 30 blocks, lr 5e-5, 1 epoch"),
    ("rm_last8/rm", "rm_last8", "last 8 of 30 blocks, lr 5e-5, 2 epochs"),
    ("rm_pmp_last8/rm", "rm_pmp", "OASST PMP first, then last 8 blocks, lr 5e-5, 1 epoch"),
]
ORM_RUNS = [  # (folder under --runs, time log, label)
    ("gsm8k-verify", "orm", "LoRA r 16, all blocks, 100 steps (recipes/gsm8k-verify/orm.yaml)"),
    ("gsm8k-verify-heldout", "orm_heldout",
     "last 8 of 30 blocks, 300 steps, 1 epoch (recipes/gsm8k-verify/orm_heldout.yaml)"),
]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def proportion(p: float, n: int) -> dict:
    return {"mean": p, "se": math.sqrt(max(p * (1 - p), 0.0) / n) if n else math.nan, "n": n}


def fmt(stat: dict | None, digits: int = 3) -> str:
    if not stat:
        return "–"
    return f"{stat['mean']:.{digits}f} ± {stat['se']:.{digits}f}"


def run_seconds(folder: Path) -> float | None:
    times = [r["time"] for r in read_jsonl(folder / "metrics.jsonl") if r.get("time") is not None]
    return max(times) if times else None


def time_log(path: Path) -> dict:
    """Wall seconds and peak RSS (GB) from a ``/usr/bin/time -v`` log."""
    if not path.exists():
        return {}
    text = path.read_text()
    out = {}
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if rss:
        out["peak_rss_gb"] = round(int(rss.group(1)) / 1024**2, 2)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    if wall:
        parts = [float(x) for x in wall.group(1).split(":")]
        out["wall_s"] = round(sum(v * 60 ** i for i, v in enumerate(reversed(parts))), 1)
    return out


def rm_rows(runs: Path, ablations: Path) -> list[dict]:
    rows = []
    for key, time_key, label in RM_ABLATIONS:
        folder = runs / "smollm2-hh" / key.split(":", 1)[1] if key.startswith("recipe:") else ablations / key
        if not (folder / "DONE").exists():
            continue
        # the end-of-training eval repeats the last epoch's step: keep one row per step, the later one
        evals = list({r["step"]: r for r in read_jsonl(folder / "metrics.jsonl") if "eval/accuracy" in r}.values())
        n = json.loads((folder / "eval.json").read_text())["n"]
        rows.append({"run": str(folder), "label": label, "time_key": time_key, "seconds": run_seconds(folder),
                     "evals": [{"step": r["step"], "accuracy": proportion(r["eval/accuracy"], n),
                                "loss": r.get("eval/loss"), "ece": r.get("eval/ece")} for r in evals]})
    return rows


def preference_rows(folder: Path, methods=("dpo", "ipo", "simpo"), label: str = "") -> list[dict]:
    rows = []
    for method in methods:
        train, evaluation = folder / method, folder / f"eval_{method}"
        if not (train / "DONE").exists():
            continue
        last = [r for r in read_jsonl(train / "metrics.jsonl") if "eval/rewards/accuracy" in r][-1]
        n = _pair_count(train)
        row = {"method": f"{method}{label}", "train_seconds": run_seconds(train),
               "implicit_accuracy": proportion(last["eval/rewards/accuracy"], n),
               "implicit_margin": last.get("eval/rewards/margin")}
        if (evaluation / "metrics.json").exists():
            row.update(json.loads((evaluation / "metrics.json").read_text()))
            row["eval_seconds"] = run_seconds(evaluation)
        rows.append(row)
    return rows


def _pair_count(train: Path) -> int:
    text = (train / "log.txt").read_text()
    found = re.search(r"(\d+) eval pairs", text) or re.search(r"eval pair: (\d+) records", text)
    return int(found.group(1)) if found else 300


def cai_rows(folder: Path) -> dict:
    out: dict = {}
    stats = folder / "revise" / "revise_stats.json"
    if stats.exists():
        out["revise"] = json.loads(stats.read_text())
        out["revise_seconds"] = run_seconds(folder / "revise")
    for name in ("sl_cai", "sl_cai_unfiltered"):
        metrics = folder / f"eval_{name}" / "metrics.json"
        if metrics.exists():
            out[name] = json.loads(metrics.read_text())
            out[f"{name}_train_seconds"] = run_seconds(folder / name)
    return out


PREF_HEADER = ("| method | implicit-reward accuracy (300 pairs) | implicit margin | RM win rate vs Instruct | "
               "RM reward policy / Instruct | KL (nats/answer) | refusal rate policy / Instruct |")
CAI_HEADER = ("| policy | RM win rate vs Instruct | RM reward policy / Instruct | KL (nats/answer) | "
              "refusal rate policy / Instruct | tokens |")
RM_HEADER = "| run | epoch (step) | accuracy | loss | ECE | wall | peak RSS |"
ORM_HEADER = ("| run | AUROC, problems 600–699 | pooled / within-problem AUROC, unseen | "
              "best-of-4 | ORM-weighted vote | random | majority | oracle | wall | peak RSS |")


def rm_table(rm: list[dict], times: dict) -> list[str]:
    lines = [RM_HEADER, "|---|---|---|---|---|---|---|"]
    for row in rm:
        t = times.get(row["time_key"], {})
        for i, e in enumerate(row["evals"], 1):
            lines.append(f"| {row['label']} | {i} ({e['step']}) | {fmt(e['accuracy'])} | {_num(e['loss'])} | "
                         f"{_num(e['ece'])} | {_wall(t)} | {_rss(t)} |")
    return lines


def pref_table(pref: list[dict]) -> list[str]:
    lines = [PREF_HEADER, "|---|---|---|---|---|---|---|"]
    for r in pref:
        lines.append(f"| {r['method']} | {fmt(r['implicit_accuracy'])} | {_num(r['implicit_margin'])} | "
                     f"{fmt(r.get('win_rate'))} | {fmt(r.get('proxy_reward'), 2)} / "
                     f"{fmt(r.get('reference_proxy_reward'), 2)} | {fmt(r.get('kl'), 2)} | "
                     f"{fmt(r.get('refusal_rate'))} / {fmt(r.get('reference_refusal_rate'))} |")
    return lines


def cai_table(cai: dict) -> list[str]:
    lines = [CAI_HEADER, "|---|---|---|---|---|---|"]
    for name in ("sl_cai", "sl_cai_unfiltered"):
        m = cai.get(name)
        if m:
            lines.append(f"| {name} | {fmt(m.get('win_rate'))} | {fmt(m.get('proxy_reward'), 2)} / "
                         f"{fmt(m.get('reference_proxy_reward'), 2)} | {fmt(m.get('kl'), 2)} | "
                         f"{fmt(m.get('refusal_rate'))} / {fmt(m.get('reference_refusal_rate'))} | "
                         f"{fmt(m.get('length_tokens'), 1)} |")
    return lines


def orm_table(orm: list[dict], times: dict) -> list[str]:
    lines = [ORM_HEADER, "|---|---|---|---|---|---|---|---|---|---|"]
    for r in orm:
        t = times.get(r["time_key"], {})
        at4 = r["at_n4"]
        lines.append(f"| {r['label']} | {_num(r.get('stage_auroc'))} | {_num(r['pooled_auroc'])} / "
                     f"{_num(r['within_problem_auroc'])} ({r['within_problem_pairs']} pairs) | {fmt(at4.get('orm'))} | "
                     f"{fmt(at4.get('weighted/orm'))} | {fmt(at4.get('random'))} | {fmt(at4.get('majority'))} | {fmt(at4.get('oracle'))} | "
                     f"{_wall(t)} | {_rss(t)} |")
    return lines


def orm_rows(runs: Path) -> list[dict]:
    rows = []
    for key, time_key, label in ORM_RUNS:
        folder = runs / key
        if not (folder / "verify" / "DONE").exists():
            continue
        curve = json.loads((folder / "verify" / "curve.json").read_text())
        stats = {r["method"]: {"mean": r["accuracy"], "se": r["se"], "n": r["problems"]}
                 for r in curve if r["n"] == 4}
        stats["random"] = next({"mean": r["accuracy"], "se": r["se"], "n": r["problems"]}
                               for r in curve if r["n"] == 1 and r["method"] == "oracle")
        stage = [r for r in read_jsonl(folder / "orm" / "metrics.jsonl") if "eval/solution_auroc" in r]
        scores = read_jsonl(folder / "verify" / "scores.jsonl")
        # runs from before verify wrote its own discrimination to summary.json: the same function
        aurocs = discrimination([r["orm"] for r in scores], [r["correct"] for r in scores],
                                [r["problem_id"] for r in scores])
        rows.append({"run": str(folder), "label": label, "time_key": time_key, "at_n4": stats,
                     "stage_auroc": stage[-1]["eval/solution_auroc"] if stage else None,
                     **aurocs, "length": length_correlations(scores, "orm")})
    return rows


def length_correlations(scores: list[dict], key: str) -> dict:
    """Pearson correlations with solution length in characters: of the verifier score, of correctness,
    and of the score within a problem (both centred on the problem's mean) — a length shortcut test."""
    by_problem: dict = {}
    for r in scores:
        by_problem.setdefault(r["problem_id"], []).append(r)
    d_score, d_len = [], []
    for rs in by_problem.values():
        mean_s = sum(r[key] for r in rs) / len(rs)
        mean_l = sum(len(r["text"]) for r in rs) / len(rs)
        d_score += [r[key] - mean_s for r in rs]
        d_len += [len(r["text"]) - mean_l for r in rs]
    lengths = [float(len(r["text"])) for r in scores]
    return {"score_vs_length": pearson([r[key] for r in scores], lengths),
            "correct_vs_length": pearson([float(r["correct"]) for r in scores], lengths),
            "within_problem_score_vs_length": pearson(d_score, d_len)}


def markdown(rm: list[dict], pref: list[dict], cai: dict, orm: list[dict], times: dict) -> str:
    keep = cai.get("revise", {}).get("keep", {})
    lines = ["# SmolLM2-135M recipes on held-out data (generated by collect.py)", "",
             "## Reward model, HH harmless: held-out accuracy (300 pairs)", "", *rm_table(rm, times), "",
             "## DPO vs IPO vs SimPO (same pairs, steps, lr, trained blocks)", "", *pref_table(pref), "",
             "## SL-CAI on red-team prompts", "",
             (f"Revisions: {cai.get('revise', {}).get('prompts')} prompts, judged {keep.get('judged')}, "
             f"kept {keep.get('kept')} (mean P(revision better) {keep.get('mean_p_revision')})."), "",
             *cai_table(cai), "",
             "## GSM8K ORM: best-of-4 on unseen problems", "", *orm_table(orm, times), "",
             *[f"Length (Pearson r, {r['label']}): " + ", ".join(f"{k} {v:.3f}" for k, v in r["length"].items())
               for r in orm], "",
             "## Whole runs (`/usr/bin/time -v`)", "", "| run | wall | peak RSS |", "|---|---|---|"]
    lines += [f"| {k} | {_wall(v)} | {_rss(v)} |" for k, v in sorted(times.items())]
    return "\n".join(lines) + "\n"


def _wall(t: dict) -> str:
    s = t.get("wall_s")
    return "–" if s is None else f"{int(s // 60)}:{int(s % 60):02d}"


def _rss(t: dict) -> str:
    return "–" if t.get("peak_rss_gb") is None else f"{t['peak_rss_gb']:.2f} GiB"


def _num(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--ablations", default="runs/abl")
    parser.add_argument("--time-logs", default=str(HERE / "results" / "time"))
    args = parser.parse_args()
    runs = Path(args.runs)
    times = {p.stem: time_log(p) for p in sorted(Path(args.time_logs).glob("*.txt"))}
    rm = rm_rows(runs, Path(args.ablations))
    pref = preference_rows(runs / "smollm2-hh" / "dpo_compare")
    pref += preference_rows(Path(args.ablations) / "dpo_lr1e-4", ("dpo",), " (lr 1e-4, ablation)")
    cai = cai_rows(runs / "smollm2-hh" / "cai_heldout")
    orm = orm_rows(runs)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "results.json").write_text(json.dumps({"rm": rm, "preference": pref, "cai": cai, "orm": orm,
                                                  "recipes": times}, indent=1) + "\n")
    (out / "results.md").write_text(markdown(rm, pref, cai, orm, times))
    print((out / "results.md").read_text())


if __name__ == "__main__":
    main()
