"""The online RL stage: one rollout -> score -> advantage -> update loop for every algorithm.

Per iteration (``train.max_steps`` of them; default one pass over the prompts):

1. each process takes ``train.batch_size`` prompts (seeded shuffle, as the offline stages) and samples
   ``generation.num_samples`` completions of each from the current policy (the generator's seed is
   derived from the run seed, the iteration and the process, so a resumed run samples the same);
2. the scorer (a weighted sum of reward models, functions, the gym's gold reward or the policy as a
   judge) scores every completion; the policy, the reference and (PPO) the critic run once, without
   gradients, over the exact sampled tokens (:mod:`alignlab.rl.rollout`);
3. the algorithm (:mod:`alignlab.rl.algorithms`) turns scores, KL and values into advantages;
4. ``rl.ppo_epochs`` passes over the experience in ``rl.minibatch_size`` minibatches, one optimiser
   step each (policy, plus critic for PPO, plus the PPO-ptx term), each split into
   ``rl.micro_batch_size`` chunks whose gradients add up to the minibatch loss over every process
   (loss units: tokens for token means, sequences for sequence means, pairs for online DPO);
5. the KL controller updates; the reference moves to the policy every ``rl.ref_sync_every``
   iterations when asked; metrics and timings (generate / score / logprob / update) are logged.

Each logged row is the mean of the iterations since the previous one (``train.log_every``).
Checkpoints (``train.save_every`` iterations) hold the policy, the critic, both optimisers and
schedulers, the KL controller, the moved reference, the objective's state and the iteration reached;
a killed run resumes at the next iteration with the same prompts and sampling seeds.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, field_validator, model_validator

from alignlab.config import (
    DataSettings,
    GenerationSettings,
    ModelSettings,
    ScorerSettings,
    StageConfig,
    TrainSettings,
)
from alignlab.data.loading import load_prompt_data
from alignlab.generation.factory import make_generator
from alignlab.losses.terms import LossTerm, loss_term_list
from alignlab.models.loading import load_causal_lm, load_reward_model
from alignlab.rl.algorithms import Algorithm, LossContext, check_config, get_algorithm
from alignlab.rl.critic import ValueModule, critic_values
from alignlab.rl.experience import Experience, experience_from_rollout
from alignlab.rl.held_out import evaluate_prompts
from alignlab.rl.kl import AdaptiveKLController, FixedKLController
from alignlab.rl.objectives import ptx_loss, value_loss
from alignlab.rl.preference import PairPreference, PreferenceSettings
from alignlab.rl.ptx import PtxStream
from alignlab.rl.rollout import Clock, collect_rollout
from alignlab.rl.scorers import build_scorer
from alignlab.rl.settings import RLSettings
from alignlab.runs import RunFolder
from alignlab.train.checkpoint import Progress, latest_checkpoint, save_checkpoint
from alignlab.train.common import report_data, save_final, start_stage
from alignlab.train.forward import TokenLogprobModule
from alignlab.train.loop import main_log
from alignlab.train.objective import Objective
from alignlab.train.sampler import StepSampler
from alignlab.train.schedule import make_scheduler


class OnlineConfig(StageConfig):
    """Online RL from feedback: rollout -> score -> advantage -> update, one loop for every algorithm.

    ``train.max_steps`` counts iterations (one rollout each; default: one pass over the prompts);
    ``train.batch_size`` is prompts per iteration per process, each sampled
    ``generation.num_samples`` times (and as often by the opponent of ``nash_md`` and ``xpo``).
    ``loss`` is the preference objective of ``online_dpo`` and ``xpo``. ``preference``: a pair judge
    whose P(y ≻ y') SPPO, Nash-MD and XPO read instead of σ(r(y) − r(y')) of the ``reward`` scores
    (:mod:`alignlab.rl.preference`); the reward is then only logged.
    ``ptx_data`` is the pretraining/SFT data of PPO-ptx (with ``rl.ptx_coef`` > 0).
    ``eval_prompts``: held-out prompts answered and scored every ``train.eval_every`` iterations and
    at the end (:mod:`alignlab.rl.held_out`).
    """

    stage: Literal["online"] = "online"
    algorithm: Literal["ppo", "rloo", "grpo", "reinforce_pp", "online_dpo", "sppo", "nash_md", "xpo"]
    model: ModelSettings
    ref_model: ModelSettings | None = None
    critic: ModelSettings | None = None
    prompts: DataSettings
    reward: list[ScorerSettings] = Field(min_length=1)
    monitor: list[ScorerSettings] = Field(default_factory=list)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    backend: Literal["hf", "vllm"] = "hf"
    train: TrainSettings = Field(default_factory=TrainSettings)
    rl: RLSettings = Field(default_factory=RLSettings)
    loss: list[LossTerm] = Field(default_factory=lambda: [LossTerm(name="dpo", beta=0.1)],
                                 min_length=1)
    ptx_data: DataSettings | None = None
    eval_prompts: DataSettings | None = None
    preference: PreferenceSettings | None = None
    out: str

    @field_validator("reward", "monitor", mode="before")
    @classmethod
    def _one_or_many_scorers(cls, value):
        return [value] if isinstance(value, dict) else value

    @field_validator("loss", mode="before")
    @classmethod
    def _one_or_many_losses(cls, value):
        return loss_term_list(value)

    @model_validator(mode="after")
    def _check_algorithm(self) -> "OnlineConfig":
        check_config(self)
        return self


# ----------------------------------------------------------------------------- set-up


def make_controller(cfg: OnlineConfig):
    """Adaptive KL controller when ``rl.kl_target`` is set, else a fixed coefficient."""
    rl = cfg.rl
    if rl.kl_target is not None:
        return AdaptiveKLController(rl.kl_coef, rl.kl_target, rl.kl_horizon)
    return FixedKLController(rl.kl_coef)


def load_reference(cfg: OnlineConfig, policy):
    """``(frozen reference or None, reference_is_adapter_base)``.

    ``ref_model`` when given; else the adapter-disabled LoRA policy; else a frozen copy of the
    starting policy."""
    if cfg.ref_model is not None:
        reference, _ = load_causal_lm(cfg.ref_model, for_training=False)
        return reference, False
    if cfg.model.lora is not None:
        return None, True
    frozen = copy.deepcopy(policy).eval()
    frozen.requires_grad_(False)
    return frozen, False


def critic_settings(cfg: OnlineConfig):
    """The critic's start: ``critic`` if given, else the first reward model (InstructGPT), else the
    policy's weights with a new scalar head."""
    if cfg.critic is not None:
        return cfg.critic
    from alignlab.config import ModelSettings

    rm = next((s for s in cfg.reward if s.kind == "reward_model"), None)
    if rm is not None:
        return ModelSettings(path=rm.path)
    return cfg.model.model_copy(update={"lora": None})


