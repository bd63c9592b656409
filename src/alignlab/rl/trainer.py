"""The online RL stage: one rollout -> score -> advantage -> update loop for every algorithm.

Per iteration (``train.max_steps`` of them; default one pass over the prompts):

1. the iteration's global batch of ``train.batch_size`` × processes prompts (seeded shuffle, as the
   offline stages) is cut into one contiguous block per process; each process samples
   ``generation.num_samples`` completions of its prompts from the current policy, each prompt with
   its own seed (run seed, iteration, position in the global batch), so a prompt samples the same
   on any process and a resumed run samples the same; a prompt's k samples stay on one process,
   so group baselines (RLOO, GRPO) need no communication;
2. the scorer (a weighted sum of reward models, functions, the gym's gold reward or the policy as a
   judge) scores every completion; the policy, the reference and (PPO) the critic run once, without
   gradients, over the exact sampled tokens (:mod:`alignlab.rl.rollout`), except the policy and the
   critic when the rollout gets a single optimiser step: their values then come from the update's
   own forward (:mod:`alignlab.rl.onpolicy`);
3. the algorithm (:mod:`alignlab.rl.algorithms`) turns scores, KL and values into advantages;
   batch-wide statistics (score normalisation, whitening) are over every process's rows;
4. ``rl.ppo_epochs`` passes over the experience in ``rl.minibatch_size`` minibatches (sizes per
   process, drawn from one permutation of the global batch, so the minibatches are the same sets on
   any number of processes), one optimiser step each (policy, plus critic for PPO, plus the PPO-ptx
   term), each split into ``rl.micro_batch_size`` chunks whose gradients add up to the minibatch
   loss over every process (loss units: tokens for token means, sequences for sequence means, pairs
   for online DPO);
5. the KL controller updates; the reference moves to the policy every ``rl.ref_sync_every``
   iterations when asked; metrics and timings (generate / score / logprob / update) are logged.

Each logged row is the mean of the iterations since the previous one (``train.log_every``); every
metric but the timings is over the global batch (rollout statistics from the gathered rows, update
metrics as minibatch means weighted by loss units, tokens or pairs, :mod:`alignlab.rl.step_metrics`),
so one process and several log the same numbers for the same global batch.
Checkpoints (``train.save_every`` iterations) hold the policy, the critic, both optimisers and
schedulers, the KL controller, the moved reference, the objective's state and the iteration reached;
a killed run resumes at the next iteration with the same prompts and sampling seeds.

Non-finite updates (:mod:`alignlab.train.nonfinite`): a minibatch update whose loss (policy, value
and ptx terms, over every process) or policy / critic gradient norm is NaN/inf is skipped for both
models (no parameter, optimiser or scheduler change) and counted (``skipped_steps`` in every logged
row). As ``train.max_steps``, ``train.max_bad_steps`` counts iterations here: an iteration is bad
when every one of its updates was skipped (a NaN reward, say, spoils all of them), and that many
bad iterations in a row (``bad_steps``) stop the run with
:class:`~alignlab.train.nonfinite.NonFiniteError` at the end of the last one. The policy, critic,
optimisers and schedulers have not moved since the last good update, and are saved with the
iteration reached as ``step-<i>``; the KL controller, a moved reference and the objective's state
have seen the bad iterations' rollouts, whose measurements were real. A rerun resumes there (e.g.
with a lower ``train.learning_rate``). No periodic checkpoint is written while bad iterations are
running.
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
from alignlab.generation.seeded import stream_seed
from alignlab.losses.terms import LossTerm, loss_term_list
from alignlab.models.loading import load_causal_lm, load_reward_model
from alignlab.models.sharding import gathered_for_generation, whole_tensor
from alignlab.rl.algorithms import Algorithm, LossContext, check_config, get_algorithm
from alignlab.rl.critic import ValueModule, critic_values
from alignlab.rl.experience import Experience, experience_from_rollout
from alignlab.rl.held_out import evaluate_prompts
from alignlab.rl.kl import AdaptiveKLController, FixedKLController
from alignlab.rl.objectives import explained_variance_sums, ptx_loss, value_loss
from alignlab.rl.onpolicy import LiveForward, live_forward, reuses_update_forward
from alignlab.rl.preference import PairPreference, PreferenceSettings
from alignlab.rl.processes import ALONE, Processes, processes_of
from alignlab.rl.ptx import PtxStream
from alignlab.rl.rollout import Clock, collect_rollout
from alignlab.rl.scorers import build_scorer
from alignlab.rl.settings import RLSettings
from alignlab.rl.step_metrics import StepMetrics
from alignlab.runs import RunFolder
from alignlab.train.checkpoint import Progress, latest_checkpoint, save_checkpoint
from alignlab.train.common import report_data, save_final, start_stage
from alignlab.train.forward import TokenLogprobModule
from alignlab.train.loop import main_log, rewind_metrics
from alignlab.train.nonfinite import (
    NonFiniteError,
    StepGuard,
    describe_nonfinite,
    keep_good_state,
    stop_message,
)
from alignlab.train.objective import Objective
from alignlab.train.sampler import StepSampler
from alignlab.train.schedule import make_scheduler
from alignlab.train.sharding import (
    accumulation_boundary,
    clip_grad_norm,
    prepare_sharding,
    uses_deepspeed,
)


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
    def _check_algorithm(self) -> OnlineConfig:
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
        """Copy ``policy``'s weights into the reference; with a sharded policy every process calls
        this together (each FSDP2 shard is all-gathered: :func:`whole_tensor`)."""
        state = {name: whole_tensor(value) for name, value in policy.state_dict().items()}
        self.reference.load_state_dict(state)
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
    """The trainable parts: wrapped modules, optimisers and schedulers (critic parts may be None).

    ``guard`` skips and counts non-finite updates (it never stops the run: :func:`run_online`
    judges whole iterations); ``loss_nonfinite`` is the pending minibatch's non-finite loss (NaN
    when only another process saw one; None when every process's was finite), set by
    :func:`minibatch_step` for :func:`_optimiser_step`; ``position`` is (iteration, updates tried in
    it)."""

    policy: torch.nn.Module
    policy_opt: torch.optim.Optimizer
    policy_sched: object
    critic: torch.nn.Module | None = None
    critic_opt: torch.optim.Optimizer | None = None
    critic_sched: object | None = None
    max_grad_norm: float = float("inf")
    updates: int = 0
    guard: StepGuard | None = None
    loss_nonfinite: float | None = None
    position: tuple[int, int] = (0, 0)


def _adamw(module: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def prepare_trainable(acc, module: torch.nn.Module, lr: float, train: TrainSettings):
    """``(module, optimiser)``: ``module`` and its AdamW through one ``acc.prepare`` call, after
    the run's sharding settings are settled for it (:func:`prepare_sharding`: FSDP2 wrap units).
    Under FSDP2 accelerate prepares one model per call, so the policy and the critic each get
    their own call."""
    optimiser = _adamw(module, lr, train.weight_decay)
    prepare_sharding(acc, module, train)
    return acc.prepare(module, optimiser)


def build_learner(cfg: OnlineConfig, acc, policy, critic, total_updates: int) -> Learner:
    """Wrap, optimise and schedule the policy (and critic); everything registered for checkpoints."""
    train = cfg.train
    if train.gradient_checkpointing and hasattr(policy, "gradient_checkpointing_enable"):
        policy.gradient_checkpointing_enable()
    policy_module, policy_opt = prepare_trainable(acc, TokenLogprobModule(policy),
                                                  train.learning_rate, train)
    critic_module = critic_opt = critic_sched = None
    if critic is not None:
        critic_module, critic_opt = prepare_trainable(
            acc, ValueModule(critic), cfg.rl.critic_learning_rate or train.learning_rate, train)
        critic_sched = make_scheduler(critic_opt, train.lr_schedule, train.warmup_ratio,
                                      total_updates)
        acc.register_for_checkpointing(critic_sched)
    policy_sched = make_scheduler(policy_opt, train.lr_schedule, train.warmup_ratio, total_updates)
    acc.register_for_checkpointing(policy_sched)
    return Learner(policy_module, policy_opt, policy_sched, critic_module, critic_opt, critic_sched,
                   train.max_grad_norm or float("inf"), guard=StepGuard(None))


# ----------------------------------------------------------------------------- the update


@dataclass
class UpdatePlan:
    """How one rollout is split: epochs, minibatches per epoch, micro-batches per minibatch."""

    epochs: int
    minibatches: int
    micro_rows: int | None


def plan_update(cfg: OnlineConfig, algo: Algorithm) -> UpdatePlan:
    """Minibatch count from the configured sizes, which count per process (as ``batch_size``;
    the same on every process)."""
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

    def add(self, prefix: str | None, metrics: dict) -> None:
        for name, value in metrics.items():
            value = float(value)
            if math.isfinite(value):
                key = name if prefix is None else f"{prefix}/{name}"
                self.sums[key] = self.sums.get(key, 0.0) + value
                self.counts[key] = self.counts.get(key, 0) + 1

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in self.sums}


def policy_forward(module, exp: Experience) -> torch.Tensor:
    """Current response-frame log-probs (with grad)."""
    return exp.where.take(module(exp.batch))


def metric_weight(exp: Experience, algo: Algorithm) -> float:
    """What the objectives' metrics average over in a chunk: its real tokens, or its pairs."""
    return len(exp) / algo.unit_rows if algo.unit_rows > 1 else float(exp.mask.sum())


