"""Table of recipes/gym-verify/ppo.yaml: accuracy and trace-error rate of the reasoning policy before
and after PPO with outcome reward only vs outcome + PRM step rewards (100 held-out problems x 8
samples each, the gym's gold checkers), plus each run's last-iteration KL.

    python benchmarks/verification/ppo_table.py --runs runs/gym-verify
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROWS = [("SFT policy (start)", "eval_policy", None), ("PPO, outcome reward", "eval_ppo_outcome",
                                                      "ppo_outcome"),
        ("PPO, outcome + PRM step rewards", "eval_ppo_process", "ppo_process")]


def last_metrics(folder: Path) -> dict:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").open()]
    return [r for r in rows if "kl" in r][-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs/gym-verify")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "gym_ppo.json"))
    args = parser.parse_args()
    runs, table = Path(args.runs), {}
    header = ("| policy | accuracy | trace-error rate among right answers | fully right "
              "| KL (last iteration) |")
    lines = [header, "|---|---|---|---|---|"]
    for name, evaluation, train in ROWS:
        summary = json.loads((runs / evaluation / "summary.json").read_text())
        scores = [json.loads(line) for line in (runs / evaluation / "scores.jsonl").open()]
        fully = sum(bool(r["correct"]) and not r["trace_error"] for r in scores) / len(scores)
        kl = last_metrics(runs / train)["kl"] if train else 0.0
        acc, trace = summary["accuracy"], summary["trace_error_among_correct"]
        table[name] = {"accuracy": acc, "trace_error_among_correct": trace, "fully_right": fully,
                       "kl": kl}
        lines.append(f"| {name} | {acc['mean']:.3f} ± {acc['se']:.3f} | {trace['mean']:.3f} ± "
                     f"{trace['se']:.3f} (n = {trace['n']}) | {fully:.3f} | {kl:.2f} |")
    Path(args.out).write_text(json.dumps(table, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