class ReferenceState:
    """Checkpointed weights of a reference that has moved (``rl.ref_sync_every``); empty otherwise."""

    def __init__(self, reference):
        self.reference = reference
        self.synced = False

    def sync_from(self, policy) -> None:
        self.reference.load_state_dict(policy.state_dict())
        self.synced = True

    def state_dict(self) -> dict:
        if not self.synced:
            return {"synced": False}
        return {"synced": True, "weights": {k: v.detach().cpu()
                                            for k, v in self.reference.state_dict().items()}}

    def load_state_dict(self, state: dict) -> None:
        if state.get("synced"):
            self.reference.load_state_dict(state["weights"])
            self.synced = True


@dataclass
class Learner:
    """The trainable parts: wrapped modules, optimisers and schedulers (critic parts may be None)."""

    policy: torch.nn.Module
    policy_opt: torch.optim.Optimizer
    policy_sched: object
    critic: torch.nn.Module | None = None
    critic_opt: torch.optim.Optimizer | None = None
    critic_sched: object | None = None
    max_grad_norm: float = float("inf")
    updates: int = 0


def _adamw(module: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def build_learner(cfg: OnlineConfig, acc, policy, critic, total_updates: int) -> Learner:
    """Wrap, optimise and schedule the policy (and critic); everything registered for checkpoints."""
    train = cfg.train
    if train.gradient_checkpointing and hasattr(policy, "gradient_checkpointing_enable"):
        policy.gradient_checkpointing_enable()
    policy_module = TokenLogprobModule(policy)
    policy_opt = _adamw(policy_module, train.learning_rate, train.weight_decay)
    if critic is None:
        policy_module, policy_opt = acc.prepare(policy_module, policy_opt)
        critic_module = critic_opt = critic_sched = None
    else:
        critic_module = ValueModule(critic)
        critic_opt = _adamw(critic_module, cfg.rl.critic_learning_rate or train.learning_rate,
                            train.weight_decay)
        policy_module, policy_opt, critic_module, critic_opt = acc.prepare(
            policy_module, policy_opt, critic_module, critic_opt)
        critic_sched = make_scheduler(critic_opt, train.lr_schedule, train.warmup_ratio,
                                      total_updates)
        acc.register_for_checkpointing(critic_sched)
    policy_sched = make_scheduler(policy_opt, train.lr_schedule, train.warmup_ratio, total_updates)
    acc.register_for_checkpointing(policy_sched)
    return Learner(policy_module, policy_opt, policy_sched, critic_module, critic_opt, critic_sched,
                   train.max_grad_norm or float("inf"))


# ----------------------------------------------------------------------------- the update


@dataclass
class UpdatePlan:
    """How one rollout is split: epochs, minibatches per epoch, micro-batches per minibatch."""

    epochs: int
    minibatches: int
    micro_rows: int | None


def plan_update(cfg: OnlineConfig, algo: Algorithm) -> UpdatePlan:
    """Minibatch count from the configured sizes (the same on every process)."""
    units = cfg.train.batch_size * cfg.generation.num_samples // algo.unit_rows
    size = cfg.rl.minibatch_size or units
    return UpdatePlan(cfg.rl.ppo_epochs, max(1, math.ceil(units / size)), cfg.rl.micro_batch_size)


def loss_units(reduction: str, exp: Experience, unit_rows: int) -> float:
    """How many loss units a chunk holds: real tokens for ``token_mean``, sequences (or pairs)
    otherwise. A chunk's mean loss times its units, summed and divided by the global units, is
    the minibatch loss over every process."""
    if unit_rows > 1:
        return len(exp) / unit_rows
    if reduction == "token_mean":
        return float(exp.mask.sum())
    return float(len(exp))


def unit_rows_of(exp: Experience, algo: Algorithm) -> torch.Tensor:
    """``[U, unit_rows]`` row indices of the experience's loss units: ``exp.extra['units']`` when
    the algorithm chose them (pairs, or Nash-MD's own samples), else every row."""
    units = exp.extra.get("units")
    if units is None:
        return torch.arange(len(exp)).view(-1, 1)
    return units.cpu().view(-1, algo.unit_rows)


@dataclass
class MetricSums:
    """Running sums of per-minibatch metrics, averaged when logged."""

    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, prefix: str, metrics: dict) -> None:
        for name, value in metrics.items():
            value = float(value)
            if math.isfinite(value):
                key = f"{prefix}/{name}"
                self.sums[key] = self.sums.get(key, 0.0) + value
                self.counts[key] = self.counts.get(key, 0) + 1

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in self.sums}


