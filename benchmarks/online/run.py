"""Online RL league in the gym: PPO, RLOO, GRPO, REINFORCE++, online DPO, SPPO, Nash-MD and XPO from
the same SFT model, trained against the same reward model, with the same sample budget.

    python benchmarks/online/run.py                 # build (resumable: finished stages are skipped)
    python benchmarks/online/run.py --only grpo     # one algorithm (and what it depends on)
    python benchmarks/online/run.py --collect       # only rebuild results.md / results.json

Pipeline: the league's gym (420 pretraining steps) and SFT model; a reward model trained from the SFT
model on the gym's 4000 simulated (noisy, 75 % gold agreement) preference pairs; then each algorithm
for ITERATIONS iterations of 64 sampled completions (16 prompts x 4 samples; PPO and REINFORCE++,
which need no group, 64 prompts x 1 sample; Nash-MD and XPO, 32 prompts x (1 policy sample + 1
opponent sample)), 48 new tokens at T = 1, scored by the reward model (the
gym's gold reward is only monitored). Evaluation as in the league: 600 held-out prompts, KL to SFT.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "league"))
from run import cell, eval_stage, replace_block, run_recipe  # noqa: E402

ITERATIONS = 30
TRAIN = {"max_steps": ITERATIONS, "log_every": 5, "seed": 0, "max_length": 128,
         "max_prompt_length": 64, "lr_schedule": "constant", "save_every": 10}
GENERATION = {"max_new_tokens": 48, "temperature": 1.0, "batch_size": 256}

# (name, algorithm, prompts per iteration, samples per prompt, learning rate, rl settings, extra)
ENTRIES: list[tuple[str, str, int, int, float, dict, dict]] = [
    ("ppo", "ppo", 64, 1, 5e-5, {"kl_coef": 0.1, "ppo_epochs": 2, "minibatch_size": 32,
                                 "critic_learning_rate": 1e-4}, {}),
    ("rloo", "rloo", 16, 4, 5e-5, {"kl_coef": 0.1}, {}),
    ("grpo", "grpo", 16, 4, 5e-5, {"kl_coef": 0.1}, {}),
    ("reinforce_pp", "reinforce_pp", 64, 1, 5e-5, {"kl_coef": 0.1}, {}),
    ("online_dpo", "online_dpo", 16, 4, 5e-5, {}, {"loss": [{"name": "dpo", "beta": 0.1}]}),
    # three SPPO iterations of 10 updates each: the reference moves to the policy every 10; the live
    # policy answers 300 held-out prompts after each iteration (gold reward per iteration)
    ("sppo", "sppo", 16, 4, 5e-5, {"sppo_eta": 10.0, "ref_sync_every": 10},
     {"eval_prompts": {"path": "${gym.output}/data/eval_prompts.jsonl", "limit": 300},
      "train": {"eval_every": 10}}),
    # one policy sample and one opponent sample per prompt: 64 completions per iteration as above
    ("nash_md", "nash_md", 32, 1, 5e-5, {"kl_coef": 0.1, "mixture_coef": 0.5}, {}),
    ("xpo", "xpo", 32, 1, 5e-5, {"xpo_alpha": 1e-5}, {"loss": [{"name": "dpo", "beta": 0.1}]}),
]


def base_stages() -> list[dict]:
    league = yaml.safe_load((HERE.parent / "league" / "base.yaml").read_text())["stages"]
    rm = {"name": "rm", "stage": "rm", "model": {"path": "${sft.output}"},
          "data": {"path": "${gym.output}/data/prefs.jsonl"},
          "eval_data": {"path": "${gym.output}/data/prefs_eval.jsonl"},
          "train": {"learning_rate": 1e-3, "epochs": 1, "batch_size": 32, "max_length": 96,
                    "max_prompt_length": 64, "log_every": 20, "warmup_ratio": 0.05, "seed": 0}}
    return league + [rm]


def online_stage(name, algorithm, prompts, k, lr, rl, extra) -> dict:
    return {"name": name, "stage": "online", "algorithm": algorithm,
            "model": {"path": "${sft.output}"},
            "prompts": {"path": "${gym.output}/data/train_prompts.jsonl"},
            "reward": [{"kind": "reward_model", "path": "${rm.output}"}],
            "monitor": [{"kind": "gym_gold", "gym": "${gym.output}", "name": "gold"}],
            "generation": {**GENERATION, "num_samples": k},
            "train": {**TRAIN, "learning_rate": lr, "batch_size": prompts, **extra.get("train", {})},
            "rl": rl, **{k: v for k, v in extra.items() if k != "train"}}


def with_proxy(stage: dict) -> dict:
    return {**stage, "reward_model": {"path": "${rm.output}"}}


def recipe(out: str, only: str | None) -> dict:
    stages = base_stages()
    stages.append(with_proxy(eval_stage("sft_rm", "${sft.output}")))
    for entry in ENTRIES:
        if only and entry[0] != only:
            continue
        stages.append(online_stage(*entry))
        stages.append(with_proxy(eval_stage(entry[0], f"${{{entry[0]}.output}}")))
    return {"out": out, "stages": stages}


def collect(out: Path) -> list[dict]:
    rows = []
    for name in ["sft_rm"] + [e[0] for e in ENTRIES]:
        metrics_file = out / f"eval_{name}" / "metrics.json"
        if metrics_file.is_file():
            rows.append({"name": "sft (start)" if name == "sft_rm" else name,
                         "metrics": json.loads(metrics_file.read_text())})
    return rows


def table(rows: list[dict]) -> str:
    head = ("| algorithm | gold reward | proxy (RM) reward | harmless | evasive | KL to SFT | "
            "length (tokens) |\n|---|---|---|---|---|---|---|\n")
    lines = []
    for row in rows:
        m = row["metrics"]
        proxy = cell(m["proxy_reward"]) if "proxy_reward" in m else "–"
        lines.append(f"| {row['name']} | {cell(m['gold_reward'])} | {proxy} | "
                     f"{cell(m['harmless_rate'])} | {cell(m['evasive_rate'])} | "
                     f"{cell(m['kl'], 2)} | {cell(m['length_tokens'], 1)} |")
    return head + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/online")
    parser.add_argument("--only", help="run one algorithm (by name)")
    parser.add_argument("--collect", action="store_true", help="only collect finished results")
    parser.add_argument("--readme", action="store_true", help="also update README.md")
    args = parser.parse_args()
    out = Path(args.out)
    if not args.collect:
        run_recipe(out / "online.yaml", recipe(str(out), args.only))
    rows = collect(out)
    (HERE / "results.json").write_text(json.dumps(rows, indent=1))
    (HERE / "results.md").write_text(table(rows))
    if args.readme:
        readme = HERE.parents[1] / "README.md"
        readme.write_text(replace_block(readme.read_text(), "online", table(rows)))
    print(table(rows))


if __name__ == "__main__":
    main()
