"""Gym league table: every offline preference objective from the same SFT model, same data, same budget.

    python benchmarks/league/run.py                # build (resumable: finished stages are skipped)
    python benchmarks/league/run.py --collect      # only rebuild results.md / results.json
    python benchmarks/league/run.py --only "npo + retain" kto   # re-run rows; keep the others' results

Budget: one pass over the gym's 4000 simulated preference comparisons in 125 optimiser steps.
Pairwise objectives see 32 pairs per step (64 sequences); binary objectives see the same pairs
unpaired (8000 completions, 64 per step); listwise objectives see the gym's 1000 annotator-ranked
lists of 4 (8 lists = 32 sequences per step). Every run uses AdamW, lr 5e-5 with 5% warm-up and
linear decay, max length 96, seed 0, and the objective's default hyper-parameters unless the entry
says otherwise. Evaluation: 600 held-out prompts, T = 1, 48 new tokens, KL against the SFT model.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))
from tables import replace_block, run_recipe  # noqa: E402  (benchmarks/online/run.py imports these from here)

TRAIN = {"learning_rate": 5.0e-5, "epochs": 1, "max_length": 96, "max_prompt_length": 64,
         "log_every": 5, "warmup_ratio": 0.05, "seed": 0}
PAIRS, SOFT, RANKED = "prefs.jsonl", "prefs_soft.jsonl", "ranked.jsonl"

# (row name, loss terms, data file, batch size, extra stage keys)
ENTRIES: list[tuple[str, list[dict], str, int, dict]] = [
    ("dpo", [{"name": "dpo", "beta": 0.1}], PAIRS, 32, {}),
    ("dpo soft labels", [{"name": "dpo", "beta": 0.1}], SOFT, 32, {}),
    ("dpo + nll", [{"name": "dpo", "beta": 0.1}, {"name": "nll", "weight": 0.2}], PAIRS, 32, {}),
    ("cdpo", [{"name": "cdpo", "beta": 0.1, "eps": 0.1}], PAIRS, 32, {}),
    ("rdpo", [{"name": "rdpo", "beta": 0.1, "eps": 0.1}], PAIRS, 32, {}),
    ("ipo", [{"name": "ipo", "beta": 0.1}], PAIRS, 32, {}),
    ("slic", [{"name": "slic"}], PAIRS, 32, {}),
    ("dpop", [{"name": "dpop", "beta": 0.1}], PAIRS, 32, {}),
    ("beta_dpo", [{"name": "beta_dpo", "beta": 0.1}], PAIRS, 32, {}),
    ("r_dpo", [{"name": "r_dpo", "beta": 0.1}], PAIRS, 32, {}),
    ("gpo hinge", [{"name": "gpo", "beta": 0.1, "kind": "hinge"}], PAIRS, 32, {}),
    ("gpo squared", [{"name": "gpo", "beta": 0.1, "kind": "squared"}], PAIRS, 32, {}),
    ("gpo exponential", [{"name": "gpo", "beta": 0.1, "kind": "exponential"}], PAIRS, 32, {}),
    ("gpo truncated_quadratic", [{"name": "gpo", "beta": 0.1, "kind": "truncated_quadratic"}],
     PAIRS, 32, {}),
    ("gpo savage", [{"name": "gpo", "beta": 0.1, "kind": "savage"}], PAIRS, 32, {}),
    ("sdpo (2 stages)", [{"name": "dpo", "beta": 0.1}], PAIRS, 32, {"sdpo": {"stages": 2}}),
    ("tdpo", [{"name": "tdpo", "beta": 0.1}], PAIRS, 32, {}),
    ("simpo", [{"name": "simpo"}], PAIRS, 32, {}),
    ("cpo", [{"name": "cpo"}], PAIRS, 32, {}),
    ("orpo", [{"name": "orpo"}], PAIRS, 32, {}),
    ("orpo from base", [{"name": "orpo"}], PAIRS, 32, {"from_base": True}),
    ("kto", [{"name": "kto", "beta": 0.1}], PAIRS, 64, {}),
    ("npo + retain", [{"name": "npo", "beta": 0.1, "retain_weight": 1.0}], PAIRS, 64, {}),
    ("cringe", [{"name": "cringe"}], PAIRS, 64, {}),
    ("rrhf", [{"name": "rrhf"}], RANKED, 8, {}),
    ("pro", [{"name": "pro"}], RANKED, 8, {}),
    ("lipo", [{"name": "lipo", "beta": 0.1}], RANKED, 8, {}),
]


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def eval_stage(name: str, policy: str) -> dict:
    return {"name": f"eval_{name}", "stage": "eval", "policy": {"path": policy},
            "reference": {"path": "${sft.output}"}, "prompts": {"path": "${gym.output}/data/eval_prompts.jsonl"},
            "gym": "${gym.output}", "num_prompts": 600,
            "generation": {"max_new_tokens": 48, "temperature": 1.0, "batch_size": 200}}


def selected_entries(only: list[str] | None) -> list[tuple]:
    """ENTRIES, or only the named rows (an unknown name is an error listing the known ones)."""
    if not only:
        return ENTRIES
    known = [entry[0] for entry in ENTRIES]
    unknown = [name for name in only if name not in known]
    if unknown:
        raise SystemExit(f"unknown league rows {unknown}; known: {known}")
    return [entry for entry in ENTRIES if entry[0] in only]


def league_recipe(out: str, only: list[str] | None = None) -> dict:
    base = yaml.safe_load((HERE / "base.yaml").read_text())
    stages = list(base["stages"])
    for name, loss, data, batch, extra in selected_entries(only):
        extra = dict(extra)
        start = "${gym.output}/base_model" if extra.pop("from_base", False) else "${sft.output}"
        stages.append({"name": slug(name), "stage": "preference", "model": {"path": start},
                       "data": {"path": f"${{gym.output}}/data/{data}"}, "loss": loss,
                       "train": {**TRAIN, "batch_size": batch}, **extra})
        stages.append(eval_stage(slug(name), f"${{{slug(name)}.output}}"))
    return {"out": out, "stages": stages}


def cell(stat: dict, digits: int = 3) -> str:
    return f"{stat['mean']:.{digits}f} ± {stat['se']:.{digits}f}"


def step_gaps(rows: list[dict], every: int) -> list[float]:
    """Seconds per optimiser step between consecutive logged rows (logged ``every`` steps apart)."""
    times = [r["time"] for r in rows]
    return [(b - a) / every for a, b in zip(times, times[1:])]


def mean_se(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return float("nan"), float("nan")
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var / len(values))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def collect(out: Path, only: list[str] | None = None) -> list[dict]:
    rows = []
    for name, loss, data, batch, _ in [("sft (start)", [], "", 0, {})] + selected_entries(only):
        key = "sft" if not loss else slug(name)
        metrics_file = out / f"eval_{key}" / "metrics.json"
        if not metrics_file.is_file():
            continue
        metrics = json.loads(metrics_file.read_text())
        runs = [out / key] if loss else []
        if loss and (out / key / "sdpo-1").is_dir():
            runs = sorted((out / key).glob("sdpo-*"))
        parts = [[r for r in read_jsonl(p / "metrics.jsonl") if "time" in r and "loss" in r]
                 for p in runs]
        gaps = [g for part in parts for g in step_gaps(part, TRAIN["log_every"])]
        per_step = mean_se(gaps)
        wall = sum(part[-1]["time"] for part in parts if part)
        ref = sum(r.get("reference_seconds", 0.0) for p in runs
                  for r in read_jsonl(p / "metrics.jsonl"))
        rows.append({"name": name, "loss": loss, "data": data, "batch": batch,
                     "metrics": metrics, "train_seconds": wall,
                     "reference_seconds": ref, "step_seconds": per_step})
    return rows


def merge_rows(recorded: list[dict], fresh: list[dict]) -> list[dict]:
    """``recorded`` with the rows named in ``fresh`` replaced. The start row (the SFT model's
    evaluation) must be identical in both, or the re-run did not start from the same SFT model."""
    start = [r for r in fresh if not r["loss"]]
    if start and start[0]["metrics"] != recorded[0]["metrics"]:
        raise SystemExit("the re-built SFT model's evaluation differs from the recorded one; "
                         "re-run the whole league instead of --only")
    by_name = {row["name"]: row for row in fresh if row["loss"]}
    return [by_name.get(row["name"], row) for row in recorded]


def table(rows: list[dict]) -> str:
    head = ("| objective | gold reward | harmless | evasive | length (tokens) | KL to SFT | "
            "train wall s | s/step |\n|---|---|---|---|---|---|---|---|\n")
    lines = []
    for row in rows:
        m = row["metrics"]
        wall = f"{row['train_seconds']:.0f}" if row["loss"] else "–"
        mean, se = row["step_seconds"]
        step = f"{mean:.2f} ± {se:.2f}" if row["loss"] and mean == mean else "–"
        lines.append(f"| {row['name']} | {cell(m['gold_reward'])} | {cell(m['harmless_rate'])} | "
                     f"{cell(m['evasive_rate'])} | {cell(m['length_tokens'], 1)} | "
                     f"{cell(m['kl'], 2)} | {wall} | {step} |")
    return head + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/league")
    parser.add_argument("--collect", action="store_true", help="only collect finished results")
    parser.add_argument("--only", nargs="+", metavar="ROW",
                        help="run and collect only these rows; the other rows keep the results "
                             "recorded in results.json (the start row must match them)")
    parser.add_argument("--readme", action="store_true",
                        help="also write the league and methods tables into README.md")
    args = parser.parse_args()
    out = Path(args.out)
    if not args.collect:
        run_recipe(out / "league.yaml", league_recipe(str(out), args.only))
    rows = collect(out, args.only)
    if args.only:
        rows = merge_rows(json.loads((HERE / "results.json").read_text()), rows)
    (HERE / "results.json").write_text(json.dumps(rows, indent=1))
    (HERE / "results.md").write_text(table(rows))
    if args.readme:
        update_readme(rows)
    print(table(rows))



def readme_rows(rows: list[dict]) -> str:
    """Methods-table rows for the README: one per registered objective, with its league result."""
    from alignlab.losses.registry import REFERENCE_WORDS, load_catalog

    by_name = {row["name"]: row for row in rows}
    lines = []
    for name, spec in sorted(load_catalog().items()):
        results = [r for r in rows if r["loss"] and r["loss"][0]["name"] == name
                   and len(r["loss"]) == 1]
        shown = "; ".join(f"{r['name']}: {cell(r['metrics']['gold_reward'], 2)}" for r in results)
        if name == "nll" and "dpo + nll" in by_name:
            shown = f"dpo + nll: {cell(by_name['dpo + nll']['metrics']['gold_reward'], 2)}"
        lines.append(f"| `{name}` | `loss: {name}` | {spec.paper} | {REFERENCE_WORDS[spec.reference]} "
                     f"| {spec.data_kind} | done | {shown or '–'} |")
    return "\n".join(lines)


def update_readme(rows: list[dict]) -> None:
    own = HERE / "README.md"
    own.write_text(replace_block(own.read_text(), "league", table(rows)))
    readme = HERE.parents[1] / "README.md"
    text = replace_block(readme.read_text(), "league", table(rows))
    text = replace_block(text, "methods", "| objective | config | paper | needs reference | data | "
                         "status | gym gold reward |\n|---|---|---|---|---|---|---|\n"
                         + readme_rows(rows))
    readme.write_text(text)


if __name__ == "__main__":
    main()
