"""AI preference labels (``alignlab label``): RLAIF's labeller.

Bai et al. 2022, "Constitutional AI", sec. 4.1: the feedback model sees the conversation, a principle
and the two replies as options (A) and (B); the label is the normalised probability of each option
letter read from ONE forward pass. Positions bias such judges, so every pair is asked in both orders
and the two probabilities that the written ``chosen`` is preferred are averaged (Lee et al. 2024,
"RLAIF vs. RLHF", sec. 2.1.2); with ``principles_per_pair`` > 1 the label also averages over
principles drawn at random from the constitution (the paper's ensembling over 16 principles).
Chain-of-thought mode (sec. 4.2) first samples a rationale after "Let's think step by step:", then reads
the options; since such probabilities are near 0 or 1, ``cot_clamp`` clamps them into a band
(the paper uses 40-60 %).

Output ``labels.jsonl`` holds one soft-labelled pair per input pair (``label`` = P(chosen ≻ rejected)),
readable by the reward-model and DPO stages, plus the per-order probabilities; ``label_stats.json``
holds the position-bias statistics (:func:`label_stats`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, model_validator

from alignlab.config import (
    DataSettings,
    GenerationSettings,
    JudgeSettings,
    ModelSettings,
    StageConfig,
)
from alignlab.data.records import Messages, PreferencePair, messages_to_list
from alignlab.feedback.constitution import Constitution
from alignlab.feedback.prompts import (
    ANSWER_PREFIX,
    COT_PREFIX,
    DEFAULT_GUARD,
    OPTIONS,
    PromptGuard,
    comparison_messages,
    cot_answer_prefix,
    render_judge_text,
)
from alignlab.progress import progress


class LabelConfig(StageConfig):
    """AI preference labels (Bai et al. 2022, "Constitutional AI", section 4.1).

    Each pair in ``data`` (its ``chosen``/``rejected`` order is only the order written on disk) is
    shown to the judge with a comparison principle and the options (A)/(B); the label is
    P(chosen preferred), the normalised option probability from one forward pass, averaged over
    ``principles_per_pair`` principles drawn at random from the constitution and over both option
    orders (``both_orders``). ``cot``: the judge first writes a rationale
    (``cot_generation``), then the option probabilities are read; ``cot_clamp`` clamps them to a band
    (the paper uses 0.4-0.6). With ``policy`` set, ``data`` holds prompts and two responses per prompt
    are sampled from ``policy`` before labelling. The job is resumable: rerun the same command.
    Prompt-injection guards (:class:`alignlab.feedback.prompts.PromptGuard`): ``escape_markers``
    (default on) brackets role markers and breaks special-token strings inside the replies;
    ``mask_option_letters`` (default on) writes ``(A)``/``(B)`` inside them as ``[A]``/``[B]``;
    ``delimit_replies`` (default off) quotes each reply between ``<reply>`` tags.
    """

    stage: Literal["label"] = "label"
    judge: JudgeSettings
    data: DataSettings
    constitution: str = "default"
    principles_per_pair: int = Field(1, ge=1)
    both_orders: bool = True
    few_shot: int = Field(0, ge=0)
    cot: bool = False
    cot_clamp: tuple[float, float] | None = (0.4, 0.6)
    cot_generation: GenerationSettings = Field(
        default_factory=lambda: GenerationSettings(max_new_tokens=96, temperature=0.0))
    policy: ModelSettings | None = None
    generation: GenerationSettings = Field(default_factory=lambda: GenerationSettings(num_samples=2))
    flush_every: int = Field(16, ge=1)
    seed: int = 0
    escape_markers: bool = True
    mask_option_letters: bool = True
    delimit_replies: bool = False
    out: str

    @model_validator(mode="after")
    def _check(self) -> "LabelConfig":
        if self.cot_clamp is not None and not 0.0 <= self.cot_clamp[0] <= self.cot_clamp[1] <= 1.0:
            raise ValueError(f"cot_clamp must be (low, high) with 0 <= low <= high <= 1, got {self.cot_clamp}")
        if self.cot and self.judge.kind == "reward_model":
            raise ValueError("cot needs a generating judge (local or http), not a reward model")
        return self



@dataclass(frozen=True)
class LabelRequest:
    """One pair to label, with the principles drawn for it."""

    index: int
    prompt: Messages
    chosen: str
    rejected: str
    data_label: float
    principles: tuple[str, ...]


def make_requests(pairs: Sequence[PreferencePair], constitution: Constitution, per_pair: int,
                  seed: int) -> list[LabelRequest]:
    """The pairs with their principles; pair ``i`` draws from ``Random(f"{seed}-{i}")`` so a resumed
    job draws exactly what a straight one would."""
    return [LabelRequest(i, p.prompt, p.chosen, p.rejected, p.label,
                         tuple(constitution.draw_comparisons(random.Random(f"{seed}-{i}"), per_pair)))
            for i, p in enumerate(pairs)]


def clean_rationale(text: str) -> str:
    """A sampled rationale (leading whitespace dropped) up to a new paragraph/turn or to where the
    model gives its own final answer ("answer is: (" / "answer is (")."""
    text = text.lstrip()
    for marker in ("\n\n", "answer is: (", "answer is ("):
        cut = text.find(marker)
        if cut >= 0:
            text = text[:cut]
    return text.strip()


class PairLabeler:
    """Labels :class:`LabelRequest` chunks with a text judge or a reward-model judge."""

    def __init__(self, judge, constitution: Constitution, both_orders: bool = True, few_shot: int = 0,
                 cot: bool = False, cot_clamp: tuple[float, float] | None = (0.4, 0.6),
                 cot_generation=None, guard: PromptGuard = DEFAULT_GUARD):
        self.judge, self.both_orders, self.cot, self.guard = judge, both_orders, cot, guard
        self.examples = constitution.comparison_examples[:few_shot]
        self.cot_clamp = cot_clamp if cot else None
        self.cot_generation = cot_generation

    def label(self, requests: Sequence[LabelRequest]) -> list[dict]:
        """One output row per request (see the module docstring)."""
        if hasattr(self.judge, "pair_probs"):
            return self._label_with_pair_judge(requests)
        queries = [(r, principle, order) for r in requests for principle in r.principles
                   for order in ((0, 1) if self.both_orders else (0,))]
        messages = [comparison_messages(r.prompt, *((r.chosen, r.rejected) if order == 0 else
                                                    (r.rejected, r.chosen)), principle, self.examples,
                                        self.guard)
                    for r, principle, order in queries]
        prefixes, rationales = self._answer_prefixes(messages)
        tokenizer = getattr(self.judge, "tokenizer", None)
        texts = [render_judge_text(tokenizer, m, p, self.guard.escape_markers)
                 for m, p in zip(messages, prefixes)]
        probs = self.judge.option_probs(texts, OPTIONS)
        mass = getattr(self.judge, "last_mass", None) or [None] * len(texts)
        p_chosen = [self._clamp(row[order]) for row, (_, _, order) in zip(probs, queries)]
        return self._rows(requests, queries, p_chosen, rationales, mass)

    def _answer_prefixes(self, messages: list[Messages]) -> tuple[list[str], list[str]]:
        if not self.cot:
            return [ANSWER_PREFIX] * len(messages), []
        tokenizer = getattr(self.judge, "tokenizer", None)
        g = self.cot_generation
        starts = [render_judge_text(tokenizer, m, COT_PREFIX, self.guard.escape_markers)
                  for m in messages]
        rationales = [clean_rationale(t) for t in
                      self.judge.continue_texts(starts, g.max_new_tokens, g.temperature, g.seed)]
        return [cot_answer_prefix(r) for r in rationales], rationales

    def _clamp(self, p: float) -> float:
        if self.cot_clamp is None:
            return p
        low, high = self.cot_clamp
        return min(max(p, low), high)

    def _rows(self, requests, queries, p_chosen, rationales, mass) -> list[dict]:
        by_index: dict[int, dict] = {}
        for k, (r, principle, order) in enumerate(queries):
            row = by_index.setdefault(r.index, _row_head(r))
            row["p_chosen_first" if order == 0 else "p_chosen_second"].append(round(p_chosen[k], 6))
            if rationales:
                row.setdefault("rationales", []).append(rationales[k])
            if mass[k] is not None:
                row.setdefault("option_mass", []).append(round(mass[k], 6))
        rows = [by_index[r.index] for r in requests]
        for row in rows:
            row["label"] = round(_mean(row["p_chosen_first"] + row["p_chosen_second"]), 6)
        return rows

    def _label_with_pair_judge(self, requests: Sequence[LabelRequest]) -> list[dict]:
        probs = self.judge.pair_probs([r.prompt for r in requests], [r.chosen for r in requests],
                                      [r.rejected for r in requests])
        rows = []
        for r, p in zip(requests, probs):
            row = _row_head(r)
            row["p_chosen_first"], row["label"] = [round(p, 6)], round(p, 6)
            rows.append(row)
        return rows


def _row_head(r: LabelRequest) -> dict:
    return {"index": r.index, "prompt": messages_to_list(r.prompt), "chosen": r.chosen,
            "rejected": r.rejected, "data_label": r.data_label, "principles": list(r.principles),
            "p_chosen_first": [], "p_chosen_second": []}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


# ----------------------------------------------------------------------------- statistics


def _agree(p: float, truth: float) -> float:
    """1 when the label and the truth pick the same reply, 0 when not, 0.5 when either is a tie."""
    if p == 0.5 or truth == 0.5:
        return 0.5
    return float((p > 0.5) == (truth > 0.5))


def label_stats(rows: Sequence[dict]) -> dict:
    """Position-bias and agreement statistics of labelled rows.

    * ``p_first_listed``: mean probability given to whichever reply is listed first (A), over every
      query; 0.5 means no position bias, and ``position_bias`` = that - 0.5.
    * ``first_listed_rate``: share of queries answered A (P(A) > 0.5).
    * ``order_consistency``: share of (pair, principle) whose two orders pick the same reply.
    * ``agreement_*`` (when the input pairs carry a preference, ``data_label`` != 0.5): agreement of
      the label with it using the chosen-first order only, the chosen-second order only, their
      expectation under a random order (``one_order``), and the averaged label (``both_orders``).
    """
    first = [p for r in rows for p in r["p_chosen_first"]]
    second = [p for r in rows for p in r["p_chosen_second"]]
    stats: dict = {"pairs": len(rows), "queries": len(first) + len(second),
                   "mean_label": round(_mean([r["label"] for r in rows]), 4) if rows else None}
    if second:
        p_a = first + [1 - p for p in second]
        stats["p_first_listed"] = round(_mean(p_a), 4)
        stats["position_bias"] = round(stats["p_first_listed"] - 0.5, 4)
        stats["first_listed_rate"] = round(_mean([float(p > 0.5) for p in p_a]), 4)
        pairs = [(a, b) for r in rows for a, b in zip(r["p_chosen_first"], r["p_chosen_second"])]
        stats["order_consistency"] = round(_mean([float((a > 0.5) == (b > 0.5)) for a, b in pairs]), 4)
    masses = [m for r in rows for m in r.get("option_mass", [])]
    if masses:
        stats["mean_option_mass"] = round(_mean(masses), 4)
    truth = [r for r in rows if r["data_label"] != 0.5]
    if truth:
        stats["agreement_first_order"] = round(_mean([_agree(_mean(r["p_chosen_first"]), r["data_label"])
                                                      for r in truth]), 4)
        if second:
            stats["agreement_second_order"] = round(_mean(
                [_agree(_mean(r["p_chosen_second"]), r["data_label"]) for r in truth]), 4)
            stats["agreement_one_order"] = round((stats["agreement_first_order"]
                                                  + stats["agreement_second_order"]) / 2, 4)
        stats["agreement_both_orders"] = round(_mean([_agree(r["label"], r["data_label"])
                                                      for r in truth]), 4)
    return stats


# ----------------------------------------------------------------------------- the stage


def sample_pairs(cfg, run) -> list[PreferencePair]:
    """Two samples per prompt from ``cfg.policy`` (resumable, in ``pairs.jsonl``); identical samples
    are dropped and counted."""
    from alignlab.data.loading import load_prompts
    from alignlab.feedback.jobs import JsonlJob
    from alignlab.generation.hf import HFGenerator
    from alignlab.models.loading import load_causal_lm

    prompts = load_prompts(cfg.data)
    job = JsonlJob(run.path / "pairs.jsonl")
    todo = [i for i in range(len(prompts)) if i not in job.done_indices()]
    if todo:
        model, tokenizer = load_causal_lm(cfg.policy, for_training=False)
        generator = HFGenerator(model, tokenizer)
        step = cfg.flush_every
        for start in range(0, len(todo), step):
            chunk = todo[start:start + step]
            settings = cfg.generation.model_copy(update={"num_samples": 2,
                                                         "seed": cfg.generation.seed + chunk[0]})
            samples = generator.generate([prompts[i] for i in chunk], settings)
            job.append({"index": i, "prompt": messages_to_list(prompts[i]), "chosen": s[0].text,
                        "rejected": s[1].text} for i, s in zip(chunk, samples))
        run.log(f"sampled {len(todo)} pairs from {cfg.policy.path}")
    rows = job.sorted_rows()
    pairs = [PreferencePair(prompts[r["index"]], r["chosen"], r["rejected"], 0.5)
             for r in rows if r["chosen"] != r["rejected"]]
    run.write_json("pair_stats.json", {"prompts": len(prompts), "identical_dropped": len(rows) - len(pairs)})
    return pairs


def load_pairs(cfg, run) -> list[PreferencePair]:
    """The pairs to label: read from ``cfg.data``, or sampled from ``cfg.policy``."""
    if cfg.policy is not None:
        return sample_pairs(cfg, run)
    from alignlab.data.loading import load_records

    loaded = load_records(cfg.data, "pair")
    return list(loaded.records)


STAT_FIELDS = ("index", "p_chosen_first", "p_chosen_second", "label", "data_label", "option_mass")


class LabelJob:
    """``labels.jsonl`` as a resumable job (:class:`alignlab.feedback.jobs.JsonlJob`) that keeps only
    the indices of the rows it holds, not the rows: a long job's memory does not grow with the
    labels it has written (30,000 gym rows are 70 MiB as Python dicts; see
    benchmarks/reliability/load.md). :meth:`stat_rows` reads back what :func:`label_stats` needs."""

    def __init__(self, path):
        from alignlab.feedback.jobs import JsonlJob

        self.job = JsonlJob(path)  # recovers the file (cuts an unfinished chunk) and reads it once
        self.path, self.dropped_torn_line = self.job.path, self.job.dropped_torn_line
        self.done = self.job.done_indices()
        self.job.rows = []

    def __len__(self) -> int:
        return len(self.done)

    def done_indices(self) -> set[int]:
        """The ``index`` of every row written."""
        return set(self.done)

    def append(self, rows) -> None:
        """Write ``rows`` as one durable chunk (:meth:`JsonlJob.append`), keeping only their indices."""
        rows = list(rows)
        self.job.append(rows)
        self.job.rows.clear()
        self.done.update(int(r["index"]) for r in rows)

    def stat_rows(self) -> list[dict]:
        """Every row in input order, with only the fields of :data:`STAT_FIELDS`."""
        import json

        rows = []
        with open(self.path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    row = json.loads(line)
                    rows.append({k: row[k] for k in STAT_FIELDS if k in row})
        return sorted(rows, key=lambda r: r["index"])


def _label_chunk(labeler: PairLabeler, chunk: Sequence[LabelRequest], cfg, job) -> list[dict]:
    """``labeler.label(chunk)``; a judge that fails for good (an HTTP endpoint after its retries)
    becomes one :class:`JudgeError` line naming the input pairs it was labelling and saying that
    the rows already in ``labels.jsonl`` are kept (a rerun labels only the rest)."""
    from alignlab.feedback.http import JudgeError

    try:
        return labeler.label(chunk)
    except JudgeError as exc:
        per_pair = cfg.principles_per_pair * (2 if cfg.both_orders else 1)
        failed = [r.index for r in chunk]
        if exc.texts is not None and not hasattr(labeler.judge, "pair_probs"):
            failed = failed[exc.texts[0] // per_pair:-(-exc.texts[1] // per_pair)] or failed
        if failed == list(range(failed[0], failed[-1] + 1)):
            which = f"{failed[0]}" if len(failed) == 1 else f"{failed[0]}-{failed[-1]}"
        else:
            which = ", ".join(map(str, failed))
        error = JudgeError(f"{exc} (labelling input pair {which} of {cfg.data.path}, 0-based; "
                           f"the {len(job)} pairs labelled so far are kept in {job.path}: "
                           f"rerun the same command to label the rest)")
        error.texts = exc.texts
        raise error from None


def run_label(cfg, run) -> None:
    """Label every pair (resuming a killed job), then write ``label_stats.json``."""
    from alignlab.feedback.constitution import load_constitution
    from alignlab.feedback.judges import build_judge

    constitution = load_constitution(cfg.constitution)
    requests = make_requests(load_pairs(cfg, run), constitution, cfg.principles_per_pair, cfg.seed)
    job = LabelJob(run.path / "labels.jsonl")
    done = job.done_indices()
    todo = [r for r in requests if r.index not in done]
    run.log(f"{len(requests)} pairs; {len(done)} already labelled; {len(todo)} to label")
    seconds, labeler = 0.0, None
    if todo:
        labeler = PairLabeler(build_judge(cfg.judge), constitution, cfg.both_orders, cfg.few_shot,
                              cfg.cot, cfg.cot_clamp, cfg.cot_generation,
                              PromptGuard(cfg.escape_markers, cfg.delimit_replies,
                                          cfg.mask_option_letters))
        with progress(len(todo), "labelling") as bar:
            for start in range(0, len(todo), cfg.flush_every):
                t0 = time.perf_counter()
                chunk = todo[start:start + cfg.flush_every]
                job.append(_label_chunk(labeler, chunk, cfg, job))
                seconds += time.perf_counter() - t0
                run.log_metrics({"labelled": len(job), "pairs_per_s": round(
                    (start + len(chunk)) / max(seconds, 1e-9), 3)})
                bar.advance(len(chunk))
    stats = label_stats(job.stat_rows())
    stats["pairs_per_s_this_run"] = round(len(todo) / seconds, 3) if seconds else None
    if labeler is not None and hasattr(labeler.judge, "truncated"):
        stats["truncated_queries_this_run"] = labeler.judge.truncated
    if labeler is not None and hasattr(labeler.judge, "missing_options"):
        stats["http_missing_options"] = labeler.judge.missing_options
    run.write_json("label_stats.json", stats)
    run.log(f"label stats: {stats}")
