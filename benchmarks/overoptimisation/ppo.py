"""The PPO half of the over-optimisation experiment: PPO against each proxy reward model, with the
gym's gold reward monitored, and (gold, proxy, KL) read along training.

    python benchmarks/overoptimisation/ppo.py          # after run.py has trained the proxy RMs

Each run starts from the league's SFT model and optimises a proxy RM (trained by ``run.py`` on 250 or
4000 noisy labels) with a small fixed KL coefficient, so the policy walks away from the SFT model and
every logged window of iterations is one point of the curve: the KL budget reached so far (the
rollout's mean summed log-ratio to the SFT model, measured on the samples themselves), the proxy
reward and the gold reward of those same samples (Gao et al. 2022 plot RL the same way, against
the KL at each point of training). The samples are the rollouts on training prompts (the gym's
train_prompts.jsonl), not run.py's 200 held-out prompts; both come from the same prompt
distribution. Results go to results/ppo.json (read by run.py's plot, then
``python benchmarks/overoptimisation/run.py --collect``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).parent
OUT = Path("runs/overopt")
RMS = {"250 labels": "rm_250", "4000 labels": "rm_4000"}
ITERATIONS = 60
LOG_EVERY = 5


def config(label: str, rm: str) -> dict:
    return {"stage": "online", "algorithm": "ppo", "model": {"path": "runs/league/sft/model"},
            "prompts": {"path": "runs/league/gym/data/train_prompts.jsonl"},
            "reward": [{"kind": "reward_model", "path": str(OUT / rm / "model")}],
            "monitor": [{"kind": "gym_gold", "gym": "runs/league/gym", "name": "gold"}],
            "generation": {"num_samples": 1, "max_new_tokens": 48, "temperature": 1.0,
                           "batch_size": 256},
            "train": {"learning_rate": 1e-4, "max_steps": ITERATIONS, "batch_size": 64,
                      "log_every": LOG_EVERY, "save_every": 20, "seed": 0, "max_length": 128,
                      "max_prompt_length": 64, "lr_schedule": "constant"},
            "rl": {"kl_coef": 0.005, "ppo_epochs": 2, "minibatch_size": 32,
                   "critic_learning_rate": 1e-4},
            "out": str(OUT / f"ppo_{rm}")}


def run(label: str, rm: str) -> None:
    cfg = config(label, rm)
    if (Path(cfg["out"]) / "DONE").is_file():
        return
    path = OUT / f"ppo_{rm}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    subprocess.run([sys.executable, "-m", "alignlab.cli", "online", "--config", str(path)],
                   check=True)


def points(label: str, rm: str) -> list[dict]:
    rows = [json.loads(line) for line in (OUT / f"ppo_{rm}" / "metrics.jsonl").read_text().splitlines()]
    return [{"label": f"PPO, {label}", "iteration": r["step"], "kl": max(r["kl"], 0.0),
             "gold": r["monitor/gold"], "proxy": r["reward/mean"]}
            for r in rows if "monitor/gold" in r]


def main() -> None:
    results = {}
    for label, rm in RMS.items():
        run(label, rm)
        results[rm] = points(label, rm)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "ppo.json").write_text(json.dumps(results, indent=1))
    for rows in results.values():
        for row in rows:
            print(f"{row['label']:>18} it {row['iteration']:>3}  KL {row['kl']:6.2f}  "
                  f"gold {row['gold']:+.3f}  proxy {row['proxy']:+.3f}")


if __name__ == "__main__":
    main()
