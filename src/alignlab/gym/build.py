"""Build a gym folder: world, data files, tokenizer, pretrained base model, README.

Layout written by :func:`build_gym`::

    world.json            the world, pool sizes, style rates, annotator temperature and agreement,
                          base-model stats (pretraining, sampled style mix)
    README.md             the gold table and the numbers above
    data/base_corpus.jsonl  pretraining transcripts (Conversation records)
    data/sft.jsonl        SFT demonstrations (Conversation)
    data/prefs.jsonl      hard-label preference pairs (PreferencePair, label 1.0)
    data/prefs_soft.jsonl the same pairs with the annotator's BT probability as label
    data/prefs_eval.jsonl held-out pairs on eval-pool prompts (reward-model accuracy)
    data/eval_prompts.jsonl  prompt-only records, the held-out eval pool
    data/binary.jsonl     unpaired desirable/undesirable feedback (BinaryFeedback)
    data/ranked.jsonl     4 responses per prompt with noisy scores (RankedList)
    data/rated.jsonl      one response per prompt with the annotator's noisy rating (DRO's data,
                          :class:`~alignlab.data.rated.RatedResponse`)
    data/attacks.jsonl    the eval pool's harmful requests with their categories (red-teaming,
                          :mod:`alignlab.gym.redteam`); attacks_train.jsonl: the train pool's
    data/w2s/             weak-to-strong task data (see :mod:`alignlab.gym.w2s_data`)
    data/forum.jsonl      vote-scored Q&A for preference-model pretraining (:mod:`alignlab.gym.forum`)
    base_model/           an ordinary HF folder (LlamaForCausalLM + tokenizer, safetensors)
    ladder/               with ``ladder=True``: base models of four sizes (:mod:`alignlab.gym.ladder`)

The data are exactly deterministic for a seed. Pretraining is skipped when ``base_model/`` already
holds a model built for the same seed and the same corpus (``base_model/gym_build.json``); a ladder
rung likewise (same seed, corpus, tokenizer, spec and step budget).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alignlab.data.rated import rated_to_dict
from alignlab.data.records import Conversation, Messages, messages_to_list, record_to_dict
from alignlab.gym import corpus as C
from alignlab.gym.annotators import (
    Annotator,
    calibrate_temperature,
    expected_agreement,
    measured_agreement,
)
from alignlab.gym.forum import write_forum
from alignlab.gym.gold import gold_table_markdown, is_harmless, is_helpful, score
from alignlab.gym.prompts import make_prompt_pools
from alignlab.gym.reasoning import write_reasoning_data
from alignlab.gym.redteam import attack_rows
from alignlab.gym.tokenizer import render_messages
from alignlab.gym.w2s_data import write_w2s_data
from alignlab.gym.world import World, generate_world

SIZES = {"train_pool": 4400, "eval_pool": 1200, "base_corpus": 12000, "fact_repeats": 30,
         "sft": 2000, "prefs": 4000, "prefs_eval": 600, "binary": 2000, "ranked": 1000, "rated": 4000,
         "sample_check": 400, "ladder_check": 200}
TARGET_AGREEMENT = 0.75


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """One JSON object per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fh.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def corpus_texts(world: World, transcripts: Sequence[Conversation]) -> list[str]:
    """Pretraining documents: rendered transcripts plus every fact sentence ``fact_repeats`` times."""
    docs = [render_messages(c.messages) for c in transcripts]
    facts = [f"{s}</s>" for s in world.fact_sentences()]
    return docs + facts * SIZES["fact_repeats"]


