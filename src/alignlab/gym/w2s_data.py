"""Weak-to-strong task data: classification and pairwise tasks on train-pool prompts, labelled by gold.

Written by every gym build into ``data/w2s/`` (deterministic for the seed, pure Python, 1–2 s on
a 2-core machine). Every label comes from the gold scorer (:func:`alignlab.gym.gold.score`), never
from the style a response was rendered in:

* ``helpful.jsonl`` — ``{"prompt", "response", "label"}`` on benign prompts; label 1 iff the response
  is helpful (:func:`~alignlab.gym.gold.is_helpful`: the right answer, padded or not). Half the rows
  are drawn helpful; of the rest :data:`HELPFUL_NEGATIVES` are wrong answers. Right and wrong answers
  are padded with filler sentences at the same rate (:data:`PAD_RATE`), so form alone separates only
  the refusals (about 60 % accuracy); the rest needs the world's facts, sums and counts.
* ``style.jsonl`` — the same row form on all prompts; label = index of the gold style in
  :data:`STYLE_CLASSES`. The style is drawn uniformly, then a prompt it applies to. Needless and
  evasive refusals share their text (the prompt decides), correct and wrong answers their form.
* ``prefs_gold.jsonl`` — alignlab pairs (label 1.0): two responses drawn from the base corpus's style
  rates (:data:`alignlab.gym.corpus.BASE_RATES`, wrong answers padded as above); ``chosen`` has the
  strictly higher gold reward; gold ties are dropped and counted.
* ``tasks.json`` — per task: kind (``classify`` / ``pairwise``), file, classes, counts and balance.

Prompts come from the train pool only, drawn with replacement: a prompt may appear in several rows
with different responses (the facts of the world are shared by design). Splitting into train and test
is the w2s stage's job.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alignlab.data.records import Messages, messages_to_list
from alignlab.gym.corpus import BASE_RATES, sample_style
from alignlab.gym.gold import is_helpful, score_task
from alignlab.gym.styles import FILLERS, STYLES, render_style
from alignlab.gym.world import Task, World, parse_prompt

HELPFUL_CLASSES = ("unhelpful", "helpful")
STYLE_CLASSES = tuple(s for s in STYLES if s != "off_grammar")
W2S_SIZES = {"helpful": 4000, "style": 4000, "prefs_gold": 4000}
PAD_RATE = 0.4
HELPFUL_NEGATIVES = {"wrong": 0.8, "needless_refusal": 0.1, "explained_refusal": 0.1}
BENIGN_ONLY = ("correct", "verbose", "wrong", "needless_refusal")
HARMFUL_ONLY = ("evasive_refusal", "harmful_compliance")

Prompt = tuple[Task, Messages]


def pad_with_fillers(rng: random.Random, sentence: str) -> str:
    """``sentence`` with 1–3 filler sentences, some before it and the rest after (as ``verbose``)."""
    k = rng.randint(1, 3)
    fillers = rng.sample(FILLERS, k)
    split = rng.randint(0, k)
    return " ".join(fillers[:split] + [sentence] + fillers[split:])


def render_response(rng: random.Random, world: World, task: Task, style: str) -> str:
    """Text of ``style``; a wrong answer is padded with probability :data:`PAD_RATE`, so that padding
    says nothing about correctness (``verbose`` is the padded right answer)."""
    text = render_style(rng, world, task, style)
    if style == "wrong" and rng.random() < PAD_RATE:
        text = pad_with_fillers(rng, text)
    return text


def helpful_style(rng: random.Random) -> str:
    """A style for the helpful task: half helpful (correct, or verbose at the padding rate), half
    drawn from :data:`HELPFUL_NEGATIVES`."""
    if rng.random() < 0.5:
        return "verbose" if rng.random() < PAD_RATE else "correct"
    return rng.choices(list(HELPFUL_NEGATIVES), weights=list(HELPFUL_NEGATIVES.values()))[0]


def helpful_rows(rng: random.Random, world: World, benign: Sequence[Prompt], n: int
                 ) -> tuple[list[dict[str, Any]], Counter]:
    """``n`` helpful-task rows on benign prompts and the count of gold styles."""
    rows, styles = [], Counter()
    for _ in range(n):
        task, prompt = rng.choice(benign)
        response = render_response(rng, world, task, helpful_style(rng))
        gold = score_task(world, task, response)
        styles[gold.style] += 1
        rows.append({"prompt": messages_to_list(prompt), "response": response,
                     "label": int(is_helpful(gold))})
    return rows, styles


def style_rows(rng: random.Random, world: World, benign: Sequence[Prompt],
               harmful: Sequence[Prompt], n: int) -> list[dict[str, Any]]:
    """``n`` style-task rows: a style uniform over :data:`STYLE_CLASSES`, then a prompt it fits."""
    rows = []
    for _ in range(n):
        style = rng.choice(STYLE_CLASSES)
        pool = benign if style in BENIGN_ONLY else harmful if style in HARMFUL_ONLY else None
        task, prompt = rng.choice(pool) if pool else rng.choice(rng.choice((benign, harmful)))
        response = render_response(rng, world, task, style)
        rows.append({"prompt": messages_to_list(prompt), "response": response,
                     "label": class_index(score_task(world, task, response).style)})
    return rows


def class_index(style: str) -> int:
    """Index of a gold style in :data:`STYLE_CLASSES` (an off-grammar row here is a bug)."""
    if style not in STYLE_CLASSES:
        raise RuntimeError(f"w2s data rendered a response the gold scorer reads as {style!r}")
    return STYLE_CLASSES.index(style)


def distinct_pair(rng: random.Random, world: World, task: Task, tries: int = 50) -> tuple[str, str]:
    """Two base-rate responses, different texts when ``tries`` draws allow."""
    a = render_response(rng, world, task, sample_style(rng, task, BASE_RATES))
    b = a
    for _ in range(tries):
        b = render_response(rng, world, task, sample_style(rng, task, BASE_RATES))
        if b != a:
            break
    return a, b


def gold_pair_rows(rng: random.Random, world: World, prompts: Sequence[Prompt], n: int
                   ) -> tuple[list[dict[str, Any]], Counter]:
    """``n`` pairs whose ``chosen`` has the strictly higher gold reward; counts of the benign pairs
    kept and of the gold ties dropped."""
    rows, counts = [], Counter()
    while len(rows) < n:
        task, prompt = rng.choice(prompts)
        a, b = distinct_pair(rng, world, task)
        ga, gb = score_task(world, task, a).reward, score_task(world, task, b).reward
        if ga == gb:
            counts["ties"] += 1
            continue
        counts["benign"] += not task.harmful
        chosen, rejected = (a, b) if ga > gb else (b, a)
        rows.append({"prompt": messages_to_list(prompt), "chosen": chosen, "rejected": rejected,
                     "label": 1.0})
    return rows, counts


def classify_info(file: str, classes: Sequence[str], labels: Sequence[int]) -> dict[str, Any]:
    """tasks.json entry of a classification task: classes, counts and balance."""
    counts = Counter(labels)
    n = max(len(labels), 1)
    return {"kind": "classify", "file": file, "classes": list(classes), "num_classes": len(classes),
            "count": len(labels), "class_counts": [counts[i] for i in range(len(classes))],
            "class_balance": [round(counts[i] / n, 4) for i in range(len(classes))],
            "majority_rate": round(max(counts.values(), default=0) / n, 4)}


def pairwise_info(file: str, rows: Sequence[dict[str, Any]], counts: Counter) -> dict[str, Any]:
    """tasks.json entry of the pairwise task: counts, gold ties dropped, the benign fraction and
    how often ``chosen`` is the longer text (the accuracy of a length heuristic)."""
    n = max(len(rows), 1)
    longer = sum(len(r["chosen"]) > len(r["rejected"]) for r in rows)
    return {"kind": "pairwise", "file": file, "num_classes": 2, "count": len(rows),
            "pairs_drawn": len(rows) + counts["ties"], "ties_dropped": counts["ties"],
            "benign_fraction": round(counts["benign"] / n, 4),
            "chosen_longer_fraction": round(longer / n, 4)}


def write_rows(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """One JSON object per line."""
    with open(path, "w") as fh:
        fh.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_w2s_data(folder: str | Path, world: World, train_prompts: Sequence[Messages], seed: int,
                   sizes: dict[str, int] | None = None) -> dict[str, Any]:
    """Write the three task files and ``tasks.json`` under ``folder``; return the tasks.json dict.

    ``train_prompts`` must be the gym's train pool; each task draws from its own seeded stream, so a
    file does not change when another task's size does."""
    sizes = {**W2S_SIZES, **(sizes or {})}
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    tasks = [(parse_prompt(world, p), p) for p in train_prompts]
    benign = [t for t in tasks if not t[0].harmful]
    harmful = [t for t in tasks if t[0].harmful]
    helpful, helpful_styles = helpful_rows(random.Random(f"w2s-helpful-{seed}"), world, benign,
                                           sizes["helpful"])
    style = style_rows(random.Random(f"w2s-style-{seed}"), world, benign, harmful, sizes["style"])
    pairs, pair_counts = gold_pair_rows(random.Random(f"w2s-prefs-{seed}"), world, tasks,
                                        sizes["prefs_gold"])
    info = {"seed": seed, "prompts": "train pool, with replacement",
            "helpful": {**classify_info("helpful.jsonl", HELPFUL_CLASSES,
                                        [r["label"] for r in helpful]),
                        "gold_styles": dict(helpful_styles.most_common())},
            "style": classify_info("style.jsonl", STYLE_CLASSES, [r["label"] for r in style]),
            "prefs_gold": pairwise_info("prefs_gold.jsonl", pairs, pair_counts)}
    for name, rows in (("helpful", helpful), ("style", style), ("prefs_gold", pairs)):
        write_rows(out / f"{name}.jsonl", rows)
    (out / "tasks.json").write_text(json.dumps(info, indent=2))
    return info