def policy_forward(module, exp: Experience) -> torch.Tensor:
    """Current response-frame log-probs (with grad)."""
    return exp.where.take(module(exp.batch))


def chunk_loss(learner: Learner, algo: Algorithm, exp: Experience, ctx: LossContext,
               sums: MetricSums) -> torch.Tensor:
    """Mean policy loss (+ vf_coef * value loss for PPO) of one chunk."""
    logp = policy_forward(learner.policy, exp)
    loss, metrics = algo.loss(logp, exp, ctx)
    sums.add("policy", {"loss": loss.detach(), **metrics})
    if learner.critic is not None:
        values = exp.where.take(learner.critic(exp.batch))
        v_loss, v_metrics = value_loss(values, exp.old_values, exp.returns, exp.mask,
                                       ctx.rl.value_clip, ctx.reduction, ctx.norm_length)
        sums.add("value", {"loss": v_loss.detach(), **v_metrics})
        loss = loss + ctx.rl.vf_coef * v_loss
    return loss


def minibatch_step(acc, learner: Learner, algo: Algorithm, exp: Experience, ctx: LossContext,
                   plan: UpdatePlan, ptx: PtxStream | None, sums: MetricSums) -> None:
    """One optimiser step on one minibatch (split into micro-batches), over every process."""
    chunks = _micro_chunks(exp, plan.micro_rows, algo.unit_rows)
    units = [loss_units(ctx.reduction, c, algo.unit_rows) for c in chunks]
    total = float(acc.reduce(torch.tensor(sum(units), device=acc.device), "sum"))
    for i, (chunk, n) in enumerate(zip(chunks, units)):
        loss = chunk_loss(learner, algo, chunk, ctx, sums) * (n * acc.num_processes / max(total, 1e-8))
        if ptx is not None:
            nll, ptx_metrics = ptx_loss(*ptx.next_logprobs(learner.policy, len(chunk)))
            sums.add("ptx", ptx_metrics)
            loss = loss + ctx.rl.ptx_coef * nll / len(chunks)
        acc.backward(loss)
    _optimiser_step(acc, learner, sums)


