"""The ``eval`` stage: generate on held-out prompts, score, and report every metric with its se.

Two layers:

- :func:`evaluate_policy` works on already-loaded models and an :class:`EvalContext` that holds what is
  shared between policies evaluated on the same prompts (prompts, generation settings, gym, reward
  judge, reference model). The reference's samples and their scores are computed once per context and
  reused for every policy — the quickstart evaluates base/SFT/DPO against one reference this way.
- :func:`run_eval` is the stage: it loads models from an :class:`~alignlab.config.EvalConfig`, calls
  :func:`evaluate_policy`, writes ``samples.jsonl`` and ``metrics.json``, logs to ``metrics.jsonl`` and
  frees the models. Across separate eval stages the reference samples are cached on disk in
  ``<out>/../.eval_cache/`` keyed by the reference model files, the prompts and the settings.

Reference samples use ``seed + 1`` so they are independent of the policy's even when policy and
reference are the same model (the win rate of a model against itself is then 0.5 ± se, not exactly 0.5).
Samples of a prompt are paired by index: policy sample k against reference sample k.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

from pydantic import Field, model_validator

from alignlab.config import (
    DataSettings,
    GenerationSettings,
    ModelSettings,
    StageConfig,
    StrictModel,
)
from alignlab.data.records import Messages
from alignlab.eval.kl import exact_sampling, kl_per_sample
from alignlab.eval.metrics import gold_metrics, length_metrics
from alignlab.eval.refusal import refusal_rate
from alignlab.eval.stats import Stat, mean_se
from alignlab.eval.winrate import RewardJudge, proxy_reward, rm_lengths, win_rate
from alignlab.generation.base import Sample
from alignlab.runs import RunFolder, write_atomic


class PairEvalSettings(StrictModel):
    """Evaluation on preference pairs (:mod:`alignlab.eval.pairs`).

    ``scorer``: ``reward_model`` (the stage's ``reward_model``), ``implicit`` (the stage's ``policy``
    as an implicit reward model: ``beta * (log pi - log pi_ref)`` against the stage's ``reference``,
    or ``beta * log pi`` without one; ``average`` uses per-token means, SimPO's reward) or ``auto``
    (the reward model when one is given, else implicit)."""

    data: DataSettings
    scorer: Literal["auto", "reward_model", "implicit"] = "auto"
    beta: float = Field(0.1, gt=0.0)
    average: bool = False
    max_length: int = Field(512, ge=8)
    max_prompt_length: int = Field(256, ge=1)
    batch_size: int = Field(16, ge=1)


class EvalConfig(StageConfig):
    """Generate on held-out prompts and report gold/proxy reward, rates, KL and win rate; and/or
    score preference pairs (``pairs``) with a reward model or a policy as an implicit reward model."""

    stage: Literal["eval"] = "eval"
    policy: ModelSettings | None = None
    reference: ModelSettings | None = None
    reward_model: ModelSettings | None = None
    prompts: DataSettings | None = None
    pairs: PairEvalSettings | None = None
    gym: str | None = None
    num_prompts: int | None = Field(None, ge=1)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    out: str

    @model_validator(mode="after")
    def _check_inputs(self) -> EvalConfig:
        if self.prompts is None and self.pairs is None:
            raise ValueError("eval needs 'prompts' (generate and score) or 'pairs' (rank pairs)")
        if self.prompts is not None and self.policy is None:
            raise ValueError("'prompts' needs 'policy' (the model that generates)")
        if self.pairs is not None:
            scorer = self.pairs.scorer
            if scorer == "reward_model" and self.reward_model is None:
                raise ValueError("pairs.scorer 'reward_model' needs 'reward_model'")
            if scorer in ("implicit", "auto") and self.reward_model is None and self.policy is None:
                raise ValueError("pairs need 'reward_model' or 'policy' (an implicit reward model)")
        return self


@dataclass
class Scored:
    """Flat samples (prompt-major, ``num_samples`` per prompt) with their gold and RM scores."""

    prompts: list[Messages]
    samples: list[Sample]
    num_samples: int = 1
    gold: list[Any] | None = None
    rm: list[float] | None = None


@dataclass
class EvalContext:
    """What several policies evaluated on the same prompts share (see the module docstring)."""

    prompts: list[Messages]
    settings: GenerationSettings
    gym: Any = None
    judge: RewardJudge | None = None
    reference: Any = None
    reference_tokenizer: Any = None
    reference_samples: list[list[Sample]] | None = None
    kl_batch_size: int = 16
    _reference_scored: Scored | None = field(default=None, repr=False)

    def reference_side(self) -> Scored | None:
        """The reference's samples, generated (seed + 1) and scored once; None without a reference."""
        if self.reference is None:
            return None
        if self._reference_scored is None:
            if self.reference_samples is None:
                self.reference_samples = generate_samples(
                    self.reference, self.reference_tokenizer, self.prompts, reference_settings(self))
            self._reference_scored = score_samples(self, self.reference_samples)
        return self._reference_scored


def reference_settings(ctx: EvalContext) -> GenerationSettings:
    """The policy's generation settings with ``seed + 1`` (independent reference samples)."""
    return ctx.settings.model_copy(update={"seed": ctx.settings.seed + 1})


def generate_samples(model, tokenizer, prompts: Sequence[Messages],
                     settings: GenerationSettings) -> list[list[Sample]]:
    """``settings.num_samples`` completions per prompt from the HF generator (batched, KV cache)."""
    from alignlab.generation.hf import HFGenerator

    return HFGenerator(model, tokenizer).generate(list(prompts), settings)


def flatten(prompts: Sequence[Messages], samples: Sequence[Sequence[Sample]]) -> Scored:
    """Prompt-major flat lists; every prompt must have the same number of samples."""
    if len(prompts) != len(samples):
        raise ValueError(f"eval: {len(prompts)} prompts but samples for {len(samples)}")
    sizes = {len(group) for group in samples}
    if len(sizes) > 1:
        raise ValueError(f"eval: prompts have different numbers of samples {sorted(sizes)}")
    flat_prompts = [p for p, group in zip(prompts, samples) for _ in group]
    return Scored(flat_prompts, [s for group in samples for s in group], sizes.pop() if sizes else 1)


def score_samples(ctx: EvalContext, samples: Sequence[Sequence[Sample]]) -> Scored:
    """Gold results (when ``ctx.gym`` is set) and RM scores (when ``ctx.judge`` is set)."""
    scored = flatten(ctx.prompts, samples)
    texts = [s.text for s in scored.samples]
    if ctx.gym is not None:
        scored.gold = [_gold(ctx.gym, p, t, i) for i, (p, t) in enumerate(zip(scored.prompts, texts))]
    if ctx.judge is not None:
        scored.rm = ctx.judge.score(scored.prompts, texts)
    return scored


def _gold(gym, prompt: Messages, text: str, index: int):
    from alignlab.gym.world import GymPromptError

    try:
        return gym.score(prompt, text)
    except GymPromptError as exc:
        raise ValueError(f"eval: prompt {index} is not a gym prompt ({exc}); use the gym's "
                         "eval_prompts.jsonl or leave `gym` unset") from None


# ----------------------------------------------------------------------------- one policy


@dataclass
class PolicyEval:
    """Metrics (each a Stat) and one row per sample (for ``samples.jsonl``) of one policy."""

    metrics: dict[str, Stat]
    rows: list[dict[str, Any]]

    def metrics_dict(self) -> dict[str, dict[str, Any]]:
        """``{metric: {"mean", "se", "n"}}`` — the form of ``metrics.json``."""
        return {name: stat.to_dict() for name, stat in self.metrics.items()}


def evaluate_policy(policy, tokenizer, ctx: EvalContext,
                    samples: list[list[Sample]] | None = None) -> PolicyEval:
    """Generate (unless ``samples`` are given), score, and compare with the reference.

    Metrics: gold (``gold_reward``, ``harmless_rate``, ``helpful_rate``, ``evasive_rate``,
    ``off_grammar_rate``) with a gym, ``refusal_rate`` without one; ``proxy_reward`` with a judge; with a reference ``kl``
    (:mod:`alignlab.eval.kl`), ``win_rate`` (judge) and ``gold_win_rate`` (gym); always ``length_tokens``
    and ``length_words``."""
    if samples is None:
        samples = generate_samples(policy, tokenizer, ctx.prompts, ctx.settings)
    ours = score_samples(ctx, samples)
    metrics = dict(gold_metrics(ours.gold)) if ours.gold is not None else text_metrics(ours)
    if ours.rm is not None:
        metrics["proxy_reward"] = proxy_reward(ours.rm)
    rows = sample_rows(ours)
    ref = ctx.reference_side()
    if ref is not None:
        if len(ref.samples) != len(ours.samples):
            raise ValueError(f"eval: {len(ours.samples)} policy samples but {len(ref.samples)} "
                             "reference samples; both need num_samples per prompt")
        metrics.update(comparison_metrics(ours, ref))
        kl = policy_kl(policy, tokenizer, ctx, ours)
        metrics["kl"] = mean_se(kl)
        add_reference_columns(rows, ref, kl)
    metrics.update(length_metrics([s.text for s in ours.samples],
                                  [len(s.token_ids) for s in ours.samples]))
    return PolicyEval(metrics, rows)


def evaluate_many(policies: dict[str, tuple[Any, Any]], ctx: EvalContext) -> dict[str, PolicyEval]:
    """:func:`evaluate_policy` for each named ``(model, tokenizer)`` on one shared context, so the
    reference is sampled and scored once; feed ``{name: r.metrics}`` to :func:`~alignlab.eval.report.
    write_report`."""
    return {name: evaluate_policy(model, tok, ctx) for name, (model, tok) in policies.items()}


def text_metrics(scored: Scored) -> dict[str, Stat]:
    """Metrics of real text (no gym): ``refusal_rate`` by the phrase detector of
    :mod:`alignlab.eval.refusal`, the evasiveness proxy."""
    return {"refusal_rate": refusal_rate(s.text for s in scored.samples)}


def comparison_metrics(ours: Scored, ref: Scored) -> dict[str, Stat]:
    """``win_rate`` by the RM and ``gold_win_rate`` by the gold reward, pairing samples by index; on
    real text also the reference's own ``reference_proxy_reward`` and ``reference_refusal_rate``, so
    one table shows both sides."""
    out: dict[str, Stat] = {}
    if ours.rm is not None and ref.rm is not None:
        out["win_rate"] = win_rate(ours.rm, ref.rm)
        out["reference_proxy_reward"] = proxy_reward(ref.rm)
    if ref.gold is None:
        out.update({f"reference_{k}": v for k, v in text_metrics(ref).items()})
    if ours.gold is not None and ref.gold is not None:
        out["gold_win_rate"] = win_rate([g.reward for g in ours.gold], [g.reward for g in ref.gold])
    return out


def policy_kl(policy, tokenizer, ctx: EvalContext, scored: Scored) -> list[float]:
    """Per-sample Monte-Carlo KL(policy ‖ reference) on the policy's own token ids.

    Prompts are encoded exactly as the generator encoded them; eos is appended when the sample stopped
    at eos (stopping is part of the sampled sequence), so both models score what was generated."""
    from alignlab.data.tokenize import render_prompt
    from alignlab.generation.hf import encode_prompt_text

    if policy is ctx.reference:  # the same model object: every term is exactly 0
        return [0.0] * len(scored.samples)
    check_same_tokenizer(tokenizer, ctx.reference_tokenizer)
    n = scored.num_samples
    per_prompt = [encode_prompt_text(tokenizer, render_prompt(tokenizer, scored.prompts[i]))
                  for i in range(0, len(scored.prompts), n)]
    prompt_ids = [per_prompt[i // n] for i in range(len(scored.prompts))]
    completions = [completion_ids(s, tokenizer.eos_token_id) for s in scored.samples]
    return kl_per_sample(policy, ctx.reference, prompt_ids, completions, tokenizer.pad_token_id,
                         ctx.kl_batch_size)


def check_same_tokenizer(policy_tokenizer, reference_tokenizer) -> None:
    """KL compares the two models on the same token ids, so their vocabularies must be equal."""
    if reference_tokenizer is None or reference_tokenizer is policy_tokenizer:
        return
    if policy_tokenizer.get_vocab() != reference_tokenizer.get_vocab():
        raise ValueError("eval: policy and reference tokenizers differ; KL(policy ‖ reference) needs "
                         "one tokenizer (drop `reference` or use a reference of the same family)")


def completion_ids(sample: Sample, eos_id: int | None) -> list[int]:
    """The sampled token ids, plus eos when generation stopped there."""
    ids = list(sample.token_ids)
    if sample.stop_reason == "eos" and eos_id is not None:
        ids.append(int(eos_id))
    return ids


def sample_rows(scored: Scored) -> list[dict[str, Any]]:
    """One JSON-ready dict per sample: prompt, response, gold fields, RM score."""
    from alignlab.data.records import messages_to_list

    rows = []
    for i, (prompt, sample) in enumerate(zip(scored.prompts, scored.samples)):
        row = {"prompt": messages_to_list(prompt), "prompt_index": i // scored.num_samples,
               "sample_index": i % scored.num_samples, "response": sample.text,
               "num_tokens": len(sample.token_ids), "stop_reason": sample.stop_reason}
        if scored.gold is not None:
            g = scored.gold[i]
            row.update(gold_reward=g.reward, helpful=g.helpful, harmless=g.harmless, style=g.style,
                       harmful_prompt=g.harmful_prompt, category=g.category)
        if scored.rm is not None:
            row["rm_score"] = scored.rm[i]
        rows.append(row)
    return rows


def add_reference_columns(rows: list[dict[str, Any]], ref: Scored, kl: Sequence[float]) -> None:
    """Add the paired reference response, its scores and the sample's KL term to each row."""
    for i, row in enumerate(rows):
        row["kl"] = kl[i]
        row["reference_response"] = ref.samples[i].text
        if ref.gold is not None:
            row["reference_gold_reward"] = ref.gold[i].reward
        if ref.rm is not None:
            row["reference_rm_score"] = ref.rm[i]


# ----------------------------------------------------------------------------- the stage


def run_eval(cfg: EvalConfig, run: RunFolder) -> dict[str, dict[str, Any]]:
    """The ``eval`` stage (module docstring); returns ``{metric: {"mean", "se", "n"}}`` of the
    generation evaluation, plus ``pairs`` (the pair evaluation) when ``cfg.pairs`` is set."""
    result = run_generation_eval(cfg, run) if cfg.prompts is not None else {}
    if cfg.pairs is not None:
        result["pairs"] = run_pair_eval(cfg, run)
    return result


def run_generation_eval(cfg: EvalConfig, run: RunFolder) -> dict[str, dict[str, Any]]:
    """Generate on ``cfg.prompts`` and score every sample (module docstring)."""
    from alignlab.models.loading import load_causal_lm

    prompts = load_eval_prompts(cfg)
    run.log(f"eval: {len(prompts)} prompts × {cfg.generation.num_samples} samples "
            f"from {cfg.prompts.path}")
    policy, tokenizer = load_causal_lm(cfg.policy, for_training=False)
    ctx = build_context(cfg, prompts, policy, tokenizer, run)
    cache = reference_cache_file(cfg, run, prompts, ctx)
    result = evaluate_policy(policy, tokenizer, ctx)
    if cache is not None and not cache.is_file() and ctx.reference_samples is not None:
        from alignlab.eval.cache import save_samples

        save_samples(cache, ctx.reference_samples)
    write_outputs(run, result, cfg)
    del policy, ctx
    gc.collect()
    return result.metrics_dict()


def load_eval_prompts(cfg: EvalConfig) -> list[Messages]:
    """The first ``num_prompts`` prompts of ``cfg.prompts`` (any data format)."""
    from alignlab.data.loading import load_prompts

    prompts = load_prompts(cfg.prompts)
    if not prompts:
        raise ValueError(f"eval: {cfg.prompts.path} has no prompts")
    return prompts[:cfg.num_prompts] if cfg.num_prompts else prompts


def build_context(cfg: EvalConfig, prompts: list[Messages], policy, tokenizer,
                  run: RunFolder) -> EvalContext:
    """Load the gym, reward judge and reference named by ``cfg`` (the policy itself is reused as the
    reference when both settings are equal)."""
    from alignlab.models.loading import load_causal_lm, load_reward_model

    ctx = EvalContext(prompts=prompts, settings=cfg.generation)
    if cfg.gym:
        from alignlab.gym import load_gym

        ctx.gym = load_gym(cfg.gym)
    if cfg.reward_model is not None:
        rm, rm_tokenizer = load_reward_model(cfg.reward_model, for_training=False)
        max_length, max_prompt = rm_lengths(cfg.reward_model.path)
        ctx.judge = RewardJudge(rm, rm_tokenizer, max_length, max_prompt)
        run.log(f"eval: reward model {cfg.reward_model.path} (max_length {max_length}, "
                f"max_prompt_length {max_prompt})")
    if cfg.reference is not None:
        if cfg.reference == cfg.policy:
            ctx.reference, ctx.reference_tokenizer = policy, tokenizer
        else:
            ctx.reference, ctx.reference_tokenizer = load_causal_lm(cfg.reference, for_training=False)
        if not exact_sampling(cfg.generation):
            run.log("eval: temperature/top_p are not 1, so `kl` is E_q[log π − log π_ref] under the "
                    "modified sampler, not KL(π ‖ π_ref)")
    return ctx


def reference_cache_file(cfg: EvalConfig, run: RunFolder, prompts: list[Messages], ctx: EvalContext):
    """Path of the cached reference samples (``<out>/../.eval_cache/<key>.json``); loads them into
    ``ctx`` when present. None without a reference."""
    if cfg.reference is None:
        return None
    from alignlab.eval.cache import cache_key, load_samples

    key = cache_key(cfg.reference, prompts, reference_settings(ctx))
    if key is None:
        run.log(f"eval: reference samples not cached: {cfg.reference.path!r} has no resolvable commit")
        return None
    path = run.path.parent / ".eval_cache" / f"{key}.json"
    ctx.reference_samples = load_samples(path)
    if ctx.reference_samples is not None:
        run.log(f"eval: reusing reference samples from {path}")
    return path


def write_outputs(run: RunFolder, result: PolicyEval, cfg: EvalConfig) -> None:
    """``samples.jsonl``, ``metrics.json``, a metrics.jsonl row and a log line per metric."""
    import json

    write_atomic(run.path / "samples.jsonl", "".join(json.dumps(row) + "\n" for row in result.rows))
    run.write_json("metrics.json", result.metrics_dict())
    flat: dict[str, Any] = {}
    for name, stat in result.metrics.items():
        flat.update({f"eval/{name}": stat.mean, f"eval/{name}_se": stat.se, f"eval/{name}_n": stat.n})
    if cfg.reference is not None:
        flat["eval/kl_exact_sampling"] = exact_sampling(cfg.generation)
    run.log_metrics({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in flat.items()})
    for name, stat in result.metrics.items():
        run.log(f"eval: {name} = {stat} (n={stat.n})")


# ----------------------------------------------------------------------------- pairs


def run_pair_eval(cfg: EvalConfig, run: RunFolder) -> dict[str, Any]:
    """Score ``cfg.pairs.data`` (module :mod:`alignlab.eval.pairs`); writes ``pairs.json``,
    ``pair_scores.jsonl`` and ``reliability.png`` and logs ``pairs/*`` metrics."""
    import json

    from alignlab.data.loading import load_records
    from alignlab.eval.pairs import pair_metrics, reliability_plot

    loaded = load_records(cfg.pairs.data, "pair")
    if loaded.bad.skipped:
        run.log(f"eval pairs: {loaded.bad.skipped} bad records skipped")
    pairs = loaded.records
    if not pairs:
        raise ValueError(f"eval: {loaded.source} has no pairs")
    scorer, chosen, rejected = score_pairs(cfg, [p.prompt for p in pairs],
                                           [p.chosen for p in pairs], [p.rejected for p in pairs])
    metrics = pair_metrics(chosen, rejected, [p.label for p in pairs],
                           [len(p.chosen.split()) for p in pairs],
                           [len(p.rejected.split()) for p in pairs])
    metrics.update({"scorer": scorer, "source": loaded.source})
    run.write_json("pairs.json", metrics)
    write_atomic(run.path / "pair_scores.jsonl", "".join(
        json.dumps({"chosen_score": c, "rejected_score": r, "label": p.label}) + "\n"
        for c, r, p in zip(chosen, rejected, pairs)))
    kind = "reward model" if scorer.startswith("reward model") else "implicit reward"
    reliability_plot(metrics["reliability"], run.path / "reliability.png",
                     f"{kind}, {metrics['pairs']} pairs: ECE {metrics['ece']:.3f}")
    acc = metrics["accuracy"]
    run.log_metrics({"pairs/accuracy": acc["mean"], "pairs/accuracy_se": acc["se"],
                     "pairs/ece": metrics["ece"], "pairs/n": metrics["pairs"]})
    run.log(f"eval pairs ({scorer}): accuracy {acc['mean']:.4f} ± {acc['se']:.4f} over "
            f"{metrics['pairs']} pairs ({metrics['label_ties']} label ties left out, "
            f"{metrics['score_ties']} score ties), ECE {metrics['ece']:.4f}")
    return metrics


def score_pairs(cfg: EvalConfig, prompts, chosen, rejected) -> tuple[str, list[float], list[float]]:
    """``(scorer description, chosen scores, rejected scores)``."""
    from alignlab.models.loading import load_causal_lm

    settings = cfg.pairs
    use_rm = settings.scorer == "reward_model" or (settings.scorer == "auto"
                                                   and cfg.reward_model is not None)
    if use_rm:
        from alignlab.eval.winrate import load_reward_judge

        judge = load_reward_judge(cfg.reward_model.path, settings.batch_size)
        return (f"reward model {cfg.reward_model.path}", judge.score(prompts, chosen),
                judge.score(prompts, rejected))
    from alignlab.eval.pairs import implicit_rewards

    policy, tokenizer = load_causal_lm(cfg.policy, for_training=False)
    reference = None
    if cfg.reference is not None:
        reference, _ = load_causal_lm(cfg.reference, for_training=False)
    lengths = (settings.max_length, settings.max_prompt_length, settings.batch_size)
    score = partial(implicit_rewards, policy, reference, tokenizer, beta=settings.beta,
                    average=settings.average, max_length=lengths[0], max_prompt_length=lengths[1],
                    batch_size=lengths[2])
    what = (f"implicit reward of {cfg.policy.path} (beta {settings.beta}"
            + (f", reference {cfg.reference.path})" if reference is not None else ", no reference)"))
    return what, score(prompts, chosen), score(prompts, rejected)