def chunk_loss(learner: Learner, algo: Algorithm, exp: Experience, ctx: LossContext,
               step: StepMetrics, units: float, live: LiveForward | None = None) -> torch.Tensor:
    """Mean policy loss (+ vf_coef * value loss for PPO) of one chunk; its metrics go to ``step``
    (losses weighted by the chunk's loss ``units``, the other metrics by :func:`metric_weight`;
    ``units`` 0 adds nothing). ``live``: the chunk's forward, already run."""
    logp = policy_forward(learner.policy, exp) if live is None else live.logp
    loss, metrics = algo.loss(logp, exp, ctx)
    share = metric_weight(exp, algo) if units > 0 else 0.0
    step.add("policy", {"loss": loss.detach()}, units)
    step.add("policy", metrics, share)
    if learner.critic is not None:
        values = exp.where.take(learner.critic(exp.batch)) if live is None else live.values
        v_loss, v_metrics = value_loss(values, exp.old_values, exp.returns, exp.mask,
                                       ctx.rl.value_clip, ctx.reduction, ctx.norm_length)
        v_metrics.pop("explained_variance")
        step.add("value", {"loss": v_loss.detach()}, units)
        step.add("value", v_metrics, float(exp.mask.sum()) if units > 0 else 0.0)
        moments = explained_variance_sums(values, exp.returns, exp.mask)
        step.add_moments(moments if units > 0 else torch.zeros_like(moments))
        loss = loss + ctx.rl.vf_coef * v_loss
    return loss