def _micro_chunks(exp: Experience, micro_rows: int | None, unit_rows: int) -> list[Experience]:
    if micro_rows is None or micro_rows * unit_rows >= len(exp):
        return [exp]
    step = micro_rows * unit_rows
    return [exp.select(torch.arange(s, min(s + step, len(exp)))) for s in range(0, len(exp), step)]


def _optimiser_step(acc, learner: Learner, sums: MetricSums) -> None:
    max_norm = learner.max_grad_norm
    parts = [(learner.policy, learner.policy_opt, learner.policy_sched, "policy")]
    if learner.critic is not None:
        parts.append((learner.critic, learner.critic_opt, learner.critic_sched, "value"))
    for module, opt, sched, name in parts:
        norm = acc.clip_grad_norm_(module.parameters(), max_norm)
        sums.add(name, {"grad_norm": norm})
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
    learner.updates += 1


def update(acc, learner: Learner, algo: Algorithm, exp: Experience, ctx: LossContext,
           plan: UpdatePlan, ptx: PtxStream | None, seed: int) -> dict[str, float]:
    """``plan.epochs`` passes over the experience's units in shuffled minibatches.

    A minibatch with no unit on this process (online DPO with few untied groups) is skipped when
    training alone; with several processes it becomes a zero-gradient step so that every process
    takes the same optimiser steps."""
    sums = MetricSums()
    units = unit_rows_of(exp, algo)
    dummy = torch.arange(min(algo.unit_rows, len(exp)))
    generator = torch.Generator().manual_seed(seed)
    for _ in range(plan.epochs):
        order = torch.randperm(len(units), generator=generator)
        for part in torch.tensor_split(order, plan.minibatches):
            if len(part):
                mini = exp.select(units[part].flatten().to(exp.scores.device))
                minibatch_step(acc, learner, algo, mini, ctx, plan, ptx, sums)
            elif acc.num_processes > 1:
                _zero_step(acc, learner, algo, exp.select(dummy.to(exp.scores.device)), ctx, sums)
    return sums.means()


def _zero_step(acc, learner, algo, exp, ctx, sums) -> None:
    """A step that contributes no gradient (a process with no unit left in this minibatch)."""
    acc.backward(chunk_loss(learner, algo, exp, ctx, MetricSums()) * 0.0)
    _optimiser_step(acc, learner, sums)


# ----------------------------------------------------------------------------- the run


@dataclass
class OnlineRun:
    """Everything the iteration loop uses, built once per run."""

    cfg: OnlineConfig
    algo: Algorithm
    acc: object
    run: RunFolder
    tokenizer: object
    prompts: list
    sampler: StepSampler
    policy: torch.nn.Module
    reference: torch.nn.Module | None
    adapter_base: bool
    learner: Learner
    scorer: object
    monitor: object | None
    generator: object
    opponent: object | None
    preference: PairPreference | None
    controller: object
    objective: Objective | None
    ptx: PtxStream | None
    ref_state: ReferenceState | None
    plan: UpdatePlan


def iterations(cfg: OnlineConfig, sampler: StepSampler) -> int:
    return sampler.total_steps(cfg.train.epochs, cfg.train.max_steps)


