"""Mixed IFT + EFT seed data for the self-rewarding M1 in the gym (Yuan et al. 2024, sec. 3.1).

    OMP_NUM_THREADS=1 python benchmarks/sampling/eft_data.py

IFT: the gym's SFT conversations (``data/sft.jsonl``). EFT: ``NUM_EFT`` of the gym's rated single
responses (``data/rated.jsonl``, the annotator's noisy ratings, never the gold reward) turned into
judge conversations by :func:`alignlab.feedback.self_reward.eft_conversations` with the compact
rubric of ``recipes/gym-sampling/self_rewarding.yaml`` (read from the recipe, so the judge trained
here sees the prompt it is asked at sampling time). Both are shuffled together with ``SEED`` and
written as ``{"messages": [...]}`` rows (what the ``sft`` stage reads) to ``OUT``; ``OUT``'s
``.stats.json`` counts the EFT scores and, with the base model's tokenizer and the truncation of
``recipes/gym-sampling/self_rewarding_eft.yaml``'s ``sft`` stage, how many judge prompts or
``Score: N`` targets would be cut. Nothing to pass: the paths are the constants below.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import yaml

from alignlab.data.rated import RatedDataSettings, load_rated
from alignlab.data.records import messages_to_list
from alignlab.feedback.self_reward import eft_conversations, eft_fit

GYM = Path("runs/league/gym")
JUDGE_RECIPE = Path("recipes/gym-sampling/self_rewarding.yaml")
EFT_RECIPE = Path("recipes/gym-sampling/self_rewarding_eft.yaml")
OUT = Path("runs/gym-eft-data/sft_ift_eft.jsonl")
NUM_EFT = 2000
SEED = 0


def recipe_stage(recipe: Path, kind: str) -> dict:
    """The first stage of ``recipe`` whose ``stage`` is ``kind``."""
    return next(s for s in yaml.safe_load(recipe.read_text())["stages"] if s["stage"] == kind)


def judge_template(recipe: Path) -> str:
    """The ``template`` of the recipe's first ``self_reward`` scorer."""
    scorers = recipe_stage(recipe, "sample")["scorers"]
    return next(s["template"] for s in scorers if s["kind"] == "self_reward")


def mixed_rows(ift: list[dict], eft: list, num_eft: int, seed: int) -> tuple[list[dict], list]:
    """IFT rows plus ``num_eft`` EFT conversations drawn with ``seed``, shuffled with ``seed``;
    also the EFT conversations drawn."""
    rng = random.Random(seed)
    drawn = rng.sample(eft, min(num_eft, len(eft)))
    rows = ift + [{"messages": messages_to_list(c.messages)} for c in drawn]
    rng.shuffle(rows)
    return rows, drawn


def fit_counts(drawn: list, recipe: Path) -> dict:
    """Token lengths of the drawn EFT conversations and how many the recipe's ``sft`` truncation
    cuts (:func:`alignlab.feedback.self_reward.eft_fit`)."""
    from transformers import AutoTokenizer

    train = recipe_stage(recipe, "sft")["train"]
    tokenizer = AutoTokenizer.from_pretrained(GYM / "base_model")
    fits = [eft_fit(tokenizer, c, train["max_length"], train["max_prompt_length"]) for c in drawn]
    return {"max_length": train["max_length"], "max_prompt_length": train["max_prompt_length"],
            "longest_tokens": max(f["tokens"] for f in fits),
            "target_cut": sum(f["target_cut"] for f in fits),
            "prompt_cut": sum(f["prompt_cut"] for f in fits)}


def main() -> None:
    ift = [json.loads(line) for line in (GYM / "data/sft.jsonl").read_text().splitlines()]
    rated = load_rated(RatedDataSettings(path=str(GYM / "data/rated.jsonl"))).records
    eft = eft_conversations(rated, judge_template(JUDGE_RECIPE))
    rows, drawn = mixed_rows(ift, eft, NUM_EFT, SEED)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("".join(json.dumps(r) + "\n" for r in rows))
    stats = {"ift": len(ift), "eft": len(drawn), "rated": len(rated),
             "eft_scores": dict(sorted(Counter(c.messages[-1].content for c in drawn).items())),
             **fit_counts(drawn, EFT_RECIPE)}
    OUT.with_suffix(".stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
