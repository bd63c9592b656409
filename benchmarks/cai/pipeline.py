"""Constitutional AI in the gym vs the same pipeline with simulated human labels.

    python benchmarks/cai/pipeline.py             # feedback model + recipe (resumable), then tables
    python benchmarks/cai/pipeline.py --collect   # only rebuild results.json / results.md

Steps: ``alignlab gym feedback`` (the gym's feedback model, see alignlab.gym.feedback), then
``alignlab run recipes/gym-cai/pipeline.yaml`` (SL-CAI = critique -> revision + SFT; RL-CAI = AI
labels on the gym's 4000 preference pairs -> reward model -> RLOO; baseline: the same reward model
and RLOO on the crowd's labels of the same pairs). Every subprocess runs under ``nice -n 5`` with
``OMP_NUM_THREADS`` from the environment (default 1: the machine is shared).

Besides the evaluations it measures, with the gym's gold reward: what the critique -> revision step
did to the SFT policy's answers on the train prompts; the gold agreement of the AI labels and of the
crowd's labels on the same 4000 pairs; and the gold accuracy of both reward models on the 600
held-out pairs (``prefs_eval.jsonl``; gold ties excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from labels import gold_truth, judge_stats, prompt_of, read_jsonl

ROOT = HERE.parents[1]
GYM = Path("runs/league/gym")
OUT = Path("runs/cai")
RECIPE = ROOT / "recipes" / "gym-cai" / "pipeline.yaml"
POLICIES = [("sft", "eval_sft"), ("sl-cai", "eval_sl_cai"), ("rl-cai (AI-labelled PM)", "eval_rl_ai"),
            ("rl from sl-cai, human-labelled PM", "eval_rl_human")]
NICE = ["nice", "-n", "5", sys.executable, "-m", "alignlab.cli"]


def run(args: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    print("+", " ".join(args), flush=True)
    subprocess.run(NICE + args, check=True, env=env)


def build() -> None:
    run(["gym", "feedback", "--gym", str(GYM), "--out", str(OUT / "feedback")])
    run(["run", str(RECIPE)])


# ----------------------------------------------------------------------------- gold analyses


def revision_effect(gym, rows: list[dict]) -> dict:
    """Gold reward of the initial answers and of the final revisions, and the style transitions."""
    init, final, moves = [], [], Counter()
    for row in rows:
        prompt = prompt_of(row)
        a, b = gym.score(prompt, row["initial"]), gym.score(prompt, row["final"])
        init.append(a.reward)
        final.append(b.reward)
        moves[f"{a.style} -> {b.style}"] += 1
    n = len(rows)
    return {"prompts": n, "gold_initial": round(sum(init) / n, 4), "gold_final": round(sum(final) / n, 4),
            "improved": round(sum(b > a for a, b in zip(init, final)) / n, 4),
            "worse": round(sum(b < a for a, b in zip(init, final)) / n, 4),
            "unchanged_text": round(sum(r["initial"] == r["final"] for r in rows) / n, 4),
            "top_transitions": dict(moves.most_common(12))}


def crowd_agreement(gym, pairs: Path) -> dict:
    truth = [gold_truth(gym, row) for row in read_jsonl(pairs)]
    decided = [t for t in truth if t != 0.5]
    return {"pairs": len(truth), "gold_ties_excluded": len(truth) - len(decided),
            "agreement": round(sum(decided) / len(decided), 4)}


def pm_gold_accuracy(gym, pm: Path, pairs: Path) -> dict:
    """Share of held-out pairs (gold ties excluded) where the PM scores the gold-better reply higher."""
    import torch

    from alignlab.config import ScorerSettings
    from alignlab.rl.scorers import reward_model_scorer

    rows = [r for r in read_jsonl(pairs) if gold_truth(gym, r) != 0.5]
    scorer = reward_model_scorer(ScorerSettings(kind="reward_model", path=str(pm), batch_size=64),
                                 torch.device("cpu"), "pm")
    prompts = [prompt_of(r) for r in rows]
    chosen = scorer.score(prompts, [r["chosen"] for r in rows])
    rejected = scorer.score(prompts, [r["rejected"] for r in rows])
    right = [(c > r) == (gold_truth(gym, row) == 1.0) for c, r, row in zip(chosen, rejected, rows)]
    return {"pairs": len(rows), "gold_accuracy": round(sum(right) / len(rows), 4)}


def style_shares(samples: Path) -> dict:
    """Share of each gold style among the evaluation samples, separately on harmful and benign prompts."""
    counts: dict[str, Counter] = {"harmful": Counter(), "benign": Counter()}
    for row in read_jsonl(samples):
        counts["harmful" if row["harmful_prompt"] else "benign"][row["style"]] += 1
    return {kind: {style: round(n / sum(c.values()), 3) for style, n in c.most_common()}
            for kind, c in counts.items()}


def stage_seconds(folder: Path) -> float | None:
    """The last timestamp of a run folder's log.txt (wall seconds of its last run)."""
    log = folder / "log.txt"
    if not log.is_file():
        return None
    last = [line for line in log.read_text().splitlines() if line.startswith("[")][-1]
    return float(last[1:last.index("s]")])