def setup(cfg: OnlineConfig, run: RunFolder) -> OnlineRun:
    """Load data, models, scorers and the generator; build the learner; register checkpoint state."""
    algo = get_algorithm(cfg.algorithm)
    acc = start_stage(f"online {algo.name}", cfg.train.seed, run)
    loaded = load_prompt_data(cfg.prompts)
    report_data(acc, run, loaded, "prompt")
    policy, tokenizer = load_causal_lm(cfg.model)
    policy.to(acc.device)
    objective = Objective.from_config(cfg.loss) if algo.uses_objective else None
    reference, adapter_base = (load_reference(cfg, policy) if algo.needs_reference(cfg.rl, objective)
                               else (None, False))
    if reference is not None:
        reference.to(acc.device)
    critic = load_reward_model(critic_settings(cfg))[0] if algo.needs_critic else None
    sampler = StepSampler(len(loaded.records), cfg.train.batch_size, acc.num_processes, 1,
                          cfg.train.seed)
    plan = plan_update(cfg, algo)
    total_updates = iterations(cfg, sampler) * plan.epochs * plan.minibatches
    learner = build_learner(cfg, acc, policy, critic, total_updates)
    ptx = None
    if cfg.rl.ptx_coef > 0:
        from alignlab.rl.ptx import load_ptx_stream

        ptx = load_ptx_stream(cfg, tokenizer, acc.device)
    ref_state = ReferenceState(reference) if cfg.rl.ref_sync_every and reference is not None else None
    controller = make_controller(cfg)
    acc.register_for_checkpointing(controller, *[o for o in (objective, ptx, ref_state) if o])
    return OnlineRun(cfg, algo, acc, run, tokenizer, loaded.records, sampler, policy, reference,
                     adapter_base, learner, build_scorer(cfg.reward, policy, tokenizer, acc.device),
                     build_scorer(cfg.monitor, policy, tokenizer, acc.device) if cfg.monitor else None,
                     make_rollout_generator(cfg, policy, tokenizer),
                     make_opponent(algo, cfg, policy, tokenizer, reference),
                     PairPreference(cfg.preference, acc.device) if cfg.preference else None,
                     controller, objective, ptx, ref_state, plan)


def make_rollout_generator(cfg: OnlineConfig, policy, tokenizer):
    """The generation backend; vLLM gets the model path and is re-synced after every update."""
    if cfg.backend == "vllm":
        from alignlab.models.loading import resolve_model_source

        return make_generator("vllm", model=policy, tokenizer=tokenizer,
                              model_path=resolve_model_source(cfg.model)[0])
    return make_generator("hf", model=policy, tokenizer=tokenizer)


def make_opponent(algo: Algorithm, cfg: OnlineConfig, policy, tokenizer, reference):
    """The opponent's sampler: the policy/reference geometric mixture (Nash-MD, its coefficient
    set each iteration) or the reference alone (XPO: the mixture at coefficient 1); None for the
    other algorithms. ``reference`` None means the LoRA policy's adapter-free base."""
    if algo.opponent is None:
        return None
    from alignlab.generation.mixture import MixtureGenerator

    coef = 1.0 if algo.opponent == "reference" else cfg.rl.mixture_coef_at(0)
    return MixtureGenerator(policy, tokenizer, reference, coef)


def sampling_settings(cfg: OnlineConfig, iteration: int, rank: int):
    """The generation settings of one iteration: a distinct, reproducible seed per (iteration, rank)."""
    seed = (cfg.generation.seed * 1_000_003 + iteration * 101 + rank) % (2 ** 31)
    return cfg.generation.model_copy(update={"seed": seed})


def shape_scores(raw: torch.Tensor, samples, rl) -> tuple[torch.Tensor, dict[str, float]]:
    """The scores the algorithm trains on: a penalty for samples cut at max_new_tokens
    (``missing_eos_penalty``), then batch normalisation (``score_norm``), then clipping
    (``reward_clip``)."""
    scores = raw.clone()
    truncated = torch.tensor([s.stop_reason == "length" for s in samples], device=raw.device)
    if rl.missing_eos_penalty is not None:
        scores = scores - rl.missing_eos_penalty * truncated.float()
    if rl.score_norm == "batch" and len(scores) > 1:
        scores = (scores - scores.mean()) / (scores.std() + 1e-8)
    if rl.reward_clip is not None:
        scores = scores.clamp(-rl.reward_clip, rl.reward_clip)
    return scores, {"truncated_rate": float(truncated.float().mean())}


def rollout_metrics(exp: Experience, rollout, parts: dict, monitor_parts: dict) -> dict[str, float]:
    """Per-iteration statistics of the policy's own samples (not an opponent's; this process)."""
    own = exp.own_rows
    scores = rollout.scores[own]
    row = {"reward/mean": float(scores.mean()),
           "reward/std": float(scores.std()) if len(scores) > 1 else 0.0,
           "response_length": float(exp.where.lengths[own].mean())}
    if exp.ref_logp is not None:
        row["kl"] = float((exp.old_logp - exp.ref_logp).mul(exp.mask).sum(1)[own].mean())
    keep = own.tolist()
    for prefix, named in (("reward", parts), ("monitor", monitor_parts)):
        for name, values in named.items():
            mine = [v for v, k in zip(values, keep) if k]
            row[f"{prefix}/{name}"] = sum(mine) / len(mine)
    return row