def minibatch_step(acc, learner: Learner, algo: Algorithm, exp: Experience, ctx: LossContext,
                   plan: UpdatePlan, ptx: PtxStream | None, sums: MetricSums,
                   processes: Processes = ALONE, live: LiveForward | None = None,
                   empty: bool = False) -> None:
    """One optimiser step on one minibatch (split into micro-batches), over every process.

    Each chunk's mean loss is scaled by its share of the minibatch's loss units over every process
    (times the process count, which DDP's gradient mean divides out), so the gradient is that of
    the whole minibatch's loss. ``live``: the minibatch's forward already ran (one chunk).
    ``empty``: this process has no unit in the minibatch and ``exp`` holds stand-in rows; they
    weigh 0, so the process only joins the collective calls and the gradient all-reduce.
    Every process runs as many chunks (:func:`lockstep_chunks`), each a forward and a backward in
    which the last chunk is the accumulation boundary (:func:`accumulation_boundary`)."""
    chunks = [exp] if live is not None else _micro_chunks(exp, plan.micro_rows, algo.unit_rows)
    units = [0.0 if empty else loss_units(ctx.reduction, c, algo.unit_rows) for c in chunks]
    real = len(chunks)
    chunks, units = lockstep_chunks(chunks, units, processes)
    total = float(processes.sum(torch.tensor(sum(units), dtype=torch.float64)))
    step = StepMetrics()
    bad_loss = None
    for index, (chunk, n) in enumerate(zip(chunks, units)):
        loss = chunk_loss(learner, algo, chunk, ctx, step, n, live)
        loss = loss * (n * processes.size / max(total, 1e-8))
        if ptx is not None:
            loss = loss + _ptx_term(learner, ptx, ctx, chunk, real, step, empty=n == 0)
        value = float(loss.detach())
        if not math.isfinite(value):
            bad_loss = value
        with accumulation_boundary(acc, index == len(chunks) - 1):
            acc.backward(loss)
    # the flag travels in the metrics' all-reduce: every process learns whether any saw a bad loss
    step.add("guard", {"nonfinite_loss": float(bad_loss is not None)}, 1.0)
    means = step.global_means(processes)
    anywhere = means.pop("guard/nonfinite_loss", 0.0) > 0
    learner.loss_nonfinite = (bad_loss if bad_loss is not None else math.nan) if anywhere else None
    sums.add(None, means)
    _optimiser_step(acc, learner, sums)


