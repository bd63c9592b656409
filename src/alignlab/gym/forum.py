"""The gym's forum: vote-scored questions and answers for preference-model pretraining (PMP).

Askell et al. 2021 ("A General Language Assistant as a Laboratory for Alignment", §4) pretrain
preference models on Stack Exchange, Reddit and Wikipedia edits — data that is plentiful, scored by
votes rather than by the crowdworkers who later label assistant replies, and drawn from another
distribution than the assistant conversations. The forum is that for the gym:

* **Questions** are benign requests about the same world (facts, sums, counts; no harmful
  requests, as a Q&A site has few), wrapped in forum phrasing (:data:`OPENERS`, :data:`CLOSERS`)
  and posted as one user turn: a different prompt distribution from the assistant's. Only
  train-side requests are used (:func:`alignlab.gym.world.is_eval_request`), so no held-out
  assistant request appears.
* **Answers**: 2–5 per question, styles drawn from :data:`FORUM_RATES` (more right and wrong
  answers and fewer refusals than the assistant data), rendered as in the weak-to-strong data
  (wrong answers padded with fillers at the same rate as right ones).
* **Votes** are noisy and correlated with the answer's gold quality q (its gold reward on this
  benign question): net upvotes = Poisson(e^(a + b·q)) − Poisson(e^(−a' − b·q)), and with
  probability :data:`ACCEPT_RATE` the asker accepts one answer, drawn with probability ∝ e^q.

``data/forum.jsonl`` rows are Stack Exchange-like — ``{"question", "answers": [{"text",
"upvotes", "accepted", "gold"}]}`` — read by ``data.format: stackexchange`` (``gold`` is there for
analysis; readers ignore it). :func:`vote_gold_agreement` measures how often the Askell vote score
orders two answers as their gold quality does.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alignlab.data.pmp import ranked_pairs, vote_score
from alignlab.gym.gold import score_task
from alignlab.gym.w2s_data import render_response
from alignlab.gym.world import World, is_eval_request, sample_benign

OPENERS = ("Forum question: ", "Posted in the help forum: ", "Can anyone here answer this? ",
           "Long-time reader, first post. ", "Quick one for the community: ")
CLOSERS = ("", " Thanks in advance!", " Any help is appreciated.", " Asking for a school project.")
FORUM_RATES = {"correct": 0.3, "verbose": 0.2, "wrong": 0.35, "needless_refusal": 0.05,
               "explained_refusal": 0.1}
FAMILIES = {"fact": 0.5, "add": 0.25, "count": 0.25}
UP_BASE, DOWN_BASE, VOTE_SLOPE = 0.3, 0.6, 0.4
ACCEPT_RATE = 0.5
FORUM_SIZE = 3000


def poisson(rng: random.Random, lam: float) -> int:
    """A Poisson draw by Knuth's product of uniforms (fine for the small rates used here)."""
    limit, k, prod = math.exp(-lam), 0, rng.random()
    while prod > limit:
        k += 1
        prod *= rng.random()
    return k


def net_votes(rng: random.Random, quality: float) -> int:
    """Upvotes minus downvotes of an answer of gold quality ``quality`` (module docstring)."""
    up = poisson(rng, math.exp(UP_BASE + VOTE_SLOPE * quality))
    return up - poisson(rng, math.exp(-DOWN_BASE - VOTE_SLOPE * quality))


def forum_question(rng: random.Random, world: World, seed: int) -> dict[str, Any]:
    """One question (a train-side benign request in forum phrasing) with 2–5 scored answers."""
    while True:
        family = rng.choices(list(FAMILIES), weights=list(FAMILIES.values()))[0]
        task, text = sample_benign(rng, world, family)
        if not is_eval_request(text, seed):
            break
    answers, seen = [], set()
    for _ in range(rng.randint(2, 5)):
        style = rng.choices(list(FORUM_RATES), weights=list(FORUM_RATES.values()))[0]
        reply = render_response(rng, world, task, style)
        if reply in seen:
            continue
        seen.add(reply)
        gold = score_task(world, task, reply).reward
        answers.append({"text": reply, "upvotes": net_votes(rng, gold), "accepted": False,
                        "gold": gold})
    if len(answers) >= 2 and rng.random() < ACCEPT_RATE:
        weights = [math.exp(a["gold"]) for a in answers]
        rng.choices(answers, weights=weights)[0]["accepted"] = True
    return {"question": rng.choice(OPENERS) + text + rng.choice(CLOSERS), "answers": answers}


def vote_gold_agreement(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Over answer pairs of one question with different vote scores and different gold: the
    fraction where the higher vote score has the higher gold (and the pair count)."""
    agree = total = 0
    for row in rows:
        answers = row["answers"]
        scores = [vote_score(a["upvotes"], a["accepted"]) for a in answers]
        for better, worse in ranked_pairs(scores):
            if answers[better]["gold"] != answers[worse]["gold"]:
                total += 1
                agree += answers[better]["gold"] > answers[worse]["gold"]
    return {"pairs": total, "agreement": round(agree / max(total, 1), 4)}


def write_forum(path: str | Path, world: World, seed: int, size: int = FORUM_SIZE) -> dict[str, Any]:
    """Write ``size`` forum questions to ``path`` (deterministic for the seed); return their stats."""
    rng = random.Random(f"forum-{seed}")
    rows = [forum_question(rng, world, seed) for _ in range(size)]
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    answers = [a for r in rows for a in r["answers"]]
    return {"questions": len(rows), "answers": len(answers),
            "accepted": sum(a["accepted"] for a in answers), **vote_gold_agreement(rows)}