def one_iteration(state: OnlineRun, iteration: int) -> dict[str, float]:
    """Rollout, advantages and update for one iteration; returns the process's metrics row."""
    cfg, acc = state.cfg, state.acc
    timings: dict[str, float] = {}
    clock = Clock(timings)
    start = time.perf_counter()
    idx = state.sampler.micro_batches(iteration, acc.process_index)[0]
    prompts = [state.prompts[i] for i in idx]
    if state.algo.opponent == "mixture":
        state.opponent.coef = cfg.rl.mixture_coef_at(iteration)
    rollout = collect_rollout(state.policy, state.tokenizer, state.generator, prompts,
                              sampling_settings(cfg, iteration, acc.process_index), state.scorer,
                              cfg.train.max_prompt_length, state.reference, state.adapter_base,
                              timings, state.opponent)
    monitor_parts = {}
    if state.monitor is not None:
        with clock("monitor"):
            state.monitor.score(rollout.prompts, rollout.texts)
        monitor_parts = state.monitor.last_parts
    scores, score_metrics = shape_scores(rollout.scores, rollout.samples, cfg.rl)
    exp = experience_from_rollout(rollout, scores)
    if state.learner.critic is not None:
        exp.old_values = exp.where.take(critic_values(state.learner.critic, rollout.batch))
    beta = state.controller.value
    row = rollout_metrics(exp, rollout, state.scorer.last_parts, monitor_parts)
    row.update(score_metrics)
    if state.preference is not None:
        with clock("judge"):
            row.update(judge_pairs(state, exp, rollout, iteration))
    row.update(state.algo.prepare(exp, cfg.rl, beta))
    ctx = LossContext(cfg.rl, beta, state.algo.reduction_for(cfg.rl), cfg.generation.max_new_tokens,
                      state.objective)
    with clock("update"):
        row.update(update(acc, state.learner, state.algo, exp, ctx, state.plan, state.ptx,
                          cfg.train.seed * 7919 + iteration))
    row["kl_coef"] = beta
    _after_update(state, iteration, row)
    timings["iteration"] = time.perf_counter() - start
    row.update({f"time/{k}": v for k, v in timings.items()})
    return row


def judge_pairs(state: OnlineRun, exp: Experience, rollout, iteration: int) -> dict[str, float]:
    """The pair judge's P(first ≻ second) for the algorithm's pairs into
    ``exp.extra['pair_probs']``; principles drawn per (iteration, process), so a resumed run asks
    the same questions."""
    first, second = (rows.tolist() for rows in state.algo.pair_queries(exp))
    draw = iteration * state.acc.num_processes + state.acc.process_index
    probs = state.preference.probs([rollout.prompts[i] for i in first],
                                   [rollout.texts[i] for i in first],
                                   [rollout.texts[j] for j in second], draw)
    exp.extra["pair_probs"] = torch.tensor(probs, dtype=torch.float32, device=exp.scores.device)
    return {"judge/pairs": len(probs), "judge/p_first_mean": sum(probs) / max(len(probs), 1)}


def _after_update(state: OnlineRun, iteration: int, row: dict) -> None:
    """KL controller, moving reference, re-synced generator weights."""
    acc = state.acc
    if "kl" in row:
        kl = float(acc.reduce(torch.tensor(row["kl"], device=acc.device), "mean"))
        n = state.cfg.train.batch_size * state.cfg.generation.num_samples * acc.num_processes
        state.controller.update(kl, n)
    every = state.cfg.rl.ref_sync_every
    if state.ref_state is not None and (iteration + 1) % every == 0:
        state.ref_state.sync_from(state.policy)
        row["ref_synced"] = 1.0
    sync = getattr(state.generator, "sync_weights", None)
    if callable(sync):
        sync(state.policy)


def global_row(acc, row: dict[str, float]) -> dict[str, float]:
    """Every metric averaged over processes (each process has the same number of samples)."""
    if acc.num_processes == 1:
        return row
    names = sorted(row)
    values = torch.tensor([float(row[n]) for n in names], device=acc.device)
    values = acc.reduce(values, "mean")
    return dict(zip(names, values.tolist()))


