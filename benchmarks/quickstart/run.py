"""The quickstart benchmark: run ``alignlab quickstart`` and write its results table from the run folder.

    python benchmarks/quickstart/run.py                      # run (about 4 minutes), then collect
    python benchmarks/quickstart/run.py --collect            # only rebuild the tables from runs/quickstart
    python benchmarks/quickstart/run.py --collect --readme   # ... and write them into README.md

Writes ``results.json`` (every model's metrics, the comparisons, the reward model's held-out scores,
per-stage seconds and the whole run's wall time) and ``results.md`` beside this file; ``--readme``
replaces the block between ``<!-- quickstart:start -->`` and ``<!-- quickstart:end -->`` in
README.md and in this folder's README.md. Take the timing alone on the machine (two torch processes on
two cores slow each other several-fold); the load average before and after the run is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))
from tables import write_block  # noqa: E402

STAGES = ("gym", "sft", "rm", "dpo", "eval_base", "eval_sft", "eval_dpo", "report")
METRICS = ("gold_reward", "harmless_rate", "helpful_rate", "evasive_rate", "off_grammar_rate",
           "proxy_reward", "win_rate", "kl", "length_tokens")
STAMP = re.compile(r"^\[\s*([0-9.]+)s\]", re.MULTILINE)


def run_quickstart(out: Path) -> dict:
    """Run the quickstart into ``out`` (a fresh folder); return wall seconds and load averages."""
    if out.exists():
        raise SystemExit(f"{out} exists; remove it or use --collect")
    load_before = os.getloadavg()
    start = time.time()
    subprocess.run([sys.executable, "-m", "alignlab.cli", "quickstart", "--out", str(out)], check=True)
    return {"wall_seconds": round(time.time() - start, 1), "load_before": load_before,
            "load_after": os.getloadavg()}


def stage_seconds(out: Path) -> dict[str, float]:
    """The last timestamp of each stage's ``log.txt`` (seconds from the stage's start)."""
    seconds = {}
    world = out / "gym" / "world.json"
    if world.is_file():
        seconds["gym"] = json.loads(world.read_text())["build_seconds"]
    for stage in STAGES:
        log = out / stage / "log.txt"
        if log.is_file():
            stamps = STAMP.findall(log.read_text())
            seconds[stage] = float(stamps[-1]) if stamps else float("nan")
    return seconds


def collect(out: Path, timing: dict | None) -> dict:
    report = json.loads((out / "report" / "report.json").read_text())
    recorded = HERE / "results.json"
    if timing is None and recorded.is_file():
        timing = json.loads(recorded.read_text()).get("timing")
    gym_meta = out / "gym" / "base_model" / "gym_build.json"
    return {"command": f"python benchmarks/quickstart/run.py (alignlab quickstart --out {out})",
            "models": report["results"],
            "comparisons": json.loads((out / "report" / "comparisons.json").read_text()),
            "reward_model": json.loads((out / "rm" / "eval.json").read_text()),
            "stage_seconds": stage_seconds(out), "timing": timing,
            "pretrain": json.loads(gym_meta.read_text())["pretrain"] if gym_meta.is_file() else None}


def cell(stat: dict) -> str:
    return f"{stat['mean']:.3f} ± {stat['se']:.3f}"


def table(models: dict) -> str:
    head = "| model | " + " | ".join(METRICS) + " |\n|---" + "|---" * len(METRICS) + "|\n"
    rows = [f"| {name} | " + " | ".join(cell(m[k]) if k in m else "—" for k in METRICS) + " |"
            for name, m in models.items()]
    return head + "\n".join(rows) + "\n"


def summary(results: dict) -> str:
    """The table plus the lines the README quotes (all read from ``results``)."""
    models, comp = results["models"], results["comparisons"]["dpo_vs_sft"]
    paired = comp.get("gold_reward_paired", {})
    gain = models["dpo"]["gold_reward"]["mean"] - models["sft"]["gold_reward"]["mean"]
    rm = results["reward_model"]
    timing = results.get("timing") or {}
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in results["stage_seconds"].items())
    lines = [table(models),
             f"- DPO − SFT gold reward {gain:+.3f} (z = {comp['gold_reward_z']:.1f} unpaired; paired "
             f"over the same prompts {paired.get('mean', float('nan')):+.3f} ± "
             f"{paired.get('se', float('nan')):.3f}, z = {comp.get('gold_reward_paired_z') or 0:.1f}); "
             f"harmless rate z = {comp['harmless_rate_z']:.1f}; evasive rate z = "
             f"{comp['evasive_rate_z']:+.1f}; helpful rate z = {comp['helpful_rate_z']:+.1f}.",
             f"- Reward model on {rm.get('n', '?')} held-out simulated labels: accuracy "
             f"{rm['accuracy']:.3f}, ECE {rm.get('ece', float('nan')):.3f}.",
             f"- Wall time {timing.get('wall_seconds', float('nan')):.0f} s (load average before "
             f"{(timing.get('load_before') or [float('nan')])[0]:.2f}); per stage: {stages}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/quickstart")
    parser.add_argument("--collect", action="store_true", help="only collect a finished run")
    parser.add_argument("--readme", action="store_true", help="also write the tables into README.md")
    args = parser.parse_args()
    out = Path(args.out)
    timing = None if args.collect else run_quickstart(out)
    results = collect(out, timing)
    (HERE / "results.json").write_text(json.dumps(results, indent=1))
    text = summary(results)
    (HERE / "results.md").write_text(text)
    if args.readme:
        write_block(ROOT / "README.md", "quickstart", text)
        write_block(HERE / "README.md", "quickstart", text)
    print(text)


if __name__ == "__main__":
    main()
