"""Preference-model pretraining in the gym: held-out PM accuracy vs the number of human comparisons,
from the SFT model and from PMP (binarised and ranked) on the gym's forum (Askell et al. 2021, §4).

    python benchmarks/pmp/run.py              # resumable: finished stages are skipped
    python benchmarks/pmp/run.py --collect    # only rebuild results.md / results.json
    python benchmarks/pmp/run.py --collect --split   # + accuracy on benign / harmful pairs apart

Setup: the preference league's gym and SFT model. The forum (``alignlab.gym.forum``, 3000
questions) is written for that gym's world; the first 2500 questions train, the last 500 are held out
(their answer pairs ordered by gold, gold ties dropped: ``forum_eval_gold.jsonl``).
``pmp_binary`` and ``pmp_ranked`` pretrain from the SFT model on the training questions' ranked
pairs (300 steps of 32). Then for each start (sft, pmp_binary,
pmp_ranked) and each n in SIZES, an ``rm`` stage fine-tunes on the first n of the gym's noisy
annotator pairs (``prefs.jsonl``) for the same 125 optimiser steps (4000/n epochs), lr 1e-3.
Accuracy is measured on the 600 held-out ``prefs_eval`` pairs relabelled by the gold reward (gold
ties dropped), so it is accuracy at the true preference, not at the annotators' noisy one.

Askell et al.'s §3 comparison on the forum itself (held-out questions, gold order): ranked preference
modelling (``pmp_ranked``) vs binary discrimination (``forum_binary``: a PM trained only on pairs of
a good answer, vote score >= 1, and a bad one, <= 0, so it never sees the order within the classes)
vs imitation (``forum_imitation``: SFT on each question's top-voted answer, answers then scored by
their mean per-token log-probability).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))
from tables import run_recipe  # noqa: E402

SIZES = (250, 500, 1000, 2000, 4000)
STARTS = ("sft", "pmp_binary", "pmp_ranked")
GYM, SFT = "runs/league/gym", "runs/league/sft/model"
TRAIN = {"learning_rate": 1e-3, "batch_size": 32, "max_length": 96, "max_prompt_length": 64,
         "log_every": 25, "warmup_ratio": 0.05, "seed": 0}


def prepare(out: Path) -> None:
    """The forum for the league gym's world and the gold-labelled held-out pairs."""
    from alignlab.data.records import messages_from_list
    from alignlab.gym import load_gym
    from alignlab.gym.forum import write_forum

    gym = load_gym(GYM)
    if not (out / "forum.jsonl").is_file():
        print("forum:", write_forum(out / "forum.jsonl", gym.world, gym.info["seed"]))
        split_forum(out)
    if not (out / "prefs_eval_gold.jsonl").is_file():
        rows, ties = [], 0
        for line in (Path(GYM) / "data" / "prefs_eval.jsonl").read_text().splitlines():
            row = json.loads(line)
            prompt = messages_from_list(row["prompt"])
            a, b = (gym.score(prompt, row[k]).reward for k in ("chosen", "rejected"))
            ties += a == b
            if a != b:
                chosen, rejected = (row["chosen"], row["rejected"]) if a > b else \
                    (row["rejected"], row["chosen"])
                rows.append({"prompt": row["prompt"], "chosen": chosen, "rejected": rejected})
        (out / "prefs_eval_gold.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"gold eval pairs: {len(rows)} ({ties} gold ties dropped)")


def split_forum(out: Path, train: int = 2500) -> None:
    """forum_train.jsonl (the first questions), forum_binary.jsonl (their good-vs-bad pairs) and
    forum_eval_gold.jsonl (the held-out questions' answer pairs in gold order, ties dropped)."""
    from alignlab.data.pmp import vote_score

    rows = [json.loads(line) for line in (out / "forum.jsonl").read_text().splitlines()]
    (out / "forum_train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:train]))
    binary, gold = [], []
    for row in rows[:train]:
        scores = [vote_score(a["upvotes"], a["accepted"]) for a in row["answers"]]
        binary += [{"prompt": row["question"], "chosen": a["text"], "rejected": b["text"]}
                   for a, sa in zip(row["answers"], scores) if sa >= 1
                   for b, sb in zip(row["answers"], scores) if sb <= 0]
    for row in rows[train:]:
        answers = row["answers"]
        gold += [{"prompt": row["question"], "chosen": a["text"], "rejected": b["text"]}
                 for a in answers for b in answers if a["gold"] > b["gold"]]
    (out / "forum_binary.jsonl").write_text("".join(json.dumps(r) + "\n" for r in binary))
    (out / "forum_eval_gold.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gold))
    print(f"forum: {train} training questions ({len(binary)} good-vs-bad pairs), "
          f"{len(gold)} held-out gold pairs")


def recipe(out: Path) -> dict:
    stages = [{"name": name, "stage": "pmp", "model": {"path": SFT}, "binarize": binarize,
               "data": {"path": str(out / "forum_train.jsonl"), "format": "stackexchange"},
               "eval_fraction": 0.05, "train": {**TRAIN, "max_steps": 300}}
              for name, binarize in (("pmp_binary", True), ("pmp_ranked", False))]
    for start in STARTS:
        model = SFT if start == "sft" else f"${{{start}.output}}"
        for n in SIZES:
            stages.append({"name": f"rm_{start}_{n}", "stage": "rm", "model": {"path": model},
                           "data": {"path": f"{GYM}/data/prefs.jsonl", "limit": n},
                           "eval_data": {"path": str(out / "prefs_eval_gold.jsonl")},
                           "train": {**TRAIN, "epochs": 4000 / n}})
    return {"out": str(out), "stages": stages + forum_stages(out)}


def forum_stages(out: Path) -> list[dict]:
    """Ranked PM vs binary discrimination vs imitation, scored on the held-out forum gold pairs."""
    held = {"path": str(out / "forum_eval_gold.jsonl")}
    pairs = {"max_length": 96, "max_prompt_length": 64, "batch_size": 64}
    stages = [{"name": "forum_binary", "stage": "rm", "model": {"path": SFT},
               "data": {"path": str(out / "forum_binary.jsonl")}, "eval_fraction": 0.0,
               "train": {**TRAIN, "max_steps": 300}},
              {"name": "forum_imitation", "stage": "sft", "model": {"path": SFT},
               "data": {"path": str(out / "forum_train.jsonl"), "format": "stackexchange"},
               "train": {**TRAIN, "learning_rate": 5e-4, "epochs": 2}}]
    for name in ("pmp_ranked", "forum_binary"):
        stages.append({"name": f"forum_eval_{name}", "stage": "eval",
                       "reward_model": {"path": f"${{{name}.output}}"},
                       "pairs": {"data": held, "scorer": "reward_model", **pairs}})
    stages.append({"name": "forum_eval_forum_imitation", "stage": "eval",
                   "policy": {"path": "${forum_imitation.output}"},
                   "pairs": {"data": held, "scorer": "implicit", "average": True, **pairs}})
    return stages


def collect(out: Path) -> dict:
    table = {}
    for start in STARTS:
        for n in SIZES:
            f = out / f"rm_{start}_{n}" / "eval.json"
            if f.is_file():
                e = json.loads(f.read_text())
                se = math.sqrt(e["accuracy"] * (1 - e["accuracy"]) / e["n"])
                table.setdefault(start, {})[n] = {"accuracy": e["accuracy"], "se": se, "n": e["n"]}
    pmp = {name: json.loads((out / name / "eval.json").read_text())
           for name in ("pmp_binary", "pmp_ranked") if (out / name / "eval.json").is_file()}
    forum = {}
    for name in ("pmp_ranked", "forum_binary", "forum_imitation"):
        f = out / f"forum_eval_{name}" / "pairs.json"
        if f.is_file():
            forum[name] = json.loads(f.read_text())
    return {"curve": table, "pmp_eval": pmp, "forum": forum}


def split_accuracy(out: Path) -> dict:
    """Each fine-tuned PM's gold-pair accuracy on benign and on harmful prompts separately (the
    forum has only benign questions, so that is where PMP could help)."""
    from alignlab.data.records import messages_from_list
    from alignlab.eval.winrate import load_reward_judge
    from alignlab.gym import load_gym
    from alignlab.gym.world import parse_prompt

    gym = load_gym(GYM)
    pairs = [json.loads(line) for line in (out / "prefs_eval_gold.jsonl").read_text().splitlines()]
    prompts = [messages_from_list(p["prompt"]) for p in pairs]
    harmful = [parse_prompt(gym.world, p).harmful for p in prompts]
    table = {}
    for start in STARTS:
        for n in SIZES:
            model = out / f"rm_{start}_{n}" / "model"
            if not model.is_dir():
                continue
            judge = load_reward_judge(str(model), batch_size=64)
            chosen = judge.score(prompts, [p["chosen"] for p in pairs])
            rejected = judge.score(prompts, [p["rejected"] for p in pairs])
            right = [c > r for c, r in zip(chosen, rejected)]
            for kind, flag in (("benign", False), ("harmful", True)):
                hits = [ok for ok, h in zip(right, harmful) if h == flag]
                acc = sum(hits) / len(hits)
                table.setdefault(kind, {}).setdefault(start, {})[n] = {
                    "accuracy": acc, "se": math.sqrt(acc * (1 - acc) / len(hits)), "n": len(hits)}
    return table


def markdown(results: dict) -> str:
    head = "| start | " + " | ".join(f"n = {n}" for n in SIZES) + " |\n"
    head += "|---" * (len(SIZES) + 1) + "|\n"
    lines = []
    for start, row in results["curve"].items():
        cells = [f"{row[n]['accuracy']:.3f} ± {row[n]['se']:.3f}" if n in row else "–"
                 for n in SIZES]
        lines.append(f"| {start} | " + " | ".join(cells) + " |")
    text = head + "\n".join(lines) + "\n"
    for kind, curve in results.get("by_prompt_kind", {}).items():
        text += "\n" + markdown({"curve": curve}).replace("| start |", f"| start ({kind} pairs) |")
    if results.get("forum"):
        text += ("\n| method on the forum (held-out questions, gold order) | accuracy |\n"
                 "|---|---|\n")
        for name, m in results["forum"].items():
            a = m["accuracy"]
            text += f"| {name} | {a['mean']:.3f} ± {a['se']:.3f} (n = {a['n']}) |\n"
    return text


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for start, row in results["curve"].items():
        ns = sorted(row)
        ax.errorbar(ns, [row[n]["accuracy"] for n in ns], [row[n]["se"] for n in ns],
                    marker="o", capsize=3, label=start)
    ax.set_xscale("log")
    ax.set_xticks(SIZES, [str(n) for n in SIZES])
    ax.minorticks_off()
    ax.set_xlabel("human comparisons for PM fine-tuning")
    ax.set_ylabel("held-out accuracy (gold labels)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/pmp")
    parser.add_argument("--collect", action="store_true")
    parser.add_argument("--split", action="store_true",
                        help="also score every fine-tuned PM on benign and harmful pairs apart")
    args = parser.parse_args()
    out = Path(args.out)
    if not args.collect:
        out.mkdir(parents=True, exist_ok=True)
        prepare(out)
        run_recipe(out / "pmp.yaml", recipe(out))
    results = collect(out)
    if args.split:
        results["by_prompt_kind"] = split_accuracy(out)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "results.json").write_text(json.dumps(results, indent=1))
    (HERE / "results" / "results.md").write_text(markdown(results))
    if results["curve"]:
        plot(results, HERE / "results" / "pmp_curve.png")
    print(markdown(results))


if __name__ == "__main__":
    main()
