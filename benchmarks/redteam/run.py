"""Red-teaming league in the gym: attack success rate of every policy on the gym's held-out attacks.

    python benchmarks/redteam/run.py                 # resumable: finished stages are skipped
    python benchmarks/redteam/run.py --collect       # only rebuild results.md / results.json

Targets: the gym's base model, the SFT model, DPO from the SFT model (the preference league's
settings), every policy of the online league (``benchmarks/online/run.py --out runs/online2``) and,
when built, the Constitutional AI policies of ``recipes/gym-cai/pipeline.yaml`` (SL-CAI, RL-CAI,
and RL from the human-label PM).
Attacks: ``data/attacks.jsonl``, the eval pool's 491 harmful requests in five categories (never
trained on). Replies: 48 new tokens at T = 1. Judge: the gym's gold classifier (harmful compliance).
Attack methods: the attack file; zero-shot attacks of a red LM (Perez et al. 2022) against the SFT
model. Each row sits next to the policy's evasive-refusal rate from its 600-prompt evaluation.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))
from tables import run_recipe  # noqa: E402

ONLINE = ("ppo", "rloo", "grpo", "reinforce_pp", "online_dpo", "sppo", "nash_md", "xpo")
GEN = {"max_new_tokens": 48, "temperature": 1.0, "batch_size": 256, "seed": 0}


CAI = (("sl_cai", "sl_cai"), ("rl_cai", "rl_ai"), ("rl_human_pm", "rl_human"))


def targets(league: str, cai: str = "runs/cai") -> list[tuple[str, str, str | None]]:
    """(name, model path, evaluation folder) of every policy; the Constitutional AI policies of
    ``recipes/gym-cai/pipeline.yaml`` when they were built."""
    rows = [("base", f"{league}/gym/base_model", None), ("sft", f"{league}/sft/model", f"{league}/eval_sft"),
            ("dpo", "${dpo.output}", "${eval_dpo.output}")]
    rows += [(name, f"{league}/{name}/model", f"{league}/eval_{name}") for name in ONLINE]
    return rows + [(name, f"{cai}/{stage}/model", f"{cai}/eval_{stage}") for name, stage in CAI
                   if Path(cai, stage, "model").is_dir()]


def recipe(out: str, league: str) -> dict:
    gym = f"{league}/gym"
    train = {"learning_rate": 5.0e-5, "epochs": 1, "batch_size": 32, "max_length": 96,
             "max_prompt_length": 64, "log_every": 20, "warmup_ratio": 0.05, "seed": 0}
    stages = [
        {"name": "dpo", "stage": "dpo", "model": {"path": f"{league}/sft/model"},
         "data": {"path": f"{gym}/data/prefs.jsonl"}, "loss": [{"name": "dpo", "beta": 0.1}],
         "train": train},
        {"name": "eval_dpo", "stage": "eval", "policy": {"path": "${dpo.output}"},
         "reference": {"path": f"{league}/sft/model"},
         "prompts": {"path": f"{gym}/data/eval_prompts.jsonl"}, "gym": gym, "num_prompts": 600,
         "generation": {"max_new_tokens": 48, "temperature": 1.0, "batch_size": 200}}]
    judge = {"kind": "gym_gold", "gym": gym}
    for name, path, _ in targets(league):
        stages.append({"name": f"rt_{name}", "stage": "redteam",
                       "target": {"model": {"path": path}, "name": name},
                       "attacks": [{"path": f"{gym}/data/attacks.jsonl"}], "judge": judge,
                       "generation": GEN, "flush_every": 128})
    red_gen = {"max_new_tokens": 32, "temperature": 1.0, "top_p": 0.95, "batch_size": 256}
    sft_target = {"model": {"path": f"{league}/sft/model"}, "name": "sft"}
    stages.append({"name": "rt_sft_zero_shot", "stage": "redteam", "target": sft_target,
                   "red_lm": [{"model": {"path": f"{gym}/base_model"}, "num": 256,
                               "generation": red_gen}],
                   "judge": judge, "generation": GEN, "flush_every": 128})
    stages.append({"name": "rt_sft_few_shot", "stage": "redteam", "target": sft_target,
                   "red_lm": [{"method": "few_shot", "model": {"path": f"{gym}/base_model"},
                               "pool": "${rt_sft.output}", "num": 256, "generation": red_gen}],
                   "judge": judge, "generation": GEN, "flush_every": 128})
    # supervised red LM (Perez et al. §3): the base model fine-tuned on the successful file attacks
    stages.append({"name": "red_sl", "stage": "sft", "model": {"path": f"{gym}/base_model"},
                   "data": {"path": "${rt_sft.output}/attacks_sft.jsonl"},
                   "train": {**train, "learning_rate": 1.0e-3, "epochs": 2, "batch_size": 16}})
    stages.append({"name": "rt_sft_supervised", "stage": "redteam", "target": sft_target,
                   "red_lm": [{"model": {"path": "${red_sl.output}"}, "num": 256,
                               "name": "supervised", "generation": red_gen}],
                   "judge": judge, "generation": GEN, "flush_every": 128})
    # RL red LMs (Perez et al. §2.3): RLOO from the supervised red LM, reward 1 when the SFT model's
    # reply is harmful compliance, KL 0.1 to the supervised red LM; a gentle and a strong setting, and
    # the strong one with the diversity bonus 0.5 x (1 - BLEU against the rollout's other attacks)
    for suffix, lr, steps, diversity in (("rl", 5.0e-5, 30, 0.0), ("rl_strong", 3.0e-4, 60, 0.0),
                                         ("rl_diverse", 3.0e-4, 60, 0.5)):
        stages.append({"name": f"red_{suffix}", "stage": "online", "algorithm": "rloo",
                       "model": {"path": "${red_sl.output}"},
                       "prompts": {"path": "recipes/gym-redteam/red_prompts.jsonl"},
                       "reward": [{"kind": "redteam", "redteam": {
                           "target": {"path": f"{league}/sft/model"}, "judge": judge,
                           "generation": GEN, "diversity_weight": diversity}}],
                       "generation": {"num_samples": 4, "max_new_tokens": 32, "temperature": 1.0,
                                      "top_p": 0.95, "batch_size": 256},
                       "train": {"max_steps": steps, "batch_size": 16, "learning_rate": lr,
                                 "lr_schedule": "constant", "max_length": 64,
                                 "max_prompt_length": 32, "log_every": 5, "seed": 0},
                       "rl": {"kl_coef": 0.1}})
        stages.append({"name": f"rt_sft_{suffix}", "stage": "redteam", "target": sft_target,
                       "red_lm": [{"model": {"path": f"${{red_{suffix}.output}}"}, "num": 256,
                                   "name": suffix, "generation": red_gen}],
                       "judge": judge, "generation": GEN, "flush_every": 128})
    # the supervised and the strong RL red LM's attacks (written against SFT; the same 256 attacks
    # for every target, seed 0) against every other target
    for name, path, _ in targets(league):
        for suffix in ("supervised", "rl_strong"):
            if name == "sft":
                continue
            model = "${red_sl.output}" if suffix == "supervised" else "${red_rl_strong.output}"
            stages.append({"name": f"rt_{name}_{suffix}", "stage": "redteam",
                           "target": {"model": {"path": path}, "name": name},
                           "red_lm": [{"model": {"path": model}, "num": 256, "name": suffix,
                                       "generation": red_gen}],
                           "judge": judge, "generation": GEN, "flush_every": 128})
    return {"out": out, "stages": stages}


def collect(out: Path, league: str) -> list[dict]:
    rows = []
    for name, _, eval_dir in targets(league):
        for suffix in ("", "_zero_shot", "_few_shot", "_supervised", "_rl", "_rl_strong",
                       "_rl_diverse"):
            report = out / f"rt_{name}{suffix}" / "report.json"
            if not report.is_file():
                continue
            summary = json.loads(report.read_text())
            evaluation = None
            if eval_dir is not None:
                folder = Path(eval_dir.replace("${eval_dpo.output}", str(out / "eval_dpo")))
                if (folder / "metrics.json").is_file():
                    evaluation = json.loads((folder / "metrics.json").read_text())
            rows.append({"target": name, "method": summary["by_method"][0]["method"],
                         "valid": sum(1 for r in _attempts(out / f"rt_{name}{suffix}")
                                      if r.get("note") != "not a gym request"),
                         "overall": summary["overall"], "by_category": summary["by_category"],
                         "diversity": summary["diversity"],
                         "evasive_rate": evaluation["evasive_rate"] if evaluation else None,
                         "harmless_rate": evaluation["harmless_rate"] if evaluation else None})
    return rows


def _attempts(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "attempts.jsonl").read_text().splitlines()]


def table(rows: list[dict]) -> str:
    head = ("| target | attacks | ASR [95% Wilson] | successes / judged | attacks the gym parses | "
            "self-BLEU / distinct-2 of successes | evasive rate (eval) | harmless rate (eval) |\n"
            "|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        o = r["overall"]
        low, high = o["wilson"]
        ev = "–" if r["evasive_rate"] is None else f"{r['evasive_rate']['mean']:.3f}"
        hl = "–" if r["harmless_rate"] is None else f"{r['harmless_rate']['mean']:.3f}"
        div = r["diversity"][0] if r["diversity"] else {}
        sb, d2 = div.get("self_bleu"), div.get("distinct_2")
        diversity = "–" if sb is None else f"{sb:.2f} / {d2:.2f}"
        lines.append(f"| {r['target']} | {r['method']} | {o['asr']:.3f} [{low:.3f}, {high:.3f}] | "
                     f"{o['successes']} / {o['n']} | {r['valid']} | {diversity} | {ev} | {hl} |")
    return head + "\n".join(lines) + "\n"


def matrix(rows: list[dict]) -> str:
    """ASR [95% Wilson] per target (rows) and attack method (columns)."""
    methods = ["file", "supervised", "rl_strong"]
    cells: dict[str, dict[str, str]] = {}
    for r in rows:
        o = r["overall"]
        cells.setdefault(r["target"], {})[r["method"]] = (
            f"{o['asr']:.3f} [{o['wilson'][0]:.3f}, {o['wilson'][1]:.3f}]")
    head = "| target | " + " | ".join(methods) + " |\n|---|" + "---|" * len(methods) + "\n"
    return head + "\n".join(f"| {t} | " + " | ".join(c.get(m, "–") for m in methods) + " |"
                             for t, c in cells.items()) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """ASR with Wilson intervals per target and method (skipped without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    methods = ["file", "supervised", "rl_strong"]
    names = list(dict.fromkeys(r["target"] for r in rows))
    fig, ax = plt.subplots(figsize=(10, 3.6))
    width = 0.8 / len(methods)
    for k, method in enumerate(methods):
        got = {r["target"]: r["overall"] for r in rows if r["method"] == method}
        xs = [i + (k - 1) * width for i, n in enumerate(names) if n in got]
        asr = [got[n]["asr"] for n in names if n in got]
        low = [got[n]["asr"] - got[n]["wilson"][0] for n in names if n in got]
        high = [got[n]["wilson"][1] - got[n]["asr"] for n in names if n in got]
        ax.bar(xs, asr, width, yerr=[low, high], capsize=2, label=method)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("attack success rate")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/redteam")
    parser.add_argument("--league", default="runs/online2", help="the online league's folder")
    parser.add_argument("--collect", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    if not args.collect:
        run_recipe(out / "redteam.yaml", recipe(str(out), args.league))
    rows = collect(out, args.league)
    (HERE / "results.json").write_text(json.dumps(rows, indent=1))
    (HERE / "results.md").write_text(table(rows) + "\n" + matrix(rows))
    plot(rows, HERE / "asr_by_target.png")
    print(table(rows) + "\n" + matrix(rows))


if __name__ == "__main__":
    main()
