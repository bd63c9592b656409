"""Collect the iterated online RLHF recipe's numbers into results/online_rlhf.{json,md}.

    OMP_NUM_THREADS=2 alignlab run recipes/gym-sampling/online_rlhf.yaml
    python benchmarks/sampling/online_rlhf.py
"""

from __future__ import annotations

import json
from pathlib import Path

RUN = Path("runs/gym-online-rlhf")
OUT = Path(__file__).parent / "results"
POLICIES = ("rl0", "rl1", "rl2", "rl_single")


def collect() -> dict:
    evals = {}
    for name in POLICIES:
        m = json.loads((RUN / f"eval_{name}" / "metrics.json").read_text())
        evals[name] = {k: m[k] for k in ("gold_reward", "kl", "proxy_reward", "harmless_rate",
                                          "helpful_rate", "evasive_rate", "off_grammar_rate")}
    accuracy = {d.name: json.loads((d / "pairs.json").read_text())["accuracy"]
                for d in sorted(RUN.glob("acc_*")) if (d / "pairs.json").is_file()}
    annotate = {d.name: json.loads((d / "annotate.json").read_text())
                for d in sorted(RUN.glob("*")) if (d / "annotate.json").is_file()}
    pm_static = {d: json.loads((RUN / d / "eval.json").read_text())["accuracy"]
                 for d in ("pm0", "pm1", "pm2", "pm_single")}
    return {"eval": evals, "pm_accuracy_on_policy_samples": accuracy, "annotate": annotate,
            "pm_accuracy_on_prefs_eval": pm_static}


def markdown(r: dict) -> str:
    lines = ["| policy | gold reward | KL | off-grammar |", "|---|---|---|---|"]
    for name, m in r["eval"].items():
        lines.append(f"| {name} | {m['gold_reward']['mean']:.3f} ± {m['gold_reward']['se']:.3f} | "
                     f"{m['kl']['mean']:.2f} | {m['off_grammar_rate']['mean']:.3f} |")
    lines += ["", "| PM on a policy's own samples (gold labels) | accuracy |", "|---|---|"]
    lines += [f"| {name} | {a['mean']:.3f} ± {a['se']:.3f} (n = {a['n']}) |"
              for name, a in r["pm_accuracy_on_policy_samples"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    results = collect()
    OUT.mkdir(exist_ok=True)
    (OUT / "online_rlhf.json").write_text(json.dumps(results, indent=1))
    (OUT / "online_rlhf.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
