"""AI labels vs gold in the gym: the gym feedback model, the untrained base model and the simulated
crowd, on the gym's held-out preference pairs (``prefs_eval.jsonl``: 600 pairs on eval-pool prompts).

    python benchmarks/cai/labels.py                       # labels with both judges, then the table
    python benchmarks/cai/labels.py --collect             # only rebuild labels.json / the table

The judges are run with ``alignlab label`` (constitution ``gym``, one random comparison principle per
pair, both option orders). Agreement is measured against the GOLD preference (the reply with the
higher gold reward, ``alignlab.gym.load_gym(gym).score``); gold ties are excluded and counted. A row's
"one order" agreement is the mean of the agreements read from the chosen-first and the chosen-second
order alone; "both orders" uses the averaged probability (Lee et al. 2024, "RLAIF vs. RLHF", sec.
2.1.2). Position statistics follow :func:`alignlab.feedback.labeling.label_stats`. The simulated crowd
(the pairs' own ``chosen``, Bradley-Terry annotators calibrated to 75 % gold agreement) has no option
order, so it has only one agreement number.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from alignlab.data.records import messages_from_list
from alignlab.feedback.labeling import label_stats
from alignlab.gym import load_gym

HERE = Path(__file__).parent
GYM = Path("runs/league/gym")
FEEDBACK = Path("runs/cai/feedback/model")
OUT = Path("runs/cai/labels")
JUDGES = {"feedback model": FEEDBACK, "base model (untrained)": GYM / "base_model"}


def label_command(judge: Path, pairs: Path, out: Path) -> list[str]:
    """The ``alignlab label`` command line for one judge (the gym model has 256 positions)."""
    return ["nice", "-n", "5", sys.executable, "-m", "alignlab.cli", "label",
            f"judge.model.path={judge}", "judge.max_length=256", "judge.batch_size=64",
            f"data.path={pairs}", "constitution=gym", "flush_every=200", f"out={out}"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def prompt_of(row: dict):
    return messages_from_list(row["prompt"])


def gold_truth(gym, row: dict) -> float:
    """1.0 when ``chosen`` has the higher gold reward, 0.0 when ``rejected`` has, 0.5 for a tie."""
    prompt = prompt_of(row)
    a, b = gym.score(prompt, row["chosen"]).reward, gym.score(prompt, row["rejected"]).reward
    return 0.5 if a == b else float(a > b)


def judge_stats(gym, labels: Path) -> dict:
    """:func:`label_stats` of a labels.jsonl with ``data_label`` replaced by the gold preference."""
    rows = read_jsonl(labels)
    for row in rows:
        row["data_label"] = gold_truth(gym, row)
    stats = label_stats(rows)
    stats["gold_ties_excluded"] = sum(r["data_label"] == 0.5 for r in rows)
    return stats


def crowd_stats(gym, pairs: Path) -> dict:
    """Agreement of the simulated crowd's ``chosen`` with gold (ties excluded and counted)."""
    truth = [gold_truth(gym, row) for row in read_jsonl(pairs)]
    decided = [t for t in truth if t != 0.5]
    return {"pairs": len(truth), "gold_ties_excluded": len(truth) - len(decided),
            "agreement_one_order": round(sum(decided) / len(decided), 4)}


def run_judges(pairs: Path, out: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    for name, judge in JUDGES.items():
        target = out / slug(name)
        subprocess.run(label_command(judge, pairs, target), check=True, env=env)


def slug(name: str) -> str:
    return name.split(" (")[0].replace(" ", "_")


def collect(gym, pairs: Path, out: Path) -> dict:
    results = {name: judge_stats(gym, out / slug(name) / "labels.jsonl") for name in JUDGES}
    results["simulated crowd (prefs_eval chosen)"] = crowd_stats(gym, pairs)
    return results


def cell(stats: dict, key: str) -> str:
    return f"{stats[key]:.3f}" if key in stats else "–"


def table(results: dict) -> str:
    keys = ["agreement_one_order", "agreement_both_orders", "p_first_listed", "first_listed_rate",
            "order_consistency", "mean_option_mass"]
    lines = [("| labeler | gold agreement, one order | gold agreement, both orders | p_first_listed | "
              "first_listed_rate | order_consistency | option mass | pairs (gold ties excluded) |"),
             "|---|---|---|---|---|---|---|---|"]
    for name, s in results.items():
        cells = " | ".join(cell(s, k) for k in keys)
        lines.append(f"| {name} | {cells} | {s['pairs']} ({s['gold_ties_excluded']}) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gym", type=Path, default=GYM)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--collect", action="store_true", help="only rebuild the table")
    args = parser.parse_args()
    pairs = args.gym / "data" / "prefs_eval.jsonl"
    if not args.collect:
        run_judges(pairs, args.out)
    results = collect(load_gym(args.gym), pairs, args.out)
    (HERE / "labels.json").write_text(json.dumps(results, indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
