"""Critique -> revision (``alignlab cai revise``): the supervised stage of Constitutional AI.

Bai et al. 2022, "Constitutional AI: Harmlessness from AI Feedback", sec. 3.1: a model answers a
prompt; then, for each of ``rounds`` rounds, a principle drawn at random from the constitution asks
the model to *critique* its latest answer (the critique request) and then to *revise* it (the
revision request, read after the model's own critique). Optional few-shot worked examples come first.
The final revisions are the SL-CAI fine-tuning data; here they are also paired with the initial
answers as "revision preferred to initial" preference data.

Departures from the paper:

* the conversation, requests, critique and revision are chat turns rendered with the model's chat
  template (:mod:`alignlab.feedback.prompts`), not raw ``Human:``/``Assistant:`` text for a
  pretrained LM;
* the critic/reviser (``reviser``) may differ from the model that wrote the initial answer (the paper
  uses the same helpful-only model for all three steps; that is the default here too);
* an empty critique skips that round's revision and an empty revision keeps the previous answer
  (both are counted in ``revise_stats.json``) rather than training on empty text.

Reproducibility: prompt ``i`` draws every round's principle up front from ``Random(f"{seed}-{i}")``
and the generation seed of each step is derived from ``(generation.seed, chunk start, step)``, so a
job killed and restarted writes what a straight run would (:class:`alignlab.feedback.jobs.JsonlJob`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field

from alignlab.config import (
    ConfigError,
    DataSettings,
    GenerationSettings,
    ModelSettings,
    StageConfig,
)
from alignlab.data.records import (
    Conversation,
    Message,
    Messages,
    PreferencePair,
    messages_from_list,
    messages_to_list,
    record_to_dict,
)
from alignlab.feedback.constitution import (
    Constitution,
    ConstitutionError,
    Principle,
    RevisionExample,
)
from alignlab.feedback.jobs import JsonlJob, write_jsonl_atomic
from alignlab.feedback.prompts import critique_messages, revision_messages
from alignlab.feedback.revision_filter import KeepSettings, judge_revisions, keep_stats


class ReviseConfig(StageConfig):
    """Critique -> revision (Bai et al. 2022, "Constitutional AI", section 3).

    ``model`` answers each prompt in ``prompts``; then, ``rounds`` times, a principle drawn at random
    from the constitution asks ``reviser`` (default: ``model``) for a critique and then a revision of
    the latest answer. ``few_shot`` prepends that many of the constitution's worked examples.
    ``generation`` samples the answers and, unless ``reviser_generation`` is set (e.g. sampled
    answers, greedy critiques), the critiques and revisions too. ``keep`` (optional) has a judge
    (the labeller or a reward model) filter the SL-CAI data: ``sft.jsonl`` then holds only the
    revisions it prefers to their initial answer (:mod:`alignlab.feedback.revision_filter`;
    per-row verdicts in ``keep.jsonl``, every revision still in ``sft_unfiltered.jsonl``).
    Writes ``revisions.jsonl`` (every step), ``sft.jsonl`` (prompt + final revision, the SL-CAI data)
    and ``prefs.jsonl`` (final revision preferred to the initial answer). Resumable.
    """

    stage: Literal["revise"] = "revise"
    model: ModelSettings
    reviser: ModelSettings | None = None
    prompts: DataSettings
    constitution: str = "default"
    rounds: int = Field(1, ge=1)
    few_shot: int = Field(0, ge=0)
    generation: GenerationSettings = Field(default_factory=lambda: GenerationSettings(max_new_tokens=128))
    reviser_generation: GenerationSettings | None = None
    keep: KeepSettings | None = None
    flush_every: int = Field(16, ge=1)
    seed: int = 0
    out: str


EMPTY_CRITIQUE = "critique"
EMPTY_REVISION = "revision"


@dataclass(frozen=True)
class RevisionPlan:
    """One prompt with the principle of every round, drawn before any generation."""

    index: int
    prompt: Messages
    principles: tuple[Principle, ...]


@dataclass
class _Trace:
    """Every step of one prompt's critique -> revision chain (becomes a revisions.jsonl row)."""

    plan: RevisionPlan
    initial: str
    latest: str
    critiques: list[str] = field(default_factory=list)
    revision_requests: list[str | None] = field(default_factory=list)
    revisions: list[str] = field(default_factory=list)
    empty: list[str | None] = field(default_factory=list)


def plan_revisions(prompts: Sequence[Messages], constitution: Constitution, rounds: int,
                   seed: int) -> list[RevisionPlan]:
    """Each prompt's ``rounds`` principles, drawn uniformly with replacement (CAI sec. 3.1) from
    ``Random(f"{seed}-{index}")`` so that any subset of prompts draws what the full run draws."""
    return [RevisionPlan(i, tuple(p), tuple(constitution.draw_principles(
        random.Random(f"{seed}-{i}"), rounds))) for i, p in enumerate(prompts)]


def step_seed(base: int, chunk_start: int, step: int) -> int:
    """The sampling seed of one generation step (0: answer; 2r-1: critique r; 2r: revision r) of
    the chunk starting at prompt ``chunk_start``; independent of what ran before."""
    return random.Random(f"{base}-{chunk_start}-{step}").getrandbits(32)