def collect(gym_dir: Path, out: Path) -> dict:
    from alignlab.gym import load_gym

    gym = load_gym(gym_dir)
    results: dict = {"policies": {}}
    for name, folder in POLICIES:
        file = out / folder / "metrics.json"
        if file.is_file():
            results["policies"][name] = json.loads(file.read_text())
            results.setdefault("styles", {})[name] = style_shares(out / folder / "samples.jsonl")
    results["revision"] = revision_effect(gym, read_jsonl(out / "revise" / "revisions.jsonl"))
    results["revise_stats"] = json.loads((out / "revise" / "revise_stats.json").read_text())
    results["ai_labels_on_prefs"] = judge_stats(gym, out / "label_ai" / "labels.jsonl")
    results["crowd_labels_on_prefs"] = crowd_agreement(gym, gym_dir / "data" / "prefs.jsonl")
    held_out = gym_dir / "data" / "prefs_eval.jsonl"
    results["pm_gold_accuracy"] = {name: pm_gold_accuracy(gym, out / name / "model", held_out)
                                   for name in ("pm_ai", "pm_human")}
    results["pm_eval_vs_crowd"] = {name: json.loads((out / name / "eval.json").read_text())
                                   for name in ("pm_ai", "pm_human") if (out / name / "eval.json").is_file()}
    import yaml

    stages = [st["name"] for st in yaml.safe_load(RECIPE.read_text())["stages"]]
    folders = ["feedback/general", "feedback/focus", "feedback"] + stages
    results["seconds"] = {name: stage_seconds(out / name) for name in folders}
    return results


# ----------------------------------------------------------------------------- tables


def cell(stat: dict, digits: int = 3) -> str:
    return f"{stat['mean']:.{digits}f} ± {stat['se']:.{digits}f}"


def policy_table(policies: dict) -> str:
    lines = ["| policy | gold reward | harmless | evasive refusal | helpful | off-grammar | KL to SFT |",
             "|---|---|---|---|---|---|---|"]
    for name, m in policies.items():
        lines.append(f"| {name} | {cell(m['gold_reward'])} | {cell(m['harmless_rate'])} | "
                     f"{cell(m['evasive_rate'])} | {cell(m['helpful_rate'])} | "
                     f"{cell(m['off_grammar_rate'])} | {cell(m['kl'], 2)} |")
    return "\n".join(lines) + "\n"


def styles_table(styles: dict) -> str:
    harmful = ["explained_refusal", "evasive_refusal", "harmful_compliance", "off_grammar"]
    benign = ["correct", "verbose", "wrong", "needless_refusal", "explained_refusal", "off_grammar"]
    head = ("| policy | " + " | ".join(f"harmful: {s}" for s in harmful) + " | "
            + " | ".join(f"benign: {s}" for s in benign) + " |\n|---" + "|---" * (len(harmful) + len(benign))
            + "|\n")
    rows = [f"| {name} | " + " | ".join(f"{st['harmful'].get(s, 0):.3f}" for s in harmful) + " | "
            + " | ".join(f"{st['benign'].get(s, 0):.3f}" for s in benign) + " |"
            for name, st in styles.items()]
    return head + "\n".join(rows) + "\n"


def labels_table(results: dict) -> str:
    ai, crowd = results["ai_labels_on_prefs"], results["crowd_labels_on_prefs"]
    pm = results["pm_gold_accuracy"]
    return ("| labels of the 4000 train pairs | gold agreement (ties excluded) | PM gold accuracy, 600 "
            "held-out pairs |\n|---|---|---|\n"
            f"| AI (feedback model, both orders) | {ai['agreement_both_orders']:.3f} "
            f"({ai['pairs'] - ai['gold_ties_excluded']} pairs) | {pm['pm_ai']['gold_accuracy']:.3f} "
            f"({pm['pm_ai']['pairs']}) |\n"
            f"| simulated crowd | {crowd['agreement']:.3f} ({crowd['pairs'] - crowd['gold_ties_excluded']} "
            f"pairs) | {pm['pm_human']['gold_accuracy']:.3f} ({pm['pm_human']['pairs']}) |\n")


def revision_table(rev: dict) -> str:
    summary = (f"Critique -> revision on {rev['prompts']} train prompts: mean gold "
               f"{rev['gold_initial']:+.3f} (SFT answers) -> {rev['gold_final']:+.3f} (revisions); improved "
               f"{rev['improved']:.1%}, worse {rev['worse']:.1%}, text unchanged {rev['unchanged_text']:.1%}.")
    lines = [summary, "",
             "| initial style -> revised style | count |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rev["top_transitions"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collect", action="store_true", help="only collect finished results")
    args = parser.parse_args()
    if not args.collect:
        build()
    results = collect(GYM, OUT)
    (HERE / "results.json").write_text(json.dumps(results, indent=1))
    text = (policy_table(results["policies"]) + "\n" + styles_table(results["styles"]) + "\n"
            + labels_table(results) + "\n"
            + revision_table(results["revision"]))
    (HERE / "results.md").write_text(text)
    print(text)
    print("seconds per stage:", results["seconds"])


if __name__ == "__main__":
    main()
