"""Direct RLAIF in the gym: run the recipe and the 90-iteration supplement, then write the tables.

    python benchmarks/cai/direct_rlaif.py             # build what is missing (resumable), then collect
    python benchmarks/cai/direct_rlaif.py --collect   # only rebuild the tables from the run folders

Needs the league's gym and SFT model (``python benchmarks/league/run.py``). Builds, when missing: the
gym's feedback model (``alignlab gym feedback``), ``recipes/gym-cai/direct_rlaif.yaml`` (RLOO for 30
iterations with the feedback model's rating as the reward, then its evaluation) and the same run for
90 iterations with its evaluation. Every row of the tables is read from a run folder of the same
``runs/`` tree, so all rows come from one gym build; rows whose folders are missing (the CAI
pipeline's SL-CAI and RL-CAI, the online league's crowd-RM RLOO) are left out. Writes
``direct_rlaif.json`` and the block between ``<!-- direct_rlaif:start -->`` and
``<!-- direct_rlaif:end -->`` in ``direct_rlaif.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
from pipeline import cell, stage_seconds, style_shares  # noqa: E402

sys.path.insert(0, str(HERE.parent))
from tables import write_block  # noqa: E402

RUNS = Path("runs")
CAI = RUNS / "cai"
RECIPE = ROOT / "recipes" / "gym-cai" / "direct_rlaif.yaml"
# (row name, evaluation folder); the first row is the start of every other row
ROWS = [("sft", RUNS / "league" / "eval_sft"),
        ("sft → RLOO, judge reward (direct RLAIF), 30 it.", CAI / "eval_direct_rlaif"),
        ("sft → RLOO, judge reward, 90 it. (supplementary)", CAI / "eval_direct_rlaif_it90"),
        ("sft → RLOO, crowd-label RM, 30 it. (online league)", RUNS / "online" / "eval_rloo"),
        ("sft → SL-CAI (CAI pipeline)", CAI / "eval_sl_cai"),
        ("SL-CAI → RLOO, AI-labelled PM (RL-CAI)", CAI / "eval_rl_ai")]
HARMFUL_STYLES = ("explained_refusal", "evasive_refusal", "harmful_compliance", "off_grammar")


def alignlab(args: list[str]) -> float:
    """Run one alignlab command under ``nice -n 5``; returns its wall seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    print("+ alignlab", " ".join(args), flush=True)
    start = time.time()
    subprocess.run(["nice", "-n", "5", sys.executable, "-m", "alignlab.cli", *args], check=True, env=env)
    return round(time.time() - start, 1)


def build() -> dict[str, float]:
    """Whatever is missing, in order; returns the wall seconds of what ran."""
    seconds = {}
    if not (CAI / "feedback" / "model").is_dir():
        seconds["feedback"] = alignlab(["gym", "feedback", "--gym", str(RUNS / "league" / "gym"),
                                        "--out", str(CAI / "feedback")])
    seconds["recipe"] = alignlab(["run", str(RECIPE)])
    if not (CAI / "direct_rlaif_it90" / "DONE").is_file():
        seconds["online_it90"] = alignlab([
            "online", "--config", str(CAI / "direct_rlaif" / "config.yaml"), "train.max_steps=90",
            "train.save_every=30", f"out={CAI / 'direct_rlaif_it90'}"])
    if not (CAI / "eval_direct_rlaif_it90" / "DONE").is_file():
        seconds["eval_it90"] = alignlab([
            "eval", "--config", str(CAI / "eval_direct_rlaif" / "config.yaml"),
            f"policy.path={CAI / 'direct_rlaif_it90' / 'model'}",
            f"out={CAI / 'eval_direct_rlaif_it90'}"])
    return seconds


def collect(seconds: dict[str, float] | None) -> dict:
    rows = []
    for name, folder in ROWS:
        metrics = folder / "metrics.json"
        if metrics.is_file():
            rows.append({"name": name, "folder": str(folder),
                         "metrics": json.loads(metrics.read_text()),
                         "styles": style_shares(folder / "samples.jsonl")})
    recorded = HERE / "direct_rlaif.json"
    if seconds is None and recorded.is_file():
        seconds = json.loads(recorded.read_text()).get("build_seconds")
    runs = {name: stage_seconds(CAI / name) for name in
            ("direct_rlaif", "eval_direct_rlaif", "direct_rlaif_it90", "eval_direct_rlaif_it90")}
    return {"rows": rows, "build_seconds": seconds, "stage_seconds": runs}


def policy_table(rows: list[dict]) -> str:
    lines = ["| policy (start → method) | gold reward | harmless | evasive refusal | helpful | "
             "off-grammar | KL to SFT |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        m = row["metrics"]
        lines.append(f"| {row['name']} | {cell(m['gold_reward'])} | {cell(m['harmless_rate'])} | "
                     f"{cell(m['evasive_rate'])} | {cell(m['helpful_rate'])} | "
                     f"{cell(m['off_grammar_rate'])} | {cell(m['kl'], 2)} |")
    return "\n".join(lines) + "\n"


def styles_table(rows: list[dict]) -> str:
    lines = ["| policy | " + " | ".join(s.replace("_", " ") for s in HARMFUL_STYLES) + " |",
             "|---" * (len(HARMFUL_STYLES) + 1) + "|"]
    for row in rows:
        harmful = row["styles"]["harmful"]
        lines.append(f"| {row['name']} | "
                     + " | ".join(f"{harmful.get(s, 0.0):.3f}" for s in HARMFUL_STYLES) + " |")
    return "\n".join(lines) + "\n"


def block(results: dict) -> str:
    rows = results["rows"]
    return (policy_table(rows) + "\nStyles on harmful prompts (share of the harmful eval prompts):\n\n"
            + styles_table(rows) + "\nSeconds per run folder (last log line): "
            + ", ".join(f"{k} {v:.0f}" for k, v in results["stage_seconds"].items() if v) + ".\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collect", action="store_true", help="only collect finished runs")
    args = parser.parse_args()
    seconds = None if args.collect else build()
    results = collect(seconds)
    (HERE / "direct_rlaif.json").write_text(json.dumps(results, indent=1))
    text = block(results)
    write_block(HERE / "direct_rlaif.md", "direct_rlaif", text)
    print(text)


if __name__ == "__main__":
    main()