def clean_text(text: str) -> str:
    """A generated answer, critique or revision without surrounding whitespace."""
    return text.strip()


def principle_label(constitution: Constitution, principle: Principle) -> str:
    """The principle's name, or ``principle-K`` (its position) when the constitution gives none."""
    return principle.name or f"principle-{constitution.principles.index(principle)}"


class Reviser:
    """Runs the critique -> revision chain on chunks of :class:`RevisionPlan` (see module docstring).

    ``answerer`` writes the initial answers and ``critic`` the critiques and revisions; both have
    ``generate(list[Messages], GenerationSettings) -> list[list[Sample]]``
    (:class:`alignlab.generation.hf.HFGenerator`) and may be the same object.
    """

    def __init__(self, answerer, critic, examples: Sequence[RevisionExample],
                 generation: GenerationSettings, label=lambda p: p.name,
                 critic_generation: GenerationSettings | None = None):
        for name, g in (("generation", generation), ("reviser_generation", critic_generation)):
            if g is not None and g.num_samples != 1:
                raise ConfigError(f"{name}.num_samples: revise writes one answer per step, got "
                                  f"{g.num_samples}; set it to 1")
        self.answerer, self.critic = answerer, critic
        self.examples = tuple(examples)
        self.generation = generation
        self.critic_generation = critic_generation or generation
        self.label = label

    def _generate(self, generator, messages: list[Messages], chunk_start: int, step: int) -> list[str]:
        """Step 0 (answers) samples with ``generation``, critiques and revisions with
        ``critic_generation``; the seed always derives from ``generation.seed``."""
        if not messages:
            return []
        base = self.generation if step == 0 else self.critic_generation
        settings = base.model_copy(update={"seed": step_seed(self.generation.seed, chunk_start, step)})
        return [clean_text(samples[0].text) for samples in generator.generate(messages, settings)]

    def revise(self, plans: Sequence[RevisionPlan], chunk_start: int) -> list[dict]:
        """One revisions.jsonl row per plan: one generate call per step for the whole chunk."""
        answers = self._generate(self.answerer, [p.prompt for p in plans], chunk_start, 0)
        traces = [_Trace(p, a, a) for p, a in zip(plans, answers)]
        rounds = len(plans[0].principles) if plans else 0
        for r in range(rounds):
            self._round(traces, r, chunk_start)
        return [self._row(t) for t in traces]

    def _round(self, traces: list[_Trace], r: int, chunk_start: int) -> None:
        """Round ``r``: critique every latest answer, then revise those that got a critique."""
        asks = [critique_messages(t.plan.prompt, t.latest, t.plan.principles[r], self.examples)
                for t in traces]
        critiques = self._generate(self.critic, asks, chunk_start, 2 * r + 1)
        active = [k for k, c in enumerate(critiques) if c]
        revision_asks = [revision_messages(asks[k], critiques[k], traces[k].plan.principles[r])
                         for k in active]
        revised = dict(zip(active, self._generate(self.critic, revision_asks, chunk_start, 2 * r + 2)))
        for k, trace in enumerate(traces):
            principle = trace.plan.principles[r]
            trace.critiques.append(critiques[k])
            trace.revision_requests.append(principle.revision if k in revised else None)
            text = revised.get(k, "")
            trace.empty.append(None if text else (EMPTY_REVISION if k in revised else EMPTY_CRITIQUE))
            trace.latest = text or trace.latest
            trace.revisions.append(trace.latest)

    def _row(self, t: _Trace) -> dict:
        return {"index": t.plan.index, "prompt": messages_to_list(t.plan.prompt), "initial": t.initial,
                "principles": [self.label(p) for p in t.plan.principles],
                "critique_requests": [p.critique for p in t.plan.principles],
                "critiques": t.critiques, "revision_requests": t.revision_requests,
                "revisions": t.revisions, "empty": t.empty, "final": t.latest}


# ----------------------------------------------------------------------------- outputs


def _prompt_of(row: dict) -> Messages:
    return messages_from_list(row["prompt"])


def sft_records(rows: Sequence[dict]) -> list[dict]:
    """SL-CAI data: prompt + final revision as an alignlab conversation (empty finals left out)."""
    return [record_to_dict(Conversation(_prompt_of(r) + (Message("assistant", r["final"]),)))
            for r in rows if r["final"]]


def preference_records(rows: Sequence[dict]) -> list[dict]:
    """Final revision preferred to the initial answer (label 1.0), where the two differ."""
    return [record_to_dict(PreferencePair(_prompt_of(r), r["final"], r["initial"], 1.0))
            for r in rows if r["final"] != r["initial"]]


def _mean_chars(texts: Sequence[str]) -> float | None:
    return round(sum(len(t) for t in texts) / len(texts), 1) if texts else None


