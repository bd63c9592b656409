"""Automatic process labels (``alignlab step-labels``): Math-Shepherd's completion-based estimates.

Wang et al. 2024, "Math-Shepherd: Verify and Reinforce LLMs Step-by-step without Human
Annotations", sec. 3.3: the quality of a step is its potential to reach the right answer. For each
solution and each step k, a *completer* (a policy) samples N continuations of the solution from
the prefix "steps 1..k"; the step is labelled by how many of them reach the gold answer:

- ``soft`` estimate (their Eq. 3): the fraction of the N rollouts whose final answer matches the
  gold answer (``label_type`` ``soft``);
- ``hard`` estimate (their Eq. 2): 1 iff at least one rollout does (``label_type`` ``binary``).

How a rollout is asked for. The prompt is the problem prompt with the assistant turn *started*:
the messages end with an assistant message holding ``join_steps(steps[:k+1]) + separator``, and
:func:`render_continuation` renders that as the chat template's generation prompt followed by the
partial reply (without the template's end-of-turn marker), so the completer continues the reply.
It works with any chat template (and the HH fallback) through
:func:`alignlab.data.tokenize.render_prompt` / :func:`~alignlab.data.tokenize.render_completion`;
both generation backends accept it as their ``render_prompt`` hook, so ``backend: vllm`` gets the
same text. The rollout's answer is ``extract_answer(prefix + continuation)``.

The last step. Its "continuation" is the solution itself (the prefix is the whole solution), so it
is labelled 1 iff the solution's own final answer matches the gold one, with no rollouts. In
Math-Shepherd's estimates the last step's rollouts would only restate that answer, so this is the
same in effect, and costs nothing.

Departure: ``stop_after_first_zero``. Once a step's estimate is 0 (no rollout reaches the answer),
every later step, the last one included, is labelled 0 without rollouts. Math-Shepherd rolls out
from every step; this option saves cost on wrong solutions, at the price of never finding a
"recovered" later step. Off by default.

Scheduling and resuming. The solutions are cut into fixed *chunks* of consecutive solutions, each
holding at most ``batch_size // N`` rollout prompts (without early exit: all its steps but the
last; with it: one step per solution per wave, steps of a chunk rolled out wave by wave), so that
one generate call serves several solutions. Each call's seed is derived from the generation seed,
the chunk's first solution and the call's number, so the rollouts depend only on the plan, not on
where a previous run was killed. ``labels.jsonl`` (a :class:`~alignlab.feedback.jobs.JsonlJob`)
gets one row per finished solution (``index``, per-step ``reached`` counts and rollout
``answers``, ``rollouts``, ``generated_tokens``, ``seconds``: the chunk's time shared by
rollouts); a rerun skips finished solutions exactly, and redoes a chunk only where a row of it is
missing (and then writes only the missing rows).

Outputs: ``steps.jsonl``, every labelled solution in the canonical ``format: steps`` form
(existing labels replaced; ``answer`` kept or extracted, ``correct`` kept or derived from it), and
``cost.json`` (:func:`cost_report`): counts, generated tokens, seconds, rollouts/s, and, when the
input had step labels, the agreement of the estimates with them (:func:`label_agreement`), as
Math-Shepherd checks its automatic labels against human ones.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from alignlab.config import GenerationSettings, ModelSettings, StageConfig
from alignlab.data.errors import DataSourceError
from alignlab.data.records import Message, Messages
from alignlab.data.step_readers import StepDataSettings, load_step_solutions
from alignlab.data.step_tokenize import join_steps
from alignlab.data.steps import (
    StepSolution,
    answers_match,
    extract_answer,
    normalize_answer,
    step_solution_to_dict,
)
from alignlab.data.tokenize import render_completion, render_prompt
from alignlab.feedback.jobs import JsonlJob, write_jsonl_atomic
from alignlab.generation.base import Generator, Sample
from alignlab.progress import progress
from alignlab.runs import RunFolder


class StepLabelConfig(StageConfig):
    """Automatic process labels (Wang et al. 2024, Math-Shepherd; see the module docstring).

    ``data``: step solutions with a ``gold_answer`` (their step labels, if any, are replaced and
    only used to measure agreement). ``completer``: the policy that continues a solution from a
    step prefix. ``generation.num_samples`` is N (rollouts per prefix), ``max_new_tokens`` bounds a
    rollout; ``generation.batch_size`` is replaced by ``batch_size`` (rollouts per generate call).
    ``estimate``: ``soft`` (fraction of rollouts that reach the answer) or ``hard`` (any does).
    ``separator`` joins the steps (and ends the prefix). ``num_solutions``: label the first ones
    only. ``gpu_memory_utilization``: vLLM's share of GPU memory (``backend: vllm`` only).
    """

    stage: Literal["step-labels"] = "step-labels"
    data: StepDataSettings
    completer: ModelSettings
    generation: GenerationSettings = Field(
        default_factory=lambda: GenerationSettings(num_samples=8, max_new_tokens=256))
    estimate: Literal["soft", "hard"] = "soft"
    separator: str = Field("\n", min_length=1)
    num_solutions: int | None = Field(None, ge=1)
    stop_after_first_zero: bool = False
    backend: Literal["hf", "vllm"] = "hf"
    batch_size: int = Field(64, ge=1)
    gpu_memory_utilization: float = Field(0.85, gt=0.0, le=1.0)
    out: str


# ----------------------------------------------------------------------------- rendering


def continuation_text(tokenizer: Any, prompt: Messages, partial: str) -> str:
    """``prompt`` rendered with the generation prompt, then the partial assistant reply ``partial``.

    The template's own lead-in of an assistant turn (whatever :func:`render_completion` puts before
    the content, e.g. the HH fallback's space) is kept and its end-of-turn marker dropped. A
    template that trims the content (Llama 3's) would lose the prefix's trailing separator, so the
    raw ``partial`` is appended after the lead-in; one that rewrites the content entirely gets
    ``partial`` right after the generation prompt.
    """
    head = render_prompt(tokenizer, prompt)
    reply = render_completion(tokenizer, prompt, partial, rendered_prompt=head)
    core = partial.strip()
    at = reply.find(core) if core else -1
    if at < 0:
        return head + partial
    return head + reply[:at] + partial[partial.find(core):]


def render_continuation(tokenizer: Any, messages: Messages) -> str:
    """A ``render_prompt`` hook for the generators: messages ending with an assistant message are
    rendered as a reply to continue (:func:`continuation_text`), others as a plain prompt."""
    if messages and messages[-1].role == "assistant":
        return continuation_text(tokenizer, tuple(messages[:-1]), messages[-1].content)
    return render_prompt(tokenizer, messages)


def step_prefix(solution: StepSolution, k: int, separator: str) -> str:
    """The partial reply a rollout from step ``k`` starts with: steps 0..k joined, then the
    separator (the next step starts on a fresh line)."""
    return join_steps(solution.steps[: k + 1], separator)[0] + separator


def rollout_messages(solution: StepSolution, k: int, separator: str) -> Messages:
    """The problem prompt plus the started assistant turn (:func:`step_prefix`)."""
    return tuple(solution.prompt) + (Message("assistant", step_prefix(solution, k, separator)),)


# ----------------------------------------------------------------------------- labels


def final_answer(solution: StepSolution) -> str | None:
    """The solution's own answer: the given one, else extracted from its text."""
    return solution.answer if solution.answer is not None else extract_answer(solution.text)


def rolled_out_steps(solution: StepSolution) -> int:
    """How many steps get rollouts when none is skipped: all but the last."""
    return len(solution.steps) - 1


def step_labels(reached: Sequence[int], n: int, num_steps: int, final_reached: bool,
                estimate: str, stop_after_first_zero: bool = False) -> tuple[float, ...]:
    """One label per step from the rollout counts (module docstring).

    ``reached[k]``: how many of the ``n`` rollouts from step k reached the gold answer, for the
    rolled-out steps (fewer than ``num_steps - 1`` when early exit skipped the rest). Soft:
    ``reached / n``; hard: 1 iff ``reached > 0``. Skipped steps get 0; the last step gets
    ``final_reached``, or 0 when early exit has seen a zero.
    """
    if len(reached) > num_steps - 1:
        raise ValueError(f"{len(reached)} rollout counts for {num_steps} steps")
    values = [c / n if estimate == "soft" else float(c > 0) for c in reached]
    values += [0.0] * (num_steps - 1 - len(reached))
    zeroed = stop_after_first_zero and 0 in reached
    values.append(0.0 if zeroed else float(final_reached))
    return tuple(values)


def solution_labels(solution: StepSolution, row: dict[str, Any], estimate: str,
                    stop_after_first_zero: bool) -> tuple[float, ...]:
    """The ``estimate`` labels of ``solution`` from its ``labels.jsonl`` row; the last step is
    right iff the solution's own final answer matches the gold one."""
    final = answers_match(final_answer(solution), solution.gold_answer)
    return step_labels(row["reached"], row["samples_per_step"], len(solution.steps), final,
                       estimate, stop_after_first_zero)


def labelled_solution(solution: StepSolution, row: dict[str, Any], estimate: str,
                      stop_after_first_zero: bool) -> StepSolution:
    """``solution`` with the labels of its ``labels.jsonl`` row; ``answer`` and ``correct`` kept,
    or derived from the final answer."""
    answer = final_answer(solution)
    labels = solution_labels(solution, row, estimate, stop_after_first_zero)
    correct = solution.correct if solution.correct is not None else \
        answers_match(answer, solution.gold_answer)
    return replace(solution, labels=labels, label_type="soft" if estimate == "soft" else "binary",
                   answer=None if answer is None else normalize_answer(answer), correct=correct)


# ----------------------------------------------------------------------------- planning


def plan_chunks(solutions: Sequence[StepSolution], per_call: int,
                stop_after_first_zero: bool) -> list[list[int]]:
    """Consecutive solution indices, each chunk holding at most ``per_call`` prompts per wave
    (a solution larger than that is a chunk of its own, split over several calls)."""
    chunks: list[list[int]] = []
    current: list[int] = []
    weight = 0
    for i, solution in enumerate(solutions):
        w = rolled_out_steps(solution)
        w = min(w, 1) if stop_after_first_zero else w
        if current and weight + w > per_call:
            chunks.append(current)
            current, weight = [], 0
        current.append(i)
        weight += w
    if current:
        chunks.append(current)
    return chunks


def call_seed(seed: int, first_index: int, call: int) -> int:
    """The seed of generate call ``call`` of the chunk starting at solution ``first_index``."""
    digest = hashlib.blake2b(f"{seed}/{first_index}/{call}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 2**31


# ----------------------------------------------------------------------------- rolling out


class ChunkRoller:
    """Rolls out the steps of one chunk of solutions and returns their ``labels.jsonl`` rows."""

    def __init__(self, generator: Generator, cfg: StepLabelConfig):
        self.generator, self.cfg = generator, cfg
        self.n = cfg.generation.num_samples
        self.per_call = max(1, cfg.batch_size // self.n)
        self.calls = 0

    def roll(self, solutions: Sequence[StepSolution], chunk: Sequence[int]) -> list[dict[str, Any]]:
        """Rows for every solution of ``chunk`` (``solutions`` indexed by solution index)."""
        start = time.perf_counter()
        rows = {i: self._empty_row(i, solutions[i]) for i in chunk}
        active = [i for i in chunk if rolled_out_steps(solutions[i]) > 0]
        call = 0
        while active:
            wave = self._wave(solutions, rows, active)
            for at in range(0, len(wave), self.per_call):
                part = wave[at:at + self.per_call]
                self._generate(solutions, rows, part, call_seed(self.cfg.generation.seed,
                                                                chunk[0], call))
                call += 1
            active = [i for i in active if self._continues(solutions[i], rows[i])]
        _share_seconds(list(rows.values()), time.perf_counter() - start)
        return [rows[i] for i in chunk]

    def _empty_row(self, index: int, solution: StepSolution) -> dict[str, Any]:
        return {"index": index, "num_steps": len(solution.steps), "samples_per_step": self.n,
                "reached": [], "answers": [], "rollouts": 0, "generated_tokens": 0,
                "seconds": 0.0}

    def _wave(self, solutions, rows, active: list[int]) -> list[tuple[int, int]]:
        """The (solution, step) prompts of the next wave: every remaining step of every active
        solution, or only the next one of each with early exit."""
        if self.cfg.stop_after_first_zero:
            return [(i, len(rows[i]["reached"])) for i in active]
        return [(i, k) for i in active for k in range(rolled_out_steps(solutions[i]))]

    def _continues(self, solution: StepSolution, row: dict[str, Any]) -> bool:
        if len(row["reached"]) >= rolled_out_steps(solution):
            return False
        return not (self.cfg.stop_after_first_zero and 0 in row["reached"])

    def _generate(self, solutions, rows, part: list[tuple[int, int]], seed: int) -> None:
        settings = self.cfg.generation.model_copy(
            update={"seed": seed, "batch_size": self.per_call * self.n})
        prompts = [rollout_messages(solutions[i], k, self.cfg.separator) for i, k in part]
        groups = self.generator.generate(prompts, settings)
        self.calls += 1
        if len(groups) != len(part):
            raise RuntimeError(f"the completer returned {len(groups)} sample groups for "
                               f"{len(part)} prompts")
        for (i, k), group in zip(part, groups):
            self._record(rows[i], solutions[i], k, group)

    def _record(self, row: dict[str, Any], solution: StepSolution, k: int,
                group: Sequence[Sample]) -> None:
        if len(group) != self.n or k != len(row["reached"]):
            raise RuntimeError(f"step {k}: {len(group)} rollouts (expected {self.n}), or out of "
                               "order")
        prefix = step_prefix(solution, k, self.cfg.separator)
        answers = [extract_answer(prefix + s.text) for s in group]
        row["answers"].append(answers)
        row["reached"].append(sum(answers_match(a, solution.gold_answer) for a in answers))
        row["rollouts"] += len(group)
        row["generated_tokens"] += sum(len(s.token_ids) for s in group)


def _share_seconds(rows: list[dict[str, Any]], seconds: float) -> None:
    """Give each row the chunk's ``seconds`` in proportion to its rollouts."""
    total = sum(r["rollouts"] for r in rows)
    for r in rows:
        r["seconds"] = round(seconds * r["rollouts"] / total, 6) if total else 0.0


# ----------------------------------------------------------------------------- statistics


def original_truth(value: float, label_type: str) -> bool | None:
    """An input label as right/wrong: ternary +1/−1 (neutral 0: None, not compared), binary 1/0,
    soft ≥ 0.5."""
    if label_type == "ternary":
        return None if value == 0 else value > 0
    return value >= 0.5


def label_agreement(originals: Sequence[StepSolution], hard: Sequence[Sequence[float]],
                    soft: Sequence[Sequence[float]]) -> dict[str, Any] | None:
    """Step-level accuracy of the hard estimate (and of soft ≥ 0.5) against the input's own step
    labels (ternary neutral steps left out and counted), overall and per original class; None when
    no input solution had labels."""
    compared: list[tuple[bool, bool, bool]] = []
    solutions = neutral = 0
    for original, h, s in zip(originals, hard, soft):
        if not original.labels:
            continue
        solutions += 1
        for value, hv, sv in zip(original.labels, h, s):
            truth = original_truth(value, original.label_type)
            if truth is None:
                neutral += 1
            else:
                compared.append((truth, hv > 0.5, sv >= 0.5))
    if not solutions:
        return None
    out: dict[str, Any] = {"solutions": solutions, "steps": len(compared),
                           "neutral_steps_left_out": neutral}
    out["hard_accuracy"] = _rate([t == h for t, h, _ in compared])
    out["soft_accuracy"] = _rate([t == s for t, _, s in compared])
    out["hard_accuracy_on_right_steps"] = _rate([h for t, h, _ in compared if t])
    out["hard_accuracy_on_wrong_steps"] = _rate([not h for t, h, _ in compared if not t])
    return out


def _rate(flags: Sequence[bool]) -> float | None:
    return round(sum(flags) / len(flags), 4) if flags else None


def cost_report(cfg: StepLabelConfig, rows: Sequence[dict[str, Any]],
                solutions: Sequence[StepSolution], labelled: Sequence[StepSolution],
                this_run: dict[str, float]) -> dict[str, Any]:
    """``cost.json``: what the labels cost and how they compare with the input's labels.

    ``rows`` are the ``labels.jsonl`` rows (one per solution), ``labelled`` the output solutions.
    """
    rollouts = sum(r["rollouts"] for r in rows)
    seconds = sum(r["seconds"] for r in rows)
    tokens = sum(r["generated_tokens"] for r in rows)
    rolled = sum(len(r["reached"]) for r in rows)
    early = cfg.stop_after_first_zero
    hard = [solution_labels(solutions[r["index"]], r, "hard", early) for r in rows]
    soft = [solution_labels(solutions[r["index"]], r, "soft", early) for r in rows]
    steps = sum(len(s.steps) for s in solutions)
    return {"solutions": len(solutions), "steps": steps, "rolled_out_steps": rolled,
            "steps_skipped_by_early_exit": steps - len(solutions) - rolled,
            "samples_per_step": cfg.generation.num_samples, "rollouts": rollouts,
            "generated_tokens": tokens, "seconds": round(seconds, 3),
            "rollouts_per_s": round(rollouts / seconds, 3) if seconds else None,
            "generated_tokens_per_s": round(tokens / seconds, 3) if seconds else None,
            "this_run": this_run, "estimate": cfg.estimate,
            "label_type": "soft" if cfg.estimate == "soft" else "binary",
            "mean_label": _mean([v for ls in labelled for v in ls.labels]),
            "hard_positive_rate": _mean([v for h in hard for v in h]),
            "agreement_with_input_labels": label_agreement(
                [solutions[r["index"]] for r in rows], hard, soft)}


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


# ----------------------------------------------------------------------------- the stage


def load_solutions(cfg: StepLabelConfig, run: RunFolder) -> list[StepSolution]:
    """The solutions to label (the first ``num_solutions``), each with a gold answer."""
    loaded = load_step_solutions(cfg.data)
    solutions = list(loaded.records)[: cfg.num_solutions]
    for i, solution in enumerate(solutions):
        if solution.gold_answer is None:
            raise DataSourceError(loaded.source, f"solution {i + 1} has no gold_answer; automatic "
                                  "step labels need the reference answer of every problem")
    run.log(f"{len(solutions)} solutions ({sum(len(s.steps) for s in solutions)} steps) from "
            f"{loaded.source} ({loaded.format}); notes: {loaded.notes}")
    return solutions


def build_completer(cfg: StepLabelConfig) -> Generator:
    """The completer behind the configured backend, rendering with :func:`render_continuation`."""
    from alignlab.generation.factory import make_generator
    from alignlab.models.loading import load_causal_lm, load_tokenizer, resolve_model_source

    if cfg.backend == "vllm":
        source, extra = resolve_model_source(cfg.completer)
        tokenizer = load_tokenizer(source, cfg.completer, extra)
        return make_generator("vllm", tokenizer=tokenizer, model_path=source,
                              render_prompt=render_continuation,
                              gpu_memory_utilization=cfg.gpu_memory_utilization)
    model, tokenizer = load_causal_lm(cfg.completer, for_training=False)
    return make_generator("hf", model, tokenizer, render_prompt=render_continuation)


def _check_rows(job: JsonlJob, solutions: Sequence[StepSolution]) -> None:
    """Refuse to resume from rows made for other data."""
    for row in job.rows:
        i = int(row["index"])
        if i >= len(solutions) or row["num_steps"] != len(solutions[i].steps):
            raise ValueError(f"{job.path}: row for solution {i} does not fit the data (other data "
                             "or num_solutions?); delete the file to start again")


def roll_out_all(cfg: StepLabelConfig, run: RunFolder, solutions: Sequence[StepSolution],
                 job: JsonlJob, make_generator: Callable[[], Generator]) -> dict[str, float]:
    """Roll out every chunk with a missing row; returns this run's counts and seconds."""
    done = job.done_indices()
    chunks = plan_chunks(solutions, max(1, cfg.batch_size // cfg.generation.num_samples),
                         cfg.stop_after_first_zero)
    todo = [c for c in chunks if not set(c) <= done]
    missing = sum(1 for c in todo for i in c if i not in done)
    run.log(f"{len(done)} solutions already labelled; {missing} to label in {len(todo)} chunks")
    stats = {"solutions": 0, "rollouts": 0, "generated_tokens": 0, "seconds": 0.0}
    if not todo:
        return stats
    if cfg.generation.temperature == 0 and cfg.generation.num_samples > 1:
        run.log("note: temperature 0 makes the N rollouts of a step identical (estimates 0 or 1)")
    roller = ChunkRoller(make_generator(), cfg)
    with progress(missing, "step labels") as bar:
        for chunk in todo:
            rows = [r for r in roller.roll(solutions, chunk) if r["index"] not in done]
            job.append(rows)
            for key in ("rollouts", "generated_tokens", "seconds"):
                stats[key] += sum(r[key] for r in rows)
            stats["solutions"] += len(rows)
            run.log_metrics({"solutions_labelled": len(job.rows), "rollouts": stats["rollouts"],
                             "rollouts_per_s": round(stats["rollouts"] / stats["seconds"], 3)
                             if stats["seconds"] else None})
            bar.advance(len(rows))
    stats["seconds"] = round(stats["seconds"], 3)
    return stats


def label_solutions(cfg: StepLabelConfig, run: RunFolder, solutions: Sequence[StepSolution],
                    make_generator: Callable[[], Generator]) -> Path:
    """Label ``solutions`` (resuming ``labels.jsonl``), write ``steps.jsonl`` and ``cost.json``.

    ``make_generator`` builds the completer; it is called only when some solution still needs
    rollouts (the seam tests use to inject a fake completer)."""
    job = JsonlJob(run.path / "labels.jsonl")
    if job.dropped_torn_line:
        run.log("labels.jsonl ended in a torn line (a killed write); it was dropped")
    _check_rows(job, solutions)
    this_run = roll_out_all(cfg, run, solutions, job, make_generator)
    rows = job.sorted_rows()
    labelled = [labelled_solution(solutions[r["index"]], r, cfg.estimate,
                                  cfg.stop_after_first_zero) for r in rows]
    write_jsonl_atomic(run.path / "steps.jsonl", [step_solution_to_dict(s) for s in labelled])
    cost = cost_report(cfg, rows, solutions, labelled, this_run)
    run.write_json("cost.json", cost)
    run.log(f"step labels: {cost['solutions']} solutions, {cost['rollouts']} rollouts, "
            f"{cost['rollouts_per_s']} rollouts/s; agreement with input labels: "
            f"{cost['agreement_with_input_labels']}")
    return run.path


def run_step_labels(cfg: StepLabelConfig, run: RunFolder) -> Path:
    """The ``step-labels`` stage: returns its folder (``steps.jsonl``, ``cost.json``)."""
    return label_solutions(cfg, run, load_solutions(cfg, run), lambda: build_completer(cfg))
