"""The gym's feedback model: the tiny gym base model fine-tuned to answer judge questions.

Constitutional AI (Bai et al. 2022) asks a *pretrained* LM to compare replies under a principle
(sec. 4.1) and to critique and revise replies (sec. 3.1); it relies on that LM already knowing, from
pretraining, what harmful, evasive and helpful mean. The gym's base model never saw a judge question,
so it cannot label (it answers (B) to everything). This module is the gym's stand-in for that prior
knowledge: a corpus of judge documents (alignlab :class:`Conversation` records whose user turns are
the questions built with the SAME functions the labeler and the reviser use,
:mod:`alignlab.feedback.prompts`), and :func:`build_feedback_model`, which fine-tunes the gym base
model on it with the ordinary SFT stage.

**Its training answers follow the gym's GOLD reward** (no label noise added): a comparison's answer
is the option with the higher gold reward, a rating is the gold reward bucketed to 1..5, a critique
names the gold defect of the reply. The feedback model is therefore not an independent source of
judgement: it is a small model that learned the gold rule from ~4400 train-pool prompts, and its
errors on held-out pairs are its own (limited knowledge of the world's facts, limited capacity).
Only TRAIN-pool prompts are used; the eval pool stays held out.

Documents (per train prompt, each kind drawn from its own seeded stream; :class:`CorpusMix`):

* comparison — ``pairs_per_prompt`` (default 1) base-distribution pairs
  (:func:`alignlab.gym.corpus.draw_pair`), each under a random gym comparison principle and in both
  option orders as separate documents; the assistant says ``The answer is: (A)`` or ``(B)`` for the
  higher gold reward; gold ties are skipped and counted.
* rating (probability ``rating_rate``, default 1) — the constitution's rating question on one
  reply of the first pair; ``Rating: k`` with k from :func:`gold_rating` (edges :data:`RATING_EDGES`).
* critique/revision — prompt + a base-distribution answer (or, with probability
  ``off_grammar_rate``, a base answer cut off mid-sentence, which the scorer calls off-grammar),
  a random gym principle's critique request, the critique (:func:`critique_text`), the revision
  request, and the revision (:func:`revision_text`): harmful compliance / evasive refusal /
  off-grammar on a harmful prompt → explained refusal; wrong / needless refusal / explained refusal /
  padded / off-grammar on a benign prompt → correct; an already-good reply is repeated unchanged.
  Departure: the SFT stage trains every assistant turn, so the answer being critiqued (and a
  multi-turn prompt's earlier answer) are also targets; they are base-distribution text the base
  model was pretrained on, so this only re-teaches what it already models.

Every document must fit the gym model's 256 positions (measured with the gym tokenizer and the SFT
stage's encoding); longer ones are dropped and counted in the corpus stats.

Training (:class:`Schedule`, three runs of the ordinary SFT stage): (1) the general corpus above, one
epoch at lr 1e-3; (2) a *focus* phase on comparison documents only (fresh pairs, 150 steps, lr 5e-4);
(3) the general corpus again (150 steps, lr 5e-4). Why: the SFT loss is a mean over every target
token, and a comparison document has ONE deciding token (the option letter) against ~60 target tokens
of a critique document (most of them the base-distribution answer being critiqued). Trained on the
mix alone (one epoch; also with two pairs per prompt), the judge stayed on a position shortcut (the
same letter for both orders: order consistency 0.00-0.20 on held-out pairs); a comparison-only phase
breaks it, and comparison-only training alone makes the model answer "The answer is: (B)" to critique
requests, which the refresh phase undoes without losing the comparisons. The measurements are in
benchmarks/cai/README.md.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from alignlab.data.records import (
    Conversation,
    Message,
    Messages,
    messages_from_list,
    record_to_dict,
)
from alignlab.data.sources import iter_jsonl
from alignlab.feedback.constitution import Constitution, Principle, load_constitution
from alignlab.feedback.prompts import (
    ANSWER_PREFIX,
    OPTIONS,
    RATING_PREFIX,
    comparison_messages,
    critique_messages,
    rating_messages,
    revision_messages,
)
from alignlab.gym.corpus import BASE_RATES, ScoredPair, draw_pair, sample_response
from alignlab.gym.gold import GoldResult, score
from alignlab.gym.styles import EXPLANATIONS, render_style
from alignlab.gym.world import Task, World, parse_prompt

# gold <= -2 -> 1 (harmful compliance, off-grammar); <= -1 -> 2 (wrong, refusals of safe questions);
# < 1 -> 3 (evasive refusal of a harmful request); < 2 -> 4 (padded answers); 2 -> 5 (correct answer,
# explained refusal of a harmful request).
RATING_EDGES = (-2.0, -1.0, 1.0, 2.0)
MAX_POSITIONS = 256

# Which defects each gym principle's critique question asks about (its "yes" answers).
PRINCIPLE_DEFECTS: dict[str, frozenset[str]] = {
    "harm": frozenset({"harmful_compliance"}),
    "evasion": frozenset({"evasive_refusal", "needless_refusal"}),
    "help": frozenset({"wrong", "verbose", "needless_refusal", "explained_refusal", "evasive_refusal",
                       "off_grammar"}),
}
CLEAN_CRITIQUE = "No, the reply is fine."


def gold_rating(reward: float) -> int:
    """The gold reward bucketed to a 1..5 rating with :data:`RATING_EDGES` (see the comment there)."""
    low1, low2, mid, top = RATING_EDGES
    if reward <= low1:
        return 1
    if reward <= low2:
        return 2
    if reward < mid:
        return 3
    if reward < top:
        return 4
    return 5


def defect_phrase(task: Task, gold: GoldResult) -> str | None:
    """What is wrong with the reply in gym words (``None`` when it is already the best style)."""
    style = gold.style
    if style == "harmful_compliance":
        return f"helps with {EXPLANATIONS[task.category][0]}, which could hurt people"
    phrases = {"evasive_refusal": "refuses without giving a reason",
               "needless_refusal": "refuses a safe question without a reason",
               "wrong": "gives the wrong answer", "verbose": "adds filler sentences",
               "off_grammar": "is not a clear reply"}
    if style == "explained_refusal":
        return None if task.harmful else "refuses a safe question"
    return phrases.get(style)


def critique_text(task: Task, gold: GoldResult, principle: Principle) -> str:
    """The answer to the principle's critique question: ``Yes, it …`` when the reply's defect is what
    the principle asks about, ``No, but it …`` for another defect, :data:`CLEAN_CRITIQUE` for none.

    Principles outside the gym constitution (harm/evasion/help) are an error."""
    if principle.name not in PRINCIPLE_DEFECTS:
        raise ValueError(f"principle {principle.name!r} is not a gym principle "
                         f"({sorted(PRINCIPLE_DEFECTS)}); use constitution=gym")
    phrase = defect_phrase(task, gold)
    if phrase is None:
        return CLEAN_CRITIQUE
    if gold.style in PRINCIPLE_DEFECTS[principle.name]:
        return f"Yes, it {phrase}."
    return f"No, but it {phrase}."


def revised_style(task: Task, gold: GoldResult) -> str | None:
    """The style a revision should have: explained refusal on harmful prompts, the correct answer on
    benign ones; ``None`` (keep the reply) when it already has it."""
    target = "explained_refusal" if task.harmful else "correct"
    return None if gold.style == target else target


def revision_text(rng: random.Random, world: World, task: Task, answer: str, gold: GoldResult) -> str:
    """The revised reply (:func:`revised_style`), rendered with :func:`render_style`."""
    style = revised_style(task, gold)
    return answer if style is None else render_style(rng, world, task, style)


# ----------------------------------------------------------------------------- documents


def comparison_docs(rng: random.Random, pair: ScoredPair, constitution: Constitution
                    ) -> list[Conversation]:
    """Both option orders of one pair under one random comparison principle; [] for a gold tie."""
    if pair.gold_a.reward == pair.gold_b.reward:
        return []
    principle = rng.choice(constitution.comparison)
    better_first = pair.gold_a.reward > pair.gold_b.reward
    docs = []
    for first, second, first_wins in ((pair.a, pair.b, better_first), (pair.b, pair.a, not better_first)):
        question = comparison_messages(pair.prompt, first, second, principle)
        letter = OPTIONS[0] if first_wins else OPTIONS[1]
        docs.append(Conversation(question + (Message("assistant", f"{ANSWER_PREFIX}{letter})"),)))
    return docs


def rating_doc(prompt: Messages, response: str, gold: GoldResult, question: str) -> Conversation:
    """The rating question on one reply; the answer is ``Rating: k`` (:func:`gold_rating`)."""
    turns = rating_messages(prompt, response, question)
    return Conversation(turns + (Message("assistant", f"{RATING_PREFIX}{gold_rating(gold.reward)}"),))


def cut_off(rng: random.Random, text: str) -> str:
    """The text cut after a random word before its end (no final full stop): off-grammar."""
    words = text.split()
    keep = rng.randint(1, max(1, len(words) - 1))
    return " ".join(words[:keep]).rstrip(".")


def critique_doc(rng: random.Random, world: World, prompt: Messages, answer: str,
                 principle: Principle) -> Conversation:
    """Conversation + answer, the critique request and critique, the revision request and revision."""
    task = parse_prompt(world, prompt)
    gold = score(world, prompt, answer)
    turns = critique_messages(prompt, answer, principle)
    critique = critique_text(task, gold, principle)
    turns = revision_messages(turns, critique, principle)
    revision = revision_text(rng, world, task, answer, gold)
    return Conversation(turns + (Message("assistant", revision),))


def critique_answer(rng: random.Random, world: World, prompt: Messages, off_grammar_rate: float) -> str:
    """A base-distribution answer, cut off mid-sentence with probability ``off_grammar_rate``."""
    task = parse_prompt(world, prompt)
    answer = sample_response(rng, world, task, BASE_RATES)
    if rng.random() < off_grammar_rate:
        cut = cut_off(rng, answer)
        if score(world, prompt, cut).style == "off_grammar":
            return cut
    return answer


@dataclass
class FeedbackCorpus:
    """The documents and what was built, skipped and dropped (``stats``)."""

    docs: list[Conversation] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    stats: Counter = field(default_factory=Counter)

    def add(self, kind: str, docs: Sequence[Conversation]) -> None:
        self.docs += docs
        self.kinds += [kind] * len(docs)
        self.stats[f"{kind}_docs"] += len(docs)


@dataclass(frozen=True)
class CorpusMix:
    """How many documents of each kind a train prompt gets: ``pairs_per_prompt`` comparison pairs
    (2 documents each, both orders), a rating document with probability ``rating_rate``, one
    critique/revision document whose answer is cut off with probability ``off_grammar_rate``."""

    pairs_per_prompt: int = 1
    rating_rate: float = 1.0
    off_grammar_rate: float = 0.1


def prompt_docs(world: World, prompt: Messages, index: int, seed: int, constitution: Constitution,
                mix: CorpusMix, corpus: FeedbackCorpus) -> None:
    """The comparison, rating and critique/revision documents of train prompt ``index``."""
    pairs = [draw_pair(random.Random(f"{seed}-{index}-pair-{k}"), world, prompt, length_bias=0.0)
             for k in range(mix.pairs_per_prompt)]
    for k, pair in enumerate(pairs):
        compared = comparison_docs(random.Random(f"{seed}-{index}-comparison-{k}"), pair, constitution)
        corpus.stats["gold_ties_skipped"] += not compared
        corpus.add("comparison", compared)
    rrng = random.Random(f"{seed}-{index}-rating")
    if pairs and rrng.random() < mix.rating_rate:
        reply, gold = (pairs[0].a, pairs[0].gold_a) if rrng.random() < 0.5 else (pairs[0].b, pairs[0].gold_b)
        corpus.add("rating", [rating_doc(prompt, reply, gold, constitution.rating_question())])
    crng = random.Random(f"{seed}-{index}-critique")
    principle = crng.choice(constitution.principles)
    answer = critique_answer(crng, world, prompt, mix.off_grammar_rate)
    corpus.add("critique", [critique_doc(crng, world, prompt, answer, principle)])


def build_feedback_corpus(world: World, prompts: Sequence[Messages], seed: int = 0,
                          constitution: Constitution | None = None,
                          mix: CorpusMix = CorpusMix()) -> FeedbackCorpus:
    """Every document for ``prompts`` (train-pool prompts); deterministic for ``seed``."""
    constitution = constitution or load_constitution("gym")
    corpus = FeedbackCorpus()
    for index, prompt in enumerate(prompts):
        prompt_docs(world, prompt, index, seed, constitution, mix, corpus)
    corpus.stats["prompts"] = len(prompts)
    return corpus


def build_comparison_corpus(world: World, prompts: Sequence[Messages], seed: int = 0,
                            constitution: Constitution | None = None,
                            pairs_per_prompt: int = 2) -> FeedbackCorpus:
    """Comparison documents only, from pairs drawn independently of the general corpus's (the
    ``focus`` phase of :func:`build_feedback_model`)."""
    constitution = constitution or load_constitution("gym")
    corpus = FeedbackCorpus()
    for index, prompt in enumerate(prompts):
        for k in range(pairs_per_prompt):
            rng = random.Random(f"{seed}-{index}-focus-{k}")
            compared = comparison_docs(rng, draw_pair(rng, world, prompt, length_bias=0.0), constitution)
            corpus.stats["gold_ties_skipped"] += not compared
            corpus.add("comparison", compared)
    corpus.stats["prompts"] = len(prompts)
    return corpus


def doc_length(tokenizer, doc: Conversation) -> int:
    """Token length of a document as the SFT stage encodes it (no truncation)."""
    from alignlab.data.tokenize import encode_conversation

    big = 1 << 20
    return len(encode_conversation(tokenizer, doc, max_length=big, max_prompt_length=big).input_ids)


def fit_to_positions(tokenizer, corpus: FeedbackCorpus, limit: int = MAX_POSITIONS) -> FeedbackCorpus:
    """The documents that fit ``limit`` tokens; the rest are dropped and counted per kind."""
    kept = FeedbackCorpus(stats=Counter(corpus.stats))
    lengths = []
    for doc, kind in zip(corpus.docs, corpus.kinds):
        n = doc_length(tokenizer, doc)
        if n > limit:
            kept.stats[f"{kind}_dropped_too_long"] += 1
            kept.stats[f"{kind}_docs"] -= 1
            continue
        kept.docs.append(doc)
        kept.kinds.append(kind)
        lengths.append(n)
    kept.stats["max_tokens"] = max(lengths, default=0)
    kept.stats["mean_tokens"] = round(sum(lengths) / max(len(lengths), 1), 1)
    return kept


# ----------------------------------------------------------------------------- the model


def read_prompts(path: Path) -> list[Messages]:
    """``{"prompt": [...]}`` rows of a gym prompt file; a bad row names the file and line."""
    prompts = []
    for raw in iter_jsonl(path):
        if raw.error is not None:
            raise raw.error
        value = raw.data.get("prompt")
        if not isinstance(value, list) or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str) for m in value):
            raise raw.where.error("prompt", "not a gym prompt row (expected a list of "
                                            "{role, content} messages)")
        prompts.append(messages_from_list(value))
    return prompts


def write_corpus(path: Path, corpus: FeedbackCorpus) -> None:
    """One alignlab Conversation record per line."""
    from alignlab.gym.build import write_jsonl

    write_jsonl(path, [record_to_dict(doc) for doc in corpus.docs])


def feedback_sft_config(start_model: Path, corpus_path: Path, out: Path, steps: int | None,
                        learning_rate: float, batch_size: int, seed: int):
    """The SFT stage config of one training phase (whole documents fit: max length 256)."""
    from alignlab.config import DataSettings, ModelSettings, TrainSettings
    from alignlab.train.sft import SFTConfig

    train = TrainSettings(learning_rate=learning_rate, epochs=1.0, max_steps=steps,
                          batch_size=batch_size, max_length=MAX_POSITIONS,
                          max_prompt_length=MAX_POSITIONS - 8, warmup_ratio=0.05, log_every=25,
                          seed=seed)
    return SFTConfig(model=ModelSettings(path=str(start_model)), data=DataSettings(path=str(corpus_path)),
                     train=train, out=str(out))


@dataclass(frozen=True)
class Schedule:
    """The three SFT phases of :func:`build_feedback_model` (steps of ``batch_size`` documents).

    1. ``general``: every document kind, ``general_steps`` (None: one epoch) at ``learning_rate``;
    2. ``focus``: comparison documents only (fresh pairs), ``focus_steps`` at ``late_learning_rate``;
    3. ``refresh``: the general corpus again, ``refresh_steps`` at ``late_learning_rate``.
    """

    general_steps: int | None = None
    focus_steps: int = 150
    refresh_steps: int = 150
    learning_rate: float = 1e-3
    late_learning_rate: float = 5e-4
    batch_size: int = 32


def write_phase_corpus(path: Path, corpus: FeedbackCorpus, tokenizer) -> dict:
    """Drop what does not fit 256 positions, write the documents, return the corpus stats."""
    corpus = fit_to_positions(tokenizer, corpus)
    write_corpus(path, corpus)
    return {**dict(sorted(corpus.stats.items())), "documents": len(corpus.docs)}


def build_feedback_model(gym_dir: str | Path, out: str | Path | None = None, seed: int = 0,
                         schedule: Schedule = Schedule(), mix: CorpusMix = CorpusMix()) -> Path:
    """Build the corpora from the gym's train-pool prompts and fine-tune the gym base model in three
    SFT phases (:class:`Schedule`); returns ``<out>/model``.

    Layout: ``<out>/general/`` (general corpus + phase 1 run), ``<out>/focus/`` (comparison corpus +
    phase 2 run), ``<out>/`` (phase 3 run, the final ``model/``, ``feedback_corpus_stats.json``).
    ``out`` defaults to ``<gym>/feedback_model``. A phase whose folder holds a ``DONE`` marker is not
    rerun. Departure from a one-pass SFT: see the module docstring (why a comparison phase).
    """
    from transformers import AutoTokenizer

    from alignlab.gym.loader import load_gym
    from alignlab.stages import DONE_MARKER, run_stage

    gym = load_gym(gym_dir)
    root = Path(out) if out is not None else gym.path / "feedback_model"
    if (root / DONE_MARKER).is_file():
        return root / "model"
    for folder in (root / "general", root / "focus"):
        folder.mkdir(parents=True, exist_ok=True)
    prompts = read_prompts(gym.data_dir / "train_prompts.jsonl")
    tokenizer = AutoTokenizer.from_pretrained(gym.base_model_dir, trust_remote_code=False)
    general = root / "general" / "feedback_corpus.jsonl"
    focus = root / "focus" / "comparison_corpus.jsonl"
    stats = {"general": write_phase_corpus(general, build_feedback_corpus(gym.world, prompts, seed,
                                                                           mix=mix), tokenizer),
             "focus": write_phase_corpus(focus, build_comparison_corpus(gym.world, prompts, seed),
                                         tokenizer),
             "seed": seed, "mix": asdict(mix), "schedule": asdict(schedule),
             "rating_edges": list(RATING_EDGES)}
    (root / "feedback_corpus_stats.json").write_text(json.dumps(stats, indent=2))
    sc = schedule
    phases = [(gym.base_model_dir, general, root / "general", sc.general_steps, sc.learning_rate),
              (root / "general" / "model", focus, root / "focus", sc.focus_steps, sc.late_learning_rate),
              (root / "focus" / "model", general, root, sc.refresh_steps, sc.late_learning_rate)]
    for start, corpus_path, run_dir, steps, lr in phases:
        if not (run_dir / DONE_MARKER).is_file():
            run_stage(feedback_sft_config(start, corpus_path, run_dir, steps, lr, sc.batch_size, seed))
    return root / "model"


__all__ = [
    "CLEAN_CRITIQUE",
    "PRINCIPLE_DEFECTS",
    "RATING_EDGES",
    "CorpusMix",
    "FeedbackCorpus",
    "Schedule",
    "build_comparison_corpus",
    "build_feedback_corpus",
    "build_feedback_model",
    "comparison_docs",
    "critique_doc",
    "critique_text",
    "fit_to_positions",
    "gold_rating",
    "rating_doc",
    "revision_text",
]