def lockstep_chunks(chunks: list[Experience], units: list[float],
                    processes: Processes = ALONE) -> tuple[list[Experience], list[float]]:
    """Pad this process's chunks with zero-weight repeats of its first chunk up to the most
    chunks any process has, so every process runs the same number of forwards and backwards: a
    DDP backward all-reduces and every forward of an FSDP2-sharded model all-gathers, and those
    calls must pair up across processes. (A minibatch's units, drawn from a permutation of the
    global batch, split unevenly over the processes, and so do its micro-batches.)"""
    most = int(processes.gather(torch.tensor([len(chunks)], dtype=torch.long)).max())
    extra = most - len(chunks)
    return chunks + chunks[:1] * extra, units + [0.0] * extra


def _ptx_term(learner: Learner, ptx: PtxStream, ctx: LossContext, chunk: Experience, chunks: int,
              step: StepMetrics, empty: bool) -> torch.Tensor | float:
    """The PPO-ptx term of one chunk (``ptx_coef`` × NLL of as many pretraining sequences as the
    chunk has rows, split over the ``chunks`` real chunks). A stand-in chunk (``empty``: no unit)
    draws nothing and registers the names; it still runs one forward, weighted 0, so sharded
    processes stay in lock-step."""
    if empty:
        step.add("ptx", ptx_loss(torch.zeros(1, 1), torch.ones(1, 1))[1], 0.0)
        return 0.0 * learner.policy(chunk.batch).sum()
    nll, ptx_metrics = ptx_loss(*ptx.next_logprobs(learner.policy, len(chunk)))
    step.add("ptx", ptx_metrics, 1.0 / chunks)
    return ctx.rl.ptx_coef * nll / chunks


def _micro_chunks(exp: Experience, micro_rows: int | None, unit_rows: int) -> list[Experience]:
    if micro_rows is None or micro_rows * unit_rows >= len(exp):
        return [exp]
    step = micro_rows * unit_rows
    return [exp.select(torch.arange(s, min(s + step, len(exp)))) for s in range(0, len(exp), step)]


def _optimiser_step(acc, learner: Learner, sums: MetricSums) -> None:
    """Clip the policy's (and critic's) gradients, then step every part, or none when the
    minibatch's loss or a gradient norm is non-finite (``learner.guard``; both numbers are the
    same on every process)."""
    max_norm = learner.max_grad_norm
    parts = [(learner.policy, learner.policy_opt, learner.policy_sched, "policy")]
    if learner.critic is not None:
        parts.append((learner.critic, learner.critic_opt, learner.critic_sched, "value"))
    norms = {}
    for module, _, _, name in parts:
        norm = clip_grad_norm(acc, module, max_norm)
        sums.add(name, {"grad_norm": norm})
        norms[name] = float(norm)
    call_step = _update_allowed(acc, learner, norms)
    skipped = learner.guard is not None and learner.guard.skipped_last
    for _, opt, sched, _ in parts:
        if call_step:
            opt.step()
        opt.zero_grad(set_to_none=True)
        if not skipped:
            sched.step()
    if not skipped:
        learner.updates += 1