def resume(state: OnlineRun, progress: Progress) -> int:
    """Load the latest complete checkpoint of this run, if any; returns the iteration to continue."""
    latest = latest_checkpoint(state.run.checkpoint_dir)
    if latest is None:
        return 0
    state.acc.load_state(str(latest))
    if (progress.num_examples, progress.global_batch) != (state.sampler.num_examples,
                                                         state.sampler.global_batch):
        raise ValueError(f"{latest}: checkpoint was made with {progress.num_examples} prompts and "
                         f"global batch {progress.global_batch}, this run has "
                         f"{state.sampler.num_examples} and {state.sampler.global_batch}; resume "
                         "with the same prompts and batch settings or use a new out")
    main_log(state.acc, state.run, f"resumed from {latest} (iteration {progress.step})")
    return progress.step


def run_online(cfg: OnlineConfig, run: RunFolder) -> Path:
    """Train ``cfg.model`` online with ``cfg.algorithm``; returns the saved model folder."""
    state = setup(cfg, run)
    acc, progress = state.acc, Progress()
    acc.register_for_checkpointing(progress)
    total = iterations(cfg, state.sampler)
    start = resume(state, progress)
    main_log(acc, run, f"{state.algo.name}: {total} iterations of {cfg.train.batch_size} prompts x "
                       f"{cfg.generation.num_samples} samples per process; {state.plan.epochs} "
                       f"epoch(s) x {state.plan.minibatches} minibatch(es) each; from {start}")
    window = MetricSums()
    eval_prompts = load_eval_prompts(cfg, state)
    for iteration in range(start, total):
        row = global_row(acc, one_iteration(state, iteration))
        progress.step = iteration + 1
        progress.num_examples, progress.global_batch = (state.sampler.num_examples,
                                                        state.sampler.global_batch)
        window.add("", row)
        if (iteration + 1) % cfg.train.log_every == 0 or iteration + 1 == total:
            logged = {k[1:]: v for k, v in window.means().items()}
            logged["lr"] = state.learner.policy_sched.get_last_lr()[0]
            _log(acc, run, logged, iteration + 1, total)
            window = MetricSums()
        if eval_prompts and _eval_due(cfg, iteration + 1, total):
            _evaluate(state, eval_prompts, iteration + 1)
        if cfg.train.save_every and (iteration + 1) % cfg.train.save_every == 0:
            save_checkpoint(acc, run.checkpoint_dir, iteration + 1)
    acc.wait_for_everyone()
    return save_final(acc, run, acc.unwrap_model(state.learner.policy).model, state.tokenizer)


def load_eval_prompts(cfg: OnlineConfig, state: OnlineRun) -> list:
    if cfg.eval_prompts is None:
        return []
    loaded = load_prompt_data(cfg.eval_prompts)
    report_data(state.acc, state.run, loaded, "held-out prompt")
    return loaded.records


def _eval_due(cfg: OnlineConfig, step: int, total: int) -> bool:
    return step == total or bool(cfg.train.eval_every and step % cfg.train.eval_every == 0)


def _evaluate(state: OnlineRun, prompts: list, step: int) -> None:
    """Held-out evaluation of the live policy (:mod:`alignlab.rl.held_out`), logged at ``step``."""
    row = evaluate_prompts(state.acc, prompts, state.generator, state.cfg.generation, state.scorer,
                           state.monitor)
    if state.acc.is_main_process:
        state.run.log_metrics(row, step=step)
        state.run.log(f"eval at iteration {step}: " + ", ".join(
            f"{k}={v:.4g}" for k, v in row.items() if not k.endswith("_se")))


_SHOWN = ("reward/mean", "kl", "kl_coef", "response_length", "policy/clip_fraction",
          "value/explained_variance", "time/iteration")


def _log(acc, run: RunFolder, row: dict, step: int, total: int) -> None:
    if not acc.is_main_process:
        return
    run.log_metrics(row, step=step)
    shown = ", ".join(f"{k}={row[k]:.4g}" for k in _SHOWN if k in row)
    monitors = ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k.startswith("monitor/"))
    run.log(f"iteration {step}/{total}: {shown}" + (f", {monitors}" if monitors else ""))
