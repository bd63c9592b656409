"""Gym styles of the reward model's best-of-N picks against all samples, from a ``sample`` run.

    python benchmarks/sampling/pick_styles.py runs/gym-pm-robustness/sample/samples.jsonl \
        --gym runs/league/gym

What a proxy over-rates is visible in the styles it picks (off-grammar text, wrong answers, ...).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from alignlab.data.records import messages_from_list
from alignlab.gym import load_gym


def style_mix(samples_path: str, gym_path: str) -> dict[str, dict[str, float]]:
    """Share of each gold style over all samples and over each prompt's highest-scored sample."""
    gym = load_gym(gym_path)
    every, picks = Counter(), Counter()
    for line in Path(samples_path).read_text().splitlines():
        row = json.loads(line)
        prompt = messages_from_list(row["prompt"])
        samples = row["samples"]
        styles = [gym.score(prompt, s["text"]).style for s in samples]
        every.update(styles)
        picks[styles[max(range(len(samples)), key=lambda i: samples[i]["score"])]] += 1
    n_all, n_picks = sum(every.values()), sum(picks.values())
    return {style: {"all": every[style] / n_all, "best_of_n": picks[style] / n_picks}
            for style in sorted(every, key=lambda s: -picks[s])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("samples")
    parser.add_argument("--gym", required=True)
    args = parser.parse_args()
    print("| style | all samples | best-of-N picks |\n|---|---|---|")
    for style, share in style_mix(args.samples, args.gym).items():
        print(f"| {style} | {share['all']:.3f} | {share['best_of_n']:.3f} |")


if __name__ == "__main__":
    main()