def _update_allowed(acc, learner: Learner, norms: dict[str, float]) -> bool:
    """Record the update with ``learner.guard``; whether the optimisers are to step. As in the
    offline loop (:func:`alignlab.train.loop._step_allowed`): under DeepSpeed only the loss is
    checked (the engine stepped inside ``backward``); an fp16 loss-scale overflow (finite loss,
    non-finite norm) goes to the grad scaler's ``step`` and does not count towards the limit."""
    guard = learner.guard
    iteration, tried = learner.position
    learner.position = (iteration, tried + 1)
    if guard is None:
        return True
    loss = learner.loss_nonfinite
    learner.loss_nonfinite = None
    if uses_deepspeed(acc):
        guard.observe(describe_nonfinite(loss, {}))
        return True
    overflow = getattr(acc, "scaler", None) is not None and loss is None
    skipped = guard.observe(describe_nonfinite(loss, norms), extends_streak=not overflow)
    return not skipped or overflow


def unit_offset(processes: Processes, count: int) -> tuple[int, int]:
    """``(offset, total)``: where this process's ``count`` units start in the global unit order
    (the processes' units concatenated in rank order) and how many units all processes hold."""
    counts = processes.gather(torch.tensor([count], dtype=torch.long)).tolist()
    return sum(counts[:processes.rank]), sum(counts)


def update(acc, learner: Learner, algo: Algorithm, exp: Experience, ctx: LossContext,
           plan: UpdatePlan, ptx: PtxStream | None, seed: int, processes: Processes = ALONE,
           live: LiveForward | None = None) -> dict[str, float]:
    """``plan.epochs`` passes over the global batch's units in shuffled minibatches.

    Every process draws the same permutation of the *global* units (``seed``) and splits it into
    ``plan.minibatches`` parts; each process trains on its own units of each part, so the
    minibatches are the same sets however the rollout is spread over processes. A part with no unit
    at all is skipped; a process with none of a part's units takes a zero-weight step (every
    process takes the same optimiser steps). ``live``: the update's forward over the whole rollout
    (one epoch of one minibatch, :mod:`alignlab.rl.onpolicy`)."""
    sums = MetricSums()
    units = unit_rows_of(exp, algo)
    dummy = torch.arange(min(algo.unit_rows, len(exp)))
    offset, total = unit_offset(processes, len(units))
    generator = torch.Generator().manual_seed(seed)
    for _ in range(plan.epochs):
        order = torch.randperm(total, generator=generator)
        for part in torch.tensor_split(order, plan.minibatches):
            if not len(part):
                continue
            mine = part[(part >= offset) & (part < offset + len(units))] - offset
            rows = (units[mine].flatten() if len(mine) else dummy).to(exp.scores.device)
            mini = exp.select(rows)
            given = None if live is None else live.rows(rows, mini.mask.shape[1])
            minibatch_step(acc, learner, algo, mini, ctx, plan, ptx, sums, processes, given,
                           empty=not len(mine))
    return sums.means()


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
    processes: Processes = ALONE
    reuse_forward: bool = False


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
    sampler = StepSampler(len(loaded.records), cfg.train.batch_size * acc.num_processes, 1, 1,
                          cfg.train.seed)
    plan = plan_update(cfg, algo)
    reuse = algo.trains_every_row and reuses_update_forward(
        plan.epochs, plan.minibatches, plan.micro_rows, rollout_rows(cfg, algo), algo.unit_rows,
        (policy, critic))
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
                     controller, objective, ptx, ref_state, plan, processes_of(acc), reuse)


def rollout_rows(cfg: OnlineConfig, algo: Algorithm) -> int:
    """Rows of one process's rollout: its prompts × samples (× 2 with an opponent)."""
    return cfg.train.batch_size * cfg.generation.num_samples * (2 if algo.opponent else 1)


def iteration_prompts(state: OnlineRun, iteration: int) -> tuple[list[int], list[int]]:
    """This process's prompts (dataset indices) at ``iteration`` and their sampling seeds.

    The iteration's global batch (the sampler's window of ``batch_size`` × processes prompts) is
    cut into one contiguous block per process in rank order, so the processes' rollouts,
    concatenated, are the one-process rollout of the same global batch. A prompt's seed hashes the
    generation seed, the iteration and the prompt's position in the global batch: its samples do
    not depend on which process draws them (:mod:`alignlab.generation.seeded`)."""
    size, rank = state.cfg.train.batch_size, state.processes.rank
    window = state.sampler.micro_batches(iteration, 0)[0]
    positions = range(rank * size, (rank + 1) * size)
    seeds = [stream_seed(state.cfg.generation.seed, iteration, p) for p in positions]
    return [window[p] for p in positions], seeds


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
    """The generation settings of one iteration: a distinct, reproducible seed per (iteration, rank)
    (the built-in backends sample from the per-prompt seeds of :func:`iteration_prompts` instead;
    this seed serves a generator that takes none)."""
    seed = (cfg.generation.seed * 1_000_003 + iteration * 101 + rank) % (2 ** 31)
    return cfg.generation.model_copy(update={"seed": seed})