def make_feedback(rng: random.Random, world: World, train: list[Messages], evals: list[Messages],
                  length_bias: float) -> dict[str, Any]:
    """Preference pairs (train + held-out), calibrated annotator, binary, ranked and rated data
    (rated last, so adding it left every other file unchanged)."""
    train_pairs = [C.draw_pair(rng, world, p, length_bias) for p in train[: SIZES["prefs"]]]
    eval_pairs = [C.draw_pair(rng, world, p, length_bias) for p in evals[: SIZES["prefs_eval"]]]
    utilities = [p.utilities for p in train_pairs]
    temperature = calibrate_temperature(utilities, TARGET_AGREEMENT)
    annotator = Annotator(temperature, length_bias)
    hard, soft, choices = C.label_pairs(rng, train_pairs, annotator)
    eval_hard, _, _ = C.label_pairs(rng, eval_pairs, annotator)
    stats = {"temperature": round(temperature, 6), "length_bias": length_bias,
             "target_agreement": TARGET_AGREEMENT,
             "expected_agreement": round(expected_agreement(utilities, temperature), 4),
             "measured_agreement": round(measured_agreement(choices, utilities), 4),
             "gold_ties": sum(u.gold_a == u.gold_b for u in utilities), "pairs": len(utilities)}
    return {"prefs": hard, "prefs_soft": soft, "prefs_eval": eval_hard, "annotator": stats,
            "binary": C.binary_feedback(rng, world, train, annotator, SIZES["binary"]),
            "ranked": C.ranked_lists(rng, world, train, annotator, SIZES["ranked"]),
            "rated": C.rated_responses(rng, world, train, annotator, SIZES["rated"])}


def make_data(world: World, seed: int, length_bias: float) -> dict[str, Any]:
    """Every data set of the gym, deterministic for ``seed``."""
    train, evals = make_prompt_pools(world, seed, SIZES["train_pool"], SIZES["eval_pool"])
    rng = random.Random(f"data-{seed}")
    data = {"world": world, "train_prompts": train, "eval_prompts": evals,
            "base_corpus": C.sample_conversations(rng, world, train, SIZES["base_corpus"], C.BASE_RATES),
            "sft": C.sample_conversations(rng, world, train, SIZES["sft"], C.SFT_RATES)}
    data.update(make_feedback(rng, world, train, evals, length_bias))
    return data


def write_data(out: Path, data: dict[str, Any]) -> None:
    """The data/*.jsonl files in the canonical alignlab format."""
    d = out / "data"
    for name in ("base_corpus", "sft", "prefs", "prefs_soft", "prefs_eval", "binary", "ranked"):
        write_jsonl(d / f"{name}.jsonl", [record_to_dict(r) for r in data[name]])
    write_jsonl(d / "rated.jsonl", [rated_to_dict(r) for r in data["rated"]])
    write_attacks(d, data)
    write_jsonl(d / "eval_prompts.jsonl", [{"prompt": messages_to_list(p)} for p in data["eval_prompts"]])
    write_jsonl(d / "train_prompts.jsonl", [{"prompt": messages_to_list(p)} for p in data["train_prompts"]])


def write_rated_data(gym_dir: str | Path) -> Path:
    """Add ``data/rated.jsonl`` and the attack files to a gym built before they existed: the
    data are regenerated from the gym's seed and length bias (``world.json``), so the files equal
    what a rebuild writes. Returns the rated file."""
    gym_dir = Path(gym_dir)
    info = json.loads((gym_dir / "world.json").read_text())
    data = make_data(generate_world(info["seed"]), info["seed"], info["length_bias"])
    path = gym_dir / "data" / "rated.jsonl"
    write_jsonl(path, [rated_to_dict(r) for r in data["rated"]])
    write_attacks(gym_dir / "data", data)
    return path


def write_attacks(data_dir: Path, data: dict[str, Any]) -> None:
    """``attacks.jsonl`` (held-out harmful requests) and ``attacks_train.jsonl`` (the train pool's),
    :mod:`alignlab.gym.redteam`."""
    write_jsonl(data_dir / "attacks.jsonl", attack_rows(data["world"], data["eval_prompts"]))
    write_jsonl(data_dir / "attacks_train.jsonl", attack_rows(data["world"], data["train_prompts"]))


def style_report(world: World, prompts: Sequence[Messages], responses: Sequence[str]) -> dict[str, Any]:
    """Style mix, on-grammar rate, mean gold, harmless and helpful rates of sampled responses."""
    results = [score(world, p, r) for p, r in zip(prompts, responses)]
    by_kind: dict[str, Counter] = {"benign": Counter(), "harmful": Counter()}
    for res in results:
        by_kind["harmful" if res.harmful_prompt else "benign"][res.style] += 1
    n = max(len(results), 1)
    harmful = [r for r in results if r.harmful_prompt] or results
    benign = [r for r in results if not r.harmful_prompt] or results
    return {"n": len(results),
            "on_grammar_rate": round(sum(r.style != "off_grammar" for r in results) / n, 4),
            "mean_gold": round(sum(r.reward for r in results) / n, 4),
            "harmless_rate_on_harmful": round(sum(map(is_harmless, harmful)) / len(harmful), 4),
            "helpful_rate_on_benign": round(sum(map(is_helpful, benign)) / len(benign), 4),
            "styles": {k: {s: round(c / max(sum(v.values()), 1), 4) for s, c in v.most_common()}
                       for k, v in by_kind.items()}}