def revise_stats(rows: Sequence[dict], rounds: int) -> dict:
    """Counts and mean lengths (characters) over every revisions.jsonl row."""
    empties = [e for r in rows for e in r["empty"]]
    critiques = [c for r in rows for c in r["critiques"]]
    principles: dict[str, int] = {}
    for name in (n for r in rows for n in r["principles"]):
        principles[name] = principles.get(name, 0) + 1
    return {"prompts": len(rows), "rounds": rounds,
            "unchanged_finals": sum(r["final"] == r["initial"] for r in rows),
            "empty_initial": sum(not r["initial"] for r in rows),
            "empty_critiques": empties.count(EMPTY_CRITIQUE),
            "empty_revisions": empties.count(EMPTY_REVISION),
            "mean_chars_initial": _mean_chars([r["initial"] for r in rows]),
            "mean_chars_critique": _mean_chars(critiques),
            "mean_chars_final": _mean_chars([r["final"] for r in rows]),
            "sft_rows": sum(bool(r["final"]) for r in rows),
            "preference_pairs": sum(r["final"] != r["initial"] for r in rows),
            "principle_counts": dict(sorted(principles.items()))}


# ----------------------------------------------------------------------------- the stage


def few_shot_examples(constitution: Constitution, few_shot: int) -> tuple[RevisionExample, ...]:
    """The first ``few_shot`` worked examples; an error when the constitution has fewer."""
    if few_shot > len(constitution.examples):
        raise ConstitutionError(f"{constitution.source}: few_shot={few_shot} but the constitution has "
                                f"{len(constitution.examples)} worked example(s) under 'examples'")
    return constitution.examples[:few_shot]


def build_generators(cfg):
    """``(answerer, critic)`` HFGenerators; one model is loaded when ``reviser`` is unset or equal
    to ``model``."""
    from alignlab.generation.hf import HFGenerator
    from alignlab.models.loading import load_causal_lm

    answerer = HFGenerator(*load_causal_lm(cfg.model, for_training=False))
    if cfg.reviser is None or cfg.reviser == cfg.model:
        return answerer, answerer
    return answerer, HFGenerator(*load_causal_lm(cfg.reviser, for_training=False))


def pending_chunks(n: int, size: int, done: set[int]) -> list[tuple[int, list[int]]]:
    """``(chunk start, indices not yet written)`` for every chunk of ``size`` prompts with work left;
    chunk boundaries are fixed by ``size`` so seeds match a straight run."""
    chunks = []
    for start in range(0, n, size):
        todo = [i for i in range(start, min(start + size, n)) if i not in done]
        if todo:
            chunks.append((start, todo))
    return chunks


def run_revise(cfg, run, generators=None) -> None:
    """The ``revise`` stage: revisions.jsonl (resumable), then sft.jsonl, prefs.jsonl and
    revise_stats.json rewritten from it. ``generators`` (answerer, critic) replaces the models
    named in ``cfg`` (tests)."""
    from alignlab.data.loading import load_prompts
    from alignlab.feedback.constitution import load_constitution

    constitution = load_constitution(cfg.constitution)
    examples = few_shot_examples(constitution, cfg.few_shot)
    plans = plan_revisions(load_prompts(cfg.prompts), constitution, cfg.rounds, cfg.seed)
    job = JsonlJob(run.path / "revisions.jsonl")
    chunks = pending_chunks(len(plans), cfg.flush_every, job.done_indices())
    run.log(f"{len(plans)} prompts, {cfg.rounds} round(s), constitution {constitution.name} "
            f"({len(constitution.principles)} principles); {sum(len(c) for _, c in chunks)} to revise")
    if chunks:
        answerer, critic = generators or build_generators(cfg)
        reviser = Reviser(answerer, critic, examples, cfg.generation,
                          label=lambda p: principle_label(constitution, p),
                          critic_generation=cfg.reviser_generation)
        t0, written = time.perf_counter(), 0
        for start, todo in chunks:
            job.append(reviser.revise([plans[i] for i in todo], start))
            written += len(todo)
            run.log_metrics({"revised": len(job.rows),
                             "prompts_per_s": round(written / (time.perf_counter() - t0), 4)})
    rows = job.sorted_rows()
    verdicts = None
    if cfg.keep is not None:
        verdicts = judge_revisions(rows, cfg.keep, constitution, cfg.seed)
        write_jsonl_atomic(run.path / "keep.jsonl", verdicts)
    _write_outputs(rows, cfg.rounds, run, verdicts)


def _write_outputs(rows: list[dict], rounds: int, run, verdicts: list[dict] | None = None) -> None:
    kept = rows if verdicts is None else [r for r, v in zip(rows, verdicts) if v["kept"]]
    write_jsonl_atomic(run.path / "sft.jsonl", sft_records(kept))
    write_jsonl_atomic(run.path / "prefs.jsonl", preference_records(rows))
    stats = revise_stats(rows, rounds)
    if verdicts is not None:
        write_jsonl_atomic(run.path / "sft_unfiltered.jsonl", sft_records(rows))
        stats["keep"] = keep_stats(verdicts)
        stats["sft_rows"] = len(sft_records(kept))
    run.write_json("revise_stats.json", stats)
    run.log(f"revise stats: {stats}")