def shape_scores(raw: torch.Tensor, samples, rl,
                 processes: Processes = ALONE) -> tuple[torch.Tensor, dict[str, float]]:
    """The scores the algorithm trains on: a penalty for samples cut at max_new_tokens
    (``missing_eos_penalty``), then normalisation over the global batch (``score_norm``: every
    process's scores), then clipping (``reward_clip``)."""
    scores = raw.clone()
    truncated = torch.tensor([s.stop_reason == "length" for s in samples], device=raw.device)
    if rl.missing_eos_penalty is not None:
        scores = scores - rl.missing_eos_penalty * truncated.float()
    if rl.score_norm == "batch":
        everyone = processes.gather(scores)
        if len(everyone) > 1:
            scores = (scores - everyone.mean()) / (everyone.std() + 1e-8)
    if rl.reward_clip is not None:
        scores = scores.clamp(-rl.reward_clip, rl.reward_clip)
    return scores, {"truncated_rate": float(processes.gather(truncated.float()).mean())}


def rollout_metrics(exp: Experience, rollout, parts: dict, monitor_parts: dict,
                    processes: Processes = ALONE) -> dict[str, float]:
    """Per-iteration statistics of the policy's own samples (not an opponent's) of the global
    batch: the per-row values of every process are gathered, then averaged (and the reward's
    standard deviation taken) as one process holding every row would."""
    columns = {"reward/mean": rollout.scores, "response_length": exp.where.lengths}
    if exp.ref_logp is not None:
        columns["kl"] = (exp.old_logp - exp.ref_logp).mul(exp.mask).sum(1)
    for prefix, named in (("reward", parts), ("monitor", monitor_parts)):
        for name, values in named.items():
            columns[f"{prefix}/{name}"] = torch.tensor(values, dtype=torch.float64)
    table = torch.stack([exp.own_rows.double().cpu()]
                        + [c.detach().double().cpu() for c in columns.values()], 1)
    table = processes.gather(table)
    own = table[:, 0] > 0
    row = {name: float(column[own].mean()) for name, column in zip(columns, table[:, 1:].T)}
    rewards = table[own, 1]
    row["reward/std"] = float(rewards.std()) if len(rewards) > 1 else 0.0
    return row


def one_iteration(state: OnlineRun, iteration: int) -> dict[str, float]:
    """Rollout, advantages and update for one iteration; returns the metrics row (over the global
    batch, except the timings, which are this process's).

    Sampling, scoring and the rollout's no-grad forwards call the HF policy itself, not the
    prepared module, so they run inside :func:`gathered_for_generation`: under FSDP2 (or ZeRO-3)
    its parameters are whole there and those forwards communicate nothing, so processes may
    sample different lengths; elsewhere the block does nothing. The update's forwards go through
    the prepared module (sharded, in lock-step)."""
    cfg, acc, processes = state.cfg, state.acc, state.processes
    timings: dict[str, float] = {}
    clock = Clock(timings)
    start = time.perf_counter()
    idx, seeds = iteration_prompts(state, iteration)
    if state.algo.opponent == "mixture":
        state.opponent.coef = cfg.rl.mixture_coef_at(iteration)
    with gathered_for_generation(acc, state.policy):  # every process; whole weights (sharded runs)
        rollout = collect_rollout(state.policy, state.tokenizer, state.generator,
                                  [state.prompts[i] for i in idx],
                                  sampling_settings(cfg, iteration, processes.rank), state.scorer,
                                  cfg.train.max_prompt_length, state.reference, state.adapter_base,
                                  timings, state.opponent, seeds, not state.reuse_forward,
                                  cfg.rl.share_prompt)
        monitor_parts = score_monitors(state, rollout, clock)
    scores, score_metrics = shape_scores(rollout.scores, rollout.samples, cfg.rl, processes)
    exp = experience_from_rollout(rollout, scores)
    live = record_old_values(state, exp, clock)
    row = rollout_metrics(exp, rollout, state.scorer.last_parts, monitor_parts, processes)
    row.update(score_metrics)
    if state.preference is not None:
        with clock("judge"):
            row.update(judge_pairs(state, exp, rollout, iteration))
    beta = state.controller.value
    row.update(state.algo.prepare(exp, cfg.rl, beta, processes))
    ctx = LossContext(cfg.rl, beta, state.algo.reduction_for(cfg.rl), cfg.generation.max_new_tokens,
                      state.objective)
    with clock("update"):
        row.update(update(acc, state.learner, state.algo, exp, ctx, state.plan, state.ptx,
                          cfg.train.seed * 7919 + iteration, processes, live))
    row["kl_coef"] = beta
    _after_update(state, iteration, row)
    timings["iteration"] = time.perf_counter() - start
    row.update({f"time/{k}": v for k, v in timings.items()})
    return row