def corpus_hash(texts: Sequence[str]) -> str:
    """Short sha256 of the pretraining documents (the base-model cache key, with the seed)."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
    return h.hexdigest()[:16]


def cached_model_meta(model_dir: Path, seed: int, digest: str) -> dict[str, Any] | None:
    """The saved build metadata when ``model_dir`` holds a model for this seed and corpus."""
    meta_file = model_dir / "gym_build.json"
    if not meta_file.is_file() or not (model_dir / "model.safetensors").is_file():
        return None
    meta = json.loads(meta_file.read_text())
    return meta if meta.get("seed") == seed and meta.get("corpus_hash") == digest else None


def build_base_model(out: Path, world: World, data: dict[str, Any], seed: int,
                     pretrain_seconds: float, max_steps: int | None, log) -> dict[str, Any]:
    """Train the tokenizer and pretrain the tiny Llama (or reuse a cached one); returns its stats."""
    from alignlab.gym import base_model as B
    from alignlab.gym.tokenizer import train_tokenizer

    texts = corpus_texts(world, data["base_corpus"])
    digest = corpus_hash(texts)
    model_dir = out / "base_model"
    cached = cached_model_meta(model_dir, seed, digest)
    if cached is not None:
        log(f"base model cached in {model_dir}; skipping pretraining")
        return cached
    tokenizer = train_tokenizer(texts)
    spec = B.BaseModelSpec()
    model = B.make_model(spec, tokenizer, seed)
    docs = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    train_stats = B.pretrain(model, docs, spec, pretrain_seconds, seed, max_steps, log)
    check_prompts = data["eval_prompts"][: SIZES["sample_check"]]
    samples = B.sample_responses(model, tokenizer, check_prompts, seed=seed)
    meta = {"seed": seed, "corpus_hash": digest, "spec": B.spec_dict(spec),
            "parameters": sum(p.numel() for p in model.parameters()), "vocab_size": len(tokenizer),
            "corpus_tokens": sum(map(len, docs)), "pretrain": train_stats,
            "samples_temperature_1": style_report(world, check_prompts, samples),
            "sample_examples": samples[:8]}
    B.save_base_model(model, tokenizer, model_dir, meta)
    return meta


def build_model_ladder(out: Path, world: World, data: dict[str, Any], seed: int, steps: int,
                       log) -> dict[str, Any]:
    """Pretrain the ladder on the base corpus with the base model's tokenizer (the files of
    ``base_model/``, not retrained); each new rung gets a sample check on eval prompts."""
    from alignlab.gym import base_model as B
    from alignlab.gym.ladder import build_ladder

    texts = corpus_texts(world, data["base_corpus"])
    prompts = data["eval_prompts"][: SIZES["ladder_check"]]

    def check(model, tok) -> dict[str, Any]:
        return style_report(world, prompts, B.sample_responses(model, tok, prompts, seed=seed))

    return build_ladder(out / "ladder", texts, out / "base_model", corpus_hash(texts), seed, steps,
                        check=check, log=log)


def ladder_summary(ladder: dict[str, Any]) -> dict[str, Any]:
    """What world.json records of the ladder."""
    return {"steps": ladder["steps"], "span": ladder["span"],
            "rungs": {r["name"]: {"parameters": r["parameters"], "seconds": r["pretrain"]["seconds"],
                                  "final_loss": r["pretrain"]["final_loss"]} for r in ladder["rungs"]}}


def build_gym(out: str | Path, seed: int = 0, pretrain_seconds: float = 75.0,
              length_bias: float = 0.0, max_steps: int | None = None, log=print,
              ladder: bool = False, ladder_steps: int = 300) -> Path:
    """Build (or refresh) the gym in ``out`` and return its path. ``max_steps`` caps pretraining by
    steps instead of time (for step-exact reproducibility); ``ladder`` also pretrains the model
    ladder, ``ladder_steps`` steps per rung."""
    start = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    world = generate_world(seed)
    data = make_data(world, seed, length_bias)
    write_data(out, data)
    reasoning = write_reasoning_data(out / "data" / "reasoning", seed)
    w2s = write_w2s_data(out / "data" / "w2s", world, data["train_prompts"], seed)
    forum = write_forum(out / "data" / "forum.jsonl", world, seed)
    log(f"gym data written to {out / 'data'} ({time.time() - start:.1f}s)")
    model_meta = build_base_model(out, world, data, seed, pretrain_seconds, max_steps, log)
    info = world_info(world, data, model_meta, seed, length_bias)
    info["reasoning"] = {"counts": reasoning["counts"], "train": reasoning["train"]}
    info["forum"] = forum
    info["w2s"] = {k: {"count": v["count"], "kind": v["kind"]} for k, v in w2s.items()
                   if isinstance(v, dict)}
    if ladder:
        info["ladder"] = ladder_summary(build_model_ladder(out, world, data, seed, ladder_steps, log))
    info["build_seconds"] = round(time.time() - start, 1)
    (out / "world.json").write_text(json.dumps(info, indent=2))
    (out / "README.md").write_text(readme_text(info))
    log(f"gym built in {info['build_seconds']}s at {out}")
    return out


def world_info(world: World, data: dict[str, Any], model_meta: dict[str, Any], seed: int,
               length_bias: float) -> dict[str, Any]:
    """Everything world.json records."""
    return {"seed": seed, "world": world.to_dict(), "length_bias": length_bias,
            "sizes": {k: len(v) for k, v in data.items() if isinstance(v, list)},
            "rates": {"base_corpus": C.BASE_RATES, "sft": C.SFT_RATES},
            "annotator": data["annotator"], "base_model": model_meta}


def readme_text(info: dict[str, Any]) -> str:
    """README.md of a built gym: the gold table and the measured numbers."""
    ann, bm = info["annotator"], info["base_model"]
    check = bm["samples_temperature_1"]
    return "\n".join([
        f"# alignlab gym (seed {info['seed']})", "",
        "Synthetic assistant world with a known gold reward; see docs/gym.md in alignlab.", "",
        "## Gold reward (gold = helpful + harmless)", "", gold_table_markdown(), "",
        "## Annotator", "",
        (f"Bradley–Terry, T = {ann['temperature']:.3f}, length bias {ann['length_bias']}; "
         f"agreement with gold preference: expected {ann['expected_agreement']}, "
         f"measured {ann['measured_agreement']} on {ann['pairs']} pairs."), "",
        "## Base model", "",
        (f"{bm['parameters']} parameters, vocab {bm['vocab_size']}, pretrained "
         f"{bm['pretrain']['steps']} steps / {bm['pretrain']['seconds']} s "
         f"(final loss {bm['pretrain']['final_loss']})."),
        (f"Samples at temperature 1 on {check['n']} eval prompts: on-grammar "
         f"{check['on_grammar_rate']}, mean gold {check['mean_gold']}, styles {check['styles']}."), "",
        "## Files", "", "\n".join(f"- data/{k}: {v} records" for k, v in info["sizes"].items()),
        ("- data/reasoning/: the reasoning world (step-labelled arithmetic solutions, SFT data, "
         "prompts with gold answers; see reasoning.json)"),
        ("- data/w2s/: weak-to-strong tasks labelled by gold (helpful, style, prefs_gold; see "
         "tasks.json)"),
        ("- data/forum.jsonl: vote-scored forum questions for preference-model pretraining "
         f"({info['forum']['questions']} questions, {info['forum']['answers']} answers; vote score "
         f"agrees with gold on {info['forum']['agreement']} of ranked pairs)"),
        *ladder_lines(info.get("ladder")), ""])


def ladder_lines(ladder: dict[str, Any] | None) -> list[str]:
    """README lines of the model ladder (none when it was not built)."""
    if not ladder:
        return []
    sizes = ", ".join(f"{name} {r['parameters']}" for name, r in ladder["rungs"].items())
    return [(f"- ladder/: base models of {len(ladder['rungs'])} sizes, {ladder['steps']} steps "
             f"each (parameters: {sizes}; see ladder/ladder.json)")]
