"""The ``sample`` stage: N samples per prompt from a policy, scored, and the sets made from them.

``samples.jsonl`` holds one row per prompt — ``{"index", "prompt", "samples": [{"text", "score",
"stop_reason"}, ...]}`` — appended and fsynced every ``flush_every`` prompts through the one job
mechanism (:class:`alignlab.feedback.jobs.JsonlJob`): a killed job resumes at the first prompt
without a row, so no finished prompt is generated or scored twice. Generation goes through the
generation backends (``backend: hf`` or ``vllm``), scoring through the online stage's scorers
(``scorers:``, summed with their weights: a reward model, the gym's gold reward, a judge, a
function, ...).

When every prompt has its row the outputs asked for are written (atomically) from the rows
(:mod:`alignlab.sampling.select`), responses stripped of surrounding whitespace (decoded samples
often start with the space a chat template puts after the role marker; training on them unstripped
teaches the policy a double space — in the gym, 80 % off-grammar replies after one RS round):

- ``best_of_n.jsonl`` — inference-time best-of-N: ``{"prompt", "response", "score", "n"}``;
- ``rs_sft.jsonl`` — rejection-sampling fine-tuning (``rs_top_k``, optional ``rs_threshold``):
  ``{"messages": [...]}`` conversations that ``alignlab sft`` reads directly;
- ``pairs.jsonl`` — best vs worst sample per prompt (``pairs: true``; prompts whose samples all
  score the same are skipped and counted, and with ``pairs_min_gap`` so are pairs whose score gap
  is smaller): ``{"prompt", "chosen", "rejected"}`` for ``alignlab dpo``;
- ``pairs_with_replay.jsonl`` (``replay:``, earlier rounds' pair files, most recent first) — this
  round's pairs plus each earlier round's kept with probability ``replay_decay ** age``
  (:func:`~alignlab.sampling.select.replay_subset`). With ``pairs_min_gap`` this is DNO's batched
  on-policy round (Rosset et al. 2024): large-margin best-vs-worst pairs of the current policy,
  earlier iterations mixed in with decaying weight, then ``dpo`` from the current policy as its own
  reference;
- ``rso_pairs.jsonl`` (``<name>_pairs.jsonl`` for each entry when ``rso:`` is a list of named
  settings) — RSO (``rso:``; Liu et al. 2023): ``rso.num`` samples accepted per prompt by
  statistical rejection sampling with ``rso.beta`` (:func:`~alignlab.sampling.select.rso_accept`,
  seeded per prompt), paired by ``first_round`` or ``tournament`` ranking and labelled by score
  (:func:`~alignlab.sampling.select.rso_pairs`). Train on them with ``alignlab dpo`` and ``loss:
  dpo`` (the paper's sigmoid-norm), ``gpo`` with ``kind: hinge`` (hinge-norm) or ``slic`` with
  ``lambda_reg: 0`` (hinge, no reference);
- ``d2o.jsonl`` (``d2o_negatives:``, pair or binary data whose rejected / undesirable completions are
  human negatives) — D2O lists (Duan et al. 2024; :mod:`alignlab.sampling.d2o`): per negative whose
  prompt was sampled, ``{"prompt", "responses": [the N samples..., negative], "scores": [1, ..., 1,
  0]}`` for ``alignlab dpo`` with ``loss: d2o``; negatives of unsampled prompts are counted
  (``d2o_unmatched``). Sample the negatives' own prompts (``prompts:`` the same file);
- ``summary.json`` — counts, mean score of all samples and of the best-of-N, each ``monitors:``
  scorer's mean over all samples and over the best-of-N picks (monitors are scored, never used to
  select: e.g. the gym's gold reward of what a proxy reward model picks), seconds;
- ``judge_agreement.json`` (when there are monitors) — how the summed score agrees with each
  monitor: pair agreement within prompts, Pearson / Spearman over samples, and how often the
  monitor prefers each selected best-vs-worst pair (:mod:`alignlab.sampling.judge_report`); the
  headline numbers also go into the summary, as ``<monitor>_pair_agreement`` etc.

A scorer may leave a sample unscored (a NaN score, stored as ``"score": null``: a self-rewarding
judge, ``kind: self_reward``, none of whose judgements parsed); such samples take part in no
selection and are counted (``samples_unscored``, ``prompts_unscored``; with parsed judgements
``<scorer>_judgements``, ``<scorer>_unparsed``, ``<scorer>_parse_failure_rate``). Scorers that keep
per-sample details (``last_details``) have them stored under each sample's ``details``, so that a
resumed job reports the same counts without judging anything again.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from alignlab.config import (
    DataSettings,
    GenerationSettings,
    ModelSettings,
    ScorerSettings,
    StageConfig,
    StrictModel,
)
from alignlab.data.loading import load_prompts, load_records
from alignlab.data.records import Messages, messages_from_list, messages_to_list, record_to_dict
from alignlab.feedback.jobs import JsonlJob, write_jsonl_atomic
from alignlab.runs import RunFolder
from alignlab.sampling.d2o import d2o_lists, load_negatives
from alignlab.sampling.judge_report import (
    agreement_report,
    headline,
    judgement_counts,
    split_unscored,
)
from alignlab.sampling.select import (
    best_index,
    best_worst_pair,
    replay_subset,
    rso_accept,
    rso_pairs,
    top_k_indices,
)


class RSOSettings(StrictModel):
    """RSO pair construction: accept ``num`` of the N samples with temperature ``beta``, written to
    ``<name>_pairs.jsonl``. A huge ``beta`` (e.g. 1e9) accepts in random order: the paper's
    ``sft-sample-rank`` baseline (SFT samples ranked by the reward model)."""

    name: str = Field("rso", pattern=r"^[A-Za-z0-9_-]+$")
    beta: float = Field(0.5, gt=0.0)
    num: int = Field(8, ge=2)
    ranking: Literal["first_round", "tournament"] = "first_round"
    seed: int = 0


class SampleConfig(StageConfig):
    """N samples per prompt (``generation.num_samples``), scored; see the module docstring."""

    stage: Literal["sample"] = "sample"
    policy: ModelSettings
    prompts: DataSettings
    num_prompts: int | None = Field(None, ge=1)
    generation: GenerationSettings = Field(default_factory=lambda: GenerationSettings(num_samples=4))
    backend: Literal["hf", "vllm"] = "hf"
    scorers: list[ScorerSettings] = Field(min_length=1)
    monitors: list[ScorerSettings] = Field(default_factory=list)
    flush_every: int = Field(16, ge=1)
    best_of_n: bool = True
    rs_top_k: int | None = Field(None, ge=1)
    rs_threshold: float | None = None
    pairs: bool = False
    pairs_min_gap: float | None = Field(None, ge=0.0)
    replay: list[DataSettings] = Field(default_factory=list)
    replay_decay: float = Field(0.5, gt=0.0, le=1.0)
    rso: RSOSettings | list[RSOSettings] | None = None
    d2o_negatives: DataSettings | None = None

    @model_validator(mode="after")
    def _replay_needs_pairs(self):
        if (self.replay or self.pairs_min_gap is not None) and not self.pairs:
            raise ValueError("pairs_min_gap and replay act on the best-vs-worst pairs: set pairs: true")
        return self

    @model_validator(mode="after")
    def _rso_names_unique(self):
        names = [r.name for r in self.rso_settings()]
        if len(set(names)) != len(names):
            raise ValueError(f"rso: names must be unique, got {names}")
        return self

    def rso_settings(self) -> list[RSOSettings]:
        """The RSO pair sets asked for (one or a list)."""
        if self.rso is None:
            return []
        return self.rso if isinstance(self.rso, list) else [self.rso]


def sample_rows(generator, scorer, monitors, prompts: Sequence[Messages], indices: Sequence[int],
                settings: GenerationSettings) -> list[dict]:
    """Rows for ``prompts`` (with their ``indices``): every sample with its score (None when a
    scorer left it unscored: NaN), under ``monitor`` each monitor's score (never used to select)
    and, under ``details``, what scorers that keep per-sample details said (e.g. parsed
    judgements)."""
    samples = generator.generate(prompts, settings)
    flat_prompts = [p for p, group in zip(prompts, samples) for _ in group]
    texts = [s.text for group in samples for s in group]
    scores = [None if math.isnan(v) else float(v) for v in scorer.score(flat_prompts, texts)]
    details = getattr(scorer, "last_details", None) or {}
    watched = {m.name: m.score(flat_prompts, texts) for m in monitors}
    rows, k = [], 0
    for index, prompt, group in zip(indices, prompts, samples):
        rows.append({"index": index, "prompt": messages_to_list(prompt), "samples": [
            {"text": s.text, "score": scores[k + j], "stop_reason": s.stop_reason,
             "monitor": {name: float(v[k + j]) for name, v in watched.items()},
             **({"details": {n: d[k + j] for n, d in details.items()}} if details else {})}
            for j, s in enumerate(group)]})
        k += len(group)
    return rows


def run_jobs(cfg: SampleConfig, run: RunFolder, prompts: list[Messages], job: JsonlJob) -> None:
    """Generate and score every prompt the job does not hold yet, ``flush_every`` at a time."""
    done = job.done_indices()
    todo = [i for i in range(len(prompts)) if i not in done]
    if not todo:
        return
    generator, scorer, monitors = build_sampler(cfg)
    run.log(f"sampling {len(todo)} prompts x {cfg.generation.num_samples} "
            f"({len(done)} already done)")
    for start in range(0, len(todo), cfg.flush_every):
        chunk = todo[start:start + cfg.flush_every]
        job.append(sample_rows(generator, scorer, monitors, [prompts[i] for i in chunk], chunk,
                               cfg.generation))
        run.log(f"{len(job.rows)}/{len(prompts)} prompts sampled")


def build_sampler(cfg: SampleConfig):
    """The generator of ``cfg.policy``, the summed scorer and the monitors."""
    from alignlab.generation.factory import make_generator
    from alignlab.models.loading import load_causal_lm, load_tokenizer, resolve_model_source
    from alignlab.rl.scorers import build_one_scorer, build_scorer

    model = None
    if cfg.backend == "vllm":
        source, extra = resolve_model_source(cfg.policy)
        tokenizer = load_tokenizer(source, cfg.policy, extra)
        generator = make_generator("vllm", tokenizer=tokenizer, model_path=source)
    else:
        model, tokenizer = load_causal_lm(cfg.policy, for_training=False)
        generator = make_generator("hf", model, tokenizer)
    monitors = [build_one_scorer(m, model, tokenizer) for m in cfg.monitors]
    return generator, build_scorer(cfg.scorers, model, tokenizer), monitors


def write_outputs(cfg: SampleConfig, run: RunFolder, rows: list[dict], negatives=None) -> dict:
    """best_of_n.jsonl, rs_sft.jsonl, pairs.jsonl, ... (as asked) and the summary; ``negatives``:
    the D2O negatives when already read (else read from ``cfg.d2o_negatives``)."""
    best, sft, pairs, ties, small = [], [], [], 0, 0
    all_rows, report = rows, agreement_report(rows)  # D2O lists take every sample, scored or not
    rows, unscored = split_unscored(rows)
    for row in rows:
        scores = [s["score"] for s in row["samples"]]
        texts = [s["text"].strip() for s in row["samples"]]
        b = best_index(scores)
        best.append({"prompt": row["prompt"], "response": texts[b], "score": scores[b],
                     "n": len(scores)})
        if cfg.rs_top_k:
            sft += [{"messages": row["prompt"] + [{"role": "assistant", "content": texts[i]}]}
                    for i in top_k_indices(scores, cfg.rs_top_k, cfg.rs_threshold)]
        pair = best_worst_pair(scores)
        ties += pair is None and len(scores) > 1
        if pair is not None and cfg.pairs_min_gap is not None and \
                scores[pair[0]] - scores[pair[1]] < cfg.pairs_min_gap:
            small += 1
            pair = None
        if pair is not None:
            pairs.append({"prompt": row["prompt"], "chosen": texts[pair[0]],
                          "rejected": texts[pair[1]]})
    if cfg.best_of_n:
        write_jsonl_atomic(run.path / "best_of_n.jsonl", best)
    if cfg.rs_top_k:
        write_jsonl_atomic(run.path / "rs_sft.jsonl", sft)
    if cfg.pairs:
        write_jsonl_atomic(run.path / "pairs.jsonl", pairs)
    if cfg.replay:
        mixed, kept = with_replay(cfg, pairs)
        write_jsonl_atomic(run.path / "pairs_with_replay.jsonl", mixed)
    every = [s["score"] for row in rows for s in row["samples"]]
    summary = {"prompts": len(all_rows), "samples": len(every),
               "mean_score": sum(every) / len(every) if every else None,
               "best_of_n_mean_score": sum(r["score"] for r in best) / len(best) if best else None,
               "rs_sft_examples": len(sft), "pairs": len(pairs), "pairs_skipped_all_equal": ties,
               "pairs_skipped_small_gap": small, **unscored,
               **judgement_counts(all_rows), **headline(report)}
    if report:
        run.write_json("judge_agreement.json", report)
    if cfg.replay:
        summary["replayed_pairs"] = kept
    summary.update(monitor_means(rows))
    for rso in cfg.rso_settings():
        made, rso_ties = rso_rows(rso, rows)
        write_jsonl_atomic(run.path / f"{rso.name}_pairs.jsonl", made)
        summary.update({f"{rso.name}_pairs": len(made), f"{rso.name}_ties_skipped": rso_ties})
    if cfg.d2o_negatives is not None:
        negatives = load_negatives(cfg.d2o_negatives) if negatives is None else negatives
        lists, unmatched = d2o_lists(all_rows, negatives)
        write_jsonl_atomic(run.path / "d2o.jsonl", lists)
        summary.update({"d2o_lists": len(lists), "d2o_unmatched": unmatched})
    return summary


def with_replay(cfg: SampleConfig, pairs: list[dict]) -> tuple[list[dict], list[int]]:
    """This round's pairs followed by each ``replay`` source's pairs (most recent first, age 1, 2,
    ...) kept with probability ``replay_decay ** age``; and how many each source kept."""
    mixed, kept = list(pairs), []
    for age, source in enumerate(cfg.replay, 1):
        earlier = load_records(source, "pair").records
        chosen = replay_subset(len(earlier), age, cfg.replay_decay, cfg.generation.seed)
        mixed += [record_to_dict(earlier[i]) for i in chosen]
        kept.append(len(chosen))
    return mixed, kept


def monitor_means(rows: list[dict]) -> dict[str, float]:
    """Each monitor's mean over all samples and over the best-of-N picks (``<name>_mean``,
    ``<name>_best_of_n``): e.g. the gold reward of what the proxy selects."""
    names = sorted({n for row in rows for s in row["samples"] for n in s.get("monitor", {})})
    out = {}
    for name in names:
        every = [s["monitor"][name] for row in rows for s in row["samples"]]
        picks = [row["samples"][best_index([s["score"] for s in row["samples"]])]["monitor"][name]
                 for row in rows]
        out[f"{name}_mean"] = sum(every) / len(every)
        out[f"{name}_best_of_n"] = sum(picks) / len(picks)
    return out


def rso_rows(settings: RSOSettings, rows: list[dict]) -> tuple[list[dict], int]:
    """RSO pairs of every prompt (module docstring) and the number of tied matches skipped."""
    out, ties = [], 0
    for row in rows:
        scores = [s["score"] for s in row["samples"]]
        texts = [s["text"].strip() for s in row["samples"]]
        accepted = rso_accept(scores, settings.beta, settings.num,
                              seed=settings.seed * 1_000_003 + row["index"])
        pairs, skipped = rso_pairs(scores, accepted, settings.ranking)
        ties += skipped
        out += [{"prompt": row["prompt"], "chosen": texts[a], "rejected": texts[b]}
                for a, b in pairs]
    return out, ties


def run_sample(cfg: SampleConfig, run: RunFolder) -> Path:
    """Sample, score, select (module docstring); returns the run folder."""
    start = time.time()
    prompts = load_prompts(cfg.prompts)
    prompts = prompts[:cfg.num_prompts] if cfg.num_prompts else prompts
    if not prompts:
        raise ValueError(f"{cfg.prompts.path}: no prompts")
    # read before sampling, so that a bad negatives file fails before the long part
    negatives = load_negatives(cfg.d2o_negatives) if cfg.d2o_negatives else None
    job = JsonlJob(run.path / "samples.jsonl")
    check_rows(job, prompts, cfg.generation.num_samples)
    run_jobs(cfg, run, prompts, job)
    summary = write_outputs(cfg, run, job.sorted_rows(), negatives)
    summary["seconds"] = round(time.time() - start, 1)
    run.write_json("summary.json", summary)
    run.log("sample: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in summary.items()))
    return run.path


def check_rows(job: JsonlJob, prompts: list[Messages], num_samples: int) -> None:
    """Refuse to resume from rows made for other prompts or another N."""
    for row in job.rows:
        i = int(row["index"])
        if i >= len(prompts) or messages_from_list(row["prompt"]) != prompts[i] or \
                len(row["samples"]) != num_samples:
            raise ValueError(f"{job.path}: the row for prompt {i} was made for other prompts or "
                             "another num_samples; use a new out folder")