def score_monitors(state: OnlineRun, rollout, clock: Clock) -> dict:
    """The monitor scorers' per-row parts (logged, not trained on); empty without monitors."""
    if state.monitor is None:
        return {}
    with clock("monitor"):
        state.monitor.score(rollout.prompts, rollout.texts)
    return state.monitor.last_parts


def record_old_values(state: OnlineRun, exp: Experience, clock: Clock) -> LiveForward | None:
    """Fill what the rollout did not record: with one update per rollout, ``old_logp`` (and
    PPO's ``old_values``) from the update's own forward, returned with its graph for the update
    (:mod:`alignlab.rl.onpolicy`); otherwise the critic's no-grad values (PPO)."""
    learner = state.learner
    if state.reuse_forward:
        with clock("update"):
            return live_forward(learner.policy, learner.critic, exp)
    if learner.critic is not None:
        with clock("logprob"):
            exp.old_values = exp.where.take(critic_values(learner.critic, exp.batch))
    return None


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
    """KL controller, moving reference, re-synced generator weights. The last two read the
    policy's whole weights, on every process: the reference from gathered shards, the generator
    inside :func:`gathered_for_generation`."""
    acc = state.acc
    if "kl" in row:  # already over every process (rollout_metrics)
        n = state.cfg.train.batch_size * state.cfg.generation.num_samples * acc.num_processes
        state.controller.update(row["kl"], n)
    every = state.cfg.rl.ref_sync_every
    if state.ref_state is not None and (iteration + 1) % every == 0:
        state.ref_state.sync_from(state.policy)
        row["ref_synced"] = 1.0
    sync = getattr(state.generator, "sync_weights", None)
    if callable(sync):
        with gathered_for_generation(acc, state.policy):
            sync(state.policy)


def global_row(acc, row: dict[str, float]) -> dict[str, float]:
    """Every metric averaged over processes: the timings and the judge's means (each process has
    the same number of samples); the rest is already global, the same on every process."""
    if acc.num_processes == 1:
        return row
    names = sorted(row)
    values = torch.tensor([float(row[n]) for n in names], dtype=torch.float64, device=acc.device)
    values = acc.reduce(values, "mean")
    return dict(zip(names, values.tolist()))


