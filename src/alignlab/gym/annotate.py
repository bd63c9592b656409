"""The ``gym-annotate`` stage: the gym's simulated annotators compare a policy's own samples.

Bai et al. 2022 ("Training a Helpful and Harmless Assistant with RLHF", §4.5, iterated online RLHF)
collect new comparisons each week on samples of their current best policies, so the preference model
keeps up with the distribution RL moves to. This stage is that data collection for the gym: it reads
a ``sample`` stage's ``samples.jsonl`` and asks the gym's Bradley–Terry annotator
(:mod:`alignlab.gym.annotators`, the temperature calibrated when the gym was built) to compare the
first two samples of each prompt.

As in HH-RLHF, helpfulness and harmlessness are separate tasks: benign prompts get helpfulness
comparisons (utility = the gold helpful component), harmful prompts harmlessness comparisons
(the harmless component). ``helpful_fraction`` sets the mix: of ``num_comparisons``, that fraction
comes from benign prompts and the rest from harmful ones, each taken in file order (a kind that runs
out is reported, not padded); without ``num_comparisons`` every prompt is used. Pairs whose two samples are the same text carry no preference and are
skipped and counted. ``labels: gold`` labels by the gold reward instead (ties skipped; no noise):
the evaluation pairs for "PM accuracy on the policy's own samples".

Outputs: ``comparisons.jsonl`` (``{"prompt", "chosen", "rejected", "label": 1.0, "task"}``, hard
labels by a seeded draw), ``all.jsonl`` = the pairs of every ``include`` source (earlier rounds,
static data; any pair format, ``limit``/``offset`` allowed) followed by this round's comparisons — what "retrain the PM on all comparisons so far" reads — and
``annotate.json`` with the counts and the labels' agreement with the gold preference.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Literal

from pydantic import Field

from alignlab.config import DataSettings, StageConfig
from alignlab.data.loading import load_records
from alignlab.data.records import messages_from_list, record_to_dict
from alignlab.data.sources import iter_jsonl
from alignlab.gym.annotators import Annotator, utility
from alignlab.gym.corpus import task_for_annotator
from alignlab.gym.gold import score_task
from alignlab.gym.loader import load_gym
from alignlab.gym.world import parse_prompt
from alignlab.runs import RunFolder, write_atomic


class AnnotateConfig(StageConfig):
    """Gym annotator comparisons of a policy's samples (module docstring)."""

    stage: Literal["gym-annotate"] = "gym-annotate"
    gym: str
    samples: str
    num_comparisons: int | None = Field(None, ge=1)
    helpful_fraction: float = Field(0.5, ge=0.0, le=1.0)
    labels: Literal["annotator", "gold"] = "annotator"
    include: list[DataSettings] = Field(default_factory=list)
    seed: int = 0


def read_candidates(path: str) -> list[tuple[list[dict], str, str]]:
    """(prompt messages, sample A, sample B) from each ``samples.jsonl`` row with two samples;
    anything else is an error naming file:line:field."""
    out = []
    for raw in iter_jsonl(Path(path)):
        if raw.error is not None:
            raise raw.error
        samples = raw.data.get("samples")
        if not isinstance(samples, list) or len(samples) < 2:
            raise raw.where.error("samples", "need at least two samples per prompt "
                                  "(generation.num_samples >= 2 in the sample stage)")
        prompt = raw.data.get("prompt")
        if not isinstance(prompt, list):
            raise raw.where.error("prompt", "required field is missing (or not a message list)")
        texts = []
        for i, sample in enumerate(samples[:2]):
            if not isinstance(sample, dict) or not isinstance(sample.get("text"), str):
                raise raw.where.error(f"samples[{i}]" if not isinstance(sample, dict)
                                      else f"samples[{i}].text",
                                      "expected a sample object with a 'text' string")
            texts.append(sample["text"].strip())
        out.append((prompt, texts[0], texts[1]))
    return out


def quotas(cfg: AnnotateConfig) -> dict[str, float]:
    """How many helpful and harmless comparisons to collect (no limit without ``num_comparisons``)."""
    if cfg.num_comparisons is None:
        return {"helpful": math.inf, "harmless": math.inf}
    helpful = round(cfg.num_comparisons * cfg.helpful_fraction)
    return {"helpful": helpful, "harmless": cfg.num_comparisons - helpful}


def annotate(cfg: AnnotateConfig) -> tuple[list[dict], dict]:
    """The labelled comparisons and the counts (module docstring)."""
    gym = load_gym(cfg.gym)
    annotator = Annotator(gym.info["annotator"]["temperature"], gym.info["annotator"]["length_bias"])
    rng = random.Random(cfg.seed)
    candidates = read_candidates(cfg.samples)
    want, rows = quotas(cfg), []
    counts = {"same_text_skipped": 0, "gold_ties_skipped": 0, "gold_agree": 0, "gold_decided": 0,
              "helpful": 0, "harmless": 0}
    for prompt, a, b in candidates:
        messages = messages_from_list(prompt)
        task = parse_prompt(gym.world, messages)
        kind = task_for_annotator(task)
        if counts[kind] >= want[kind]:
            continue
        if a == b:
            counts["same_text_skipped"] += 1
            continue
        gold_a, gold_b = score_task(gym.world, task, a), score_task(gym.world, task, b)
        if cfg.labels == "gold":
            if gold_a.reward == gold_b.reward:
                counts["gold_ties_skipped"] += 1
                continue
            first = gold_a.reward > gold_b.reward
        else:
            first = annotator.choose_first(rng, utility(gold_a, a, kind, annotator.length_bias),
                                           utility(gold_b, b, kind, annotator.length_bias))
        if gold_a.reward != gold_b.reward:
            counts["gold_decided"] += 1
            counts["gold_agree"] += first == (gold_a.reward > gold_b.reward)
        counts[kind] += 1
        chosen, rejected = (a, b) if first else (b, a)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "label": 1.0,
                     "task": kind})
    counts["wanted"] = {k: v if v != math.inf else None for k, v in want.items()}
    counts["gold_agreement"] = round(counts["gold_agree"] / max(counts["gold_decided"], 1), 4)
    return rows, counts


def run_annotate(cfg: AnnotateConfig, run: RunFolder) -> Path:
    """Write comparisons.jsonl, all.jsonl (earlier rounds + this one) and annotate.json."""
    rows, counts = annotate(cfg)
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in rows]
    write_atomic(run.path / "comparisons.jsonl", "".join(lines))
    earlier = [json.dumps(record_to_dict(r), ensure_ascii=False) + "\n"
               for source in cfg.include for r in load_records(source, "pair").records]
    write_atomic(run.path / "all.jsonl", "".join(earlier) + "".join(lines))
    counts["all"] = len(earlier) + len(lines)
    run.write_json("annotate.json", counts)
    for kind in ("helpful", "harmless"):
        if counts["wanted"][kind] is not None and counts[kind] < counts["wanted"][kind]:
            run.log(f"gym-annotate: only {counts[kind]} {kind} comparisons available "
                    f"({counts['wanted'][kind]} wanted)")
    run.log(f"gym-annotate: {len(rows)} comparisons ({counts['helpful']} helpful, "
            f"{counts['harmless']} harmless), gold agreement {counts['gold_agreement']}, "
            f"{counts['all']} in all.jsonl")
    return run.path