def resume(state: OnlineRun, progress: Progress) -> int:
    """Load the latest complete checkpoint of this run, if any; returns the iteration to continue."""
    latest = latest_checkpoint(state.run.checkpoint_dir,
                               lambda msg: main_log(state.acc, state.run, msg))
    if latest is None:
        rewind_metrics(state.acc, state.run, 0)
        return 0
    state.acc.load_state(str(latest))
    if (progress.num_examples, progress.global_batch) != (state.sampler.num_examples,
                                                         state.sampler.global_batch):
        raise ValueError(f"{latest}: checkpoint was made with {progress.num_examples} prompts and "
                         f"global batch {progress.global_batch}, this run has "
                         f"{state.sampler.num_examples} and {state.sampler.global_batch}; resume "
                         "with the same prompts and batch settings or use a new out")
    main_log(state.acc, state.run, f"resumed from {latest} (iteration {progress.step})")
    rewind_metrics(state.acc, state.run, progress.step)
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
    if state.reuse_forward:
        main_log(acc, run, "one update per rollout: old log-probs come from the update's forward "
                           "(no separate no-grad policy forward)")
    window = MetricSums()
    eval_prompts = load_eval_prompts(cfg, state)
    guard = state.learner.guard
    guard.skipped = progress.skipped_steps
    bad_iterations = StepGuard(cfg.train.max_bad_steps)
    for iteration in range(start, total):
        skipped_before = guard.skipped
        state.learner.position = (iteration, 0)
        row = global_row(acc, one_iteration(state, iteration))
        _judge_iteration(state, bad_iterations, iteration, total, skipped_before)
        progress.step = iteration + 1
        progress.num_examples, progress.global_batch = (state.sampler.num_examples,
                                                        state.sampler.global_batch)
        progress.skipped_steps = guard.skipped
        window.add("", row)
        last = iteration + 1 == total or bad_iterations.exhausted
        if (iteration + 1) % cfg.train.log_every == 0 or last:
            logged = {k[1:]: v for k, v in window.means().items()}
            logged["lr"] = state.learner.policy_sched.get_last_lr()[0]
            logged.update({"skipped_steps": guard.skipped, "bad_steps": bad_iterations.consecutive})
            _log(acc, run, logged, iteration + 1, total)
            window = MetricSums()
        if eval_prompts and _eval_due(cfg, iteration + 1, total):
            _evaluate(state, eval_prompts, iteration + 1)
        if bad_iterations.exhausted:
            _stop_on_bad_iterations(state, bad_iterations, iteration)
        due = cfg.train.save_every and (iteration + 1) % cfg.train.save_every == 0
        if due and not bad_iterations.consecutive:  # never in a streak: see the module doc
            save_checkpoint(acc, run.checkpoint_dir, iteration + 1)
    acc.wait_for_everyone()
    if guard.skipped:
        main_log(acc, run, f"{guard.skipped} update(s) skipped as non-finite "
                           "(skipped_steps in metrics.jsonl)")
    return save_final(acc, run, acc.unwrap_model(state.learner.policy).model, state.tokenizer)


def _judge_iteration(state: OnlineRun, bad_iterations: StepGuard, iteration: int, total: int,
                     skipped_before: int) -> None:
    """Record whether ``iteration`` was bad (every update skipped, each counting towards the limit:
    an fp16 overflow does not) with ``bad_iterations``, and log its skipped updates. An iteration
    without any update (e.g. online DPO when every group tied) neither extends nor ends a streak."""
    guard, tried = state.learner.guard, state.learner.position[1]
    if tried:
        bad_iterations.at = f"iteration {iteration + 1}"
        bad_iterations.observe(guard.last_reason if guard.consecutive >= tried else None)
    skipped = guard.skipped - skipped_before
    if skipped:
        main_log(state.acc, state.run,
                 f"iteration {iteration + 1}/{total}: {skipped} of {tried} update(s) skipped, last "
                 f"{guard.last_reason} ({bad_iterations.consecutive} bad iteration(s) in a row, at "
                 f"most {state.cfg.train.max_bad_steps}; {guard.skipped} update(s) skipped in all)")


def _stop_on_bad_iterations(state: OnlineRun, bad_iterations: StepGuard, iteration: int) -> None:
    """Leave the state (progress already at ``iteration`` + 1) as ``step-<iteration + 1>``, unless a
    complete one is there, and raise :class:`~alignlab.train.nonfinite.NonFiniteError`. Under
    DeepSpeed the engine has applied the bad updates: nothing is written and the newest checkpoint
    is named."""
    acc, run = state.acc, state.run
    if uses_deepspeed(acc):
        checkpoint = latest_checkpoint(run.checkpoint_dir)
    else:
        checkpoint = keep_good_state(acc, run.checkpoint_dir, iteration + 1)
    message = stop_message(bad_iterations, checkpoint, "iterations with every update non-finite")
    main_log(acc, run, message)
    raise NonFiniteError(message)


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
    with gathered_for_generation(state.acc, state.policy):  # every process
        row = evaluate_prompts(state.acc, prompts, state.generator, state.cfg.generation,
                               state.scorer, state.monitor)
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
