"""The online algorithms, each a named choice of reward shaping, advantage estimator and policy loss.

One loop (:mod:`alignlab.rl.trainer`) runs them all. An algorithm supplies two functions:

* ``prepare(exp, rl, beta, processes)``: fills ``exp.kl``, ``exp.advantages`` (and ``exp.returns``
  for PPO) from the rollout's scores and log-probs; returns metrics. Called once per rollout, on
  every process with its own rows; batch-wide statistics (whitening, logged means and counts) are
  over every process (:mod:`alignlab.rl.processes`), group statistics stay within a prompt's k
  samples, which one process holds.
* ``loss(logp, exp, ctx)``: the policy loss of a minibatch given the current policy's response-frame
  log-probs (with grad); returns ``(mean loss, metrics)``. Called for every minibatch and epoch.

| name | advantage | KL to the reference | loss |
|---|---|---|---|
| ``ppo`` | GAE on per-token rewards with a critic | per token, in the reward | clipped surrogate + clipped value loss |
| ``rloo`` | leave-one-out over the k samples | sequence KL, in the reward | clipped surrogate (REINFORCE when on-policy) |
| ``grpo`` | group mean/std normalised | k3 estimate, in the loss | clipped surrogate + beta * k3 |
| ``reinforce_pp`` | returns-to-go, whitened over the batch | per token, in the reward | clipped surrogate |
| ``online_dpo`` | (pairs: best vs worst of the k samples) | inside the preference objective | any pair objective |
| ``sppo`` | (winner and loser by estimated win rate) | the reference is the previous iterate | squared log-ratio regression |
| ``nash_md`` | P(y ≻ y') − ½ against a sample y' of the policy/reference mixture | sequence KL, in the reward | REINFORCE (clipped surrogate) |
| ``xpo`` | (pairs: policy sample vs reference sample) | inside the preference objective | any pair objective + α log π(reference sample) |

``prepare`` may put the row indices of the loss units in ``exp.extra['units']`` (pairs for the pair
algorithms, the policy's own rows for Nash-MD); without it every row is a unit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from alignlab.losses.inputs import PairInputs, SeqStats
from alignlab.rl import advantages as adv
from alignlab.rl.experience import Experience
from alignlab.rl.kl import kl_estimate
from alignlab.rl.objectives import grpo_loss, ppo_policy_loss
from alignlab.rl.processes import ALONE, Processes
from alignlab.rl.settings import RLSettings


@dataclass
class LossContext:
    """What a minibatch loss needs besides the tensors: settings, beta, reduction, objective."""

    rl: RLSettings
    beta: float
    reduction: str
    norm_length: float
    objective: Callable | None = None


@dataclass(frozen=True)
class Algorithm:
    """One online algorithm (see the module table)."""

    name: str
    paper: str
    prepare: Callable[[Experience, RLSettings, float, Processes], dict[str, float]]
    loss: Callable[[torch.Tensor, Experience, LossContext], tuple[torch.Tensor, dict]]
    reduction: str = "token_mean"
    needs_critic: bool = False
    min_k: int = 1
    unit_rows: int = 1
    whiten_default: bool = False
    uses_objective: bool = False
    opponent: str | None = None
    pair_queries: Callable[[Experience], tuple[torch.Tensor, torch.Tensor]] | None = None
    always_reference: bool = False

    def needs_reference(self, rl: RLSettings, objective=None) -> bool:
        """Whether reference log-probs are needed: for the KL term, or the objective's reference;
        SPPO, Nash-MD and XPO always (previous iterate, mixture, reference samples)."""
        if self.always_reference:
            return True
        if self.uses_objective:
            return objective is not None and objective.reference != "none"
        return rl.kl_coef > 0 or rl.kl_target is not None

    def reduction_for(self, rl: RLSettings) -> str:
        return self.reduction if rl.reduction == "auto" else rl.reduction

    def whiten(self, rl: RLSettings) -> bool:
        return self.whiten_default if rl.whiten_advantages is None else rl.whiten_advantages

    @property
    def trains_every_row(self) -> bool:
        """Whether every sampled row is a loss unit: no pairs chosen among a prompt's samples
        (online DPO, SPPO, XPO) and no opponent rows left out of the loss (Nash-MD)."""
        return self.unit_rows == 1 and self.opponent is None


# ----------------------------------------------------------------------------- shared pieces


def token_kl(exp: Experience, rl: RLSettings) -> torch.Tensor:
    """Per-token KL(policy || reference) estimate at sampling time (zeros without a reference)."""
    if exp.ref_logp is None:
        return torch.zeros_like(exp.old_logp)
    return kl_estimate(exp.old_logp, exp.ref_logp, rl.kl_estimator) * exp.mask


def last_token_scores(exp: Experience) -> torch.Tensor:
    """The part of each score paid at the last token: the score less its dense (per-step) part,
    which ppo and reinforce_pp pay where each step ends instead."""
    return exp.scores if exp.dense is None else exp.scores - exp.dense.sum(1)


def _finish(exp: Experience, advantages: torch.Tensor, whiten: bool,
            processes: Processes = ALONE) -> dict[str, float]:
    """Whiten (over every process's tokens) when asked, mask, and log the mean |advantage|."""
    if whiten and processes.sum(exp.mask.sum()) > 1:
        advantages = adv.masked_whiten(advantages, exp.mask, processes=processes)
    exp.advantages = advantages * exp.mask
    return {"advantage_abs_mean": float(adv.global_masked_mean(exp.advantages.abs(), exp.mask,
                                                                processes))}


def clipped_loss(logp: torch.Tensor, exp: Experience, ctx: LossContext):
    """PPO's clipped surrogate on the minibatch (Schulman et al. 2017, eq. 7)."""
    return ppo_policy_loss(logp, exp.old_logp, exp.advantages, exp.mask, ctx.rl.clip_eps,
                           ctx.rl.clip_eps_high, ctx.reduction, ctx.norm_length)


# ----------------------------------------------------------------------------- PPO


def prepare_ppo(exp: Experience, rl: RLSettings, beta: float,
                processes: Processes = ALONE) -> dict[str, float]:
    """InstructGPT PPO (Ouyang et al. 2022; Ziegler et al. 2019): per-token reward
    ``-beta * kl_t`` plus the score at the last token, then GAE(gamma, lam) with the critic's
    values at sampling time; ``returns`` are the critic's targets."""
    if exp.old_values is None:
        raise ValueError("ppo needs critic values in the experience")
    exp.kl = token_kl(exp, rl)
    rewards = adv.token_rewards(last_token_scores(exp), exp.kl, exp.mask, beta, dense=exp.dense)
    advantages, exp.returns = adv.gae(rewards, exp.old_values, exp.mask, rl.gamma, rl.lam)
    return _finish(exp, advantages, PPO.whiten(rl), processes)


# ----------------------------------------------------------------------------- RLOO


def prepare_rloo(exp: Experience, rl: RLSettings, beta: float,
                 processes: Processes = ALONE) -> dict[str, float]:
    """RLOO (Ahmadian et al. 2024, "Back to Basics", eq. 6): sequence reward
    r = score - beta * KL(sequence), advantage r_i - mean of the other k-1 rewards."""
    exp.kl = token_kl(exp, rl)
    rewards = exp.scores - beta * exp.kl.sum(1)
    advantages = adv.expand_to_tokens(adv.rloo_advantages(rewards, exp.k), exp.mask)
    return _finish(exp, advantages, RLOO.whiten(rl), processes)


# ----------------------------------------------------------------------------- GRPO


def prepare_grpo(exp: Experience, rl: RLSettings, beta: float,
                 processes: Processes = ALONE) -> dict[str, float]:
    """GRPO outcome supervision (Shao et al. 2024, sec. 4.1.2): (r - mean) / std within each group;
    the KL is not in the reward (it is the k3 term of the loss)."""
    exp.kl = token_kl(exp, rl)
    advantages = adv.expand_to_tokens(adv.grpo_advantages(exp.scores, exp.k, rl.grpo_scale),
                                      exp.mask)
    return _finish(exp, advantages, GRPO.whiten(rl), processes)


def grpo_minibatch_loss(logp: torch.Tensor, exp: Experience, ctx: LossContext):
    """GRPO's loss (eq. 3): clipped surrogate plus beta * k3(policy, reference) per token."""
    return grpo_loss(logp, exp.old_logp, exp.ref_logp, exp.advantages, exp.mask, ctx.rl.clip_eps,
                     ctx.beta, ctx.reduction, ctx.rl.clip_eps_high, ctx.norm_length)


# ----------------------------------------------------------------------------- REINFORCE++


def prepare_reinforce_pp(exp: Experience, rl: RLSettings, beta: float,
                         processes: Processes = ALONE) -> dict[str, float]:
    """REINFORCE++ (Hu 2025): token-level KL penalty in the reward, discounted returns-to-go,
    whitened over every token of the global batch (no critic, no grouping)."""
    exp.kl = token_kl(exp, rl)
    if processes.sum(exp.mask.sum()) < 2:
        raise ValueError("reinforce_pp whitens over the batch and needs at least 2 response tokens")
    advantages = adv.reinforce_pp_advantages(last_token_scores(exp), exp.kl, exp.mask, beta,
                                             rl.gamma, dense=exp.dense, processes=processes)
    return _finish(exp, advantages, False, processes)


# ----------------------------------------------------------------------------- online DPO


def best_worst_pairs(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Row indices ``[c0, r0, c1, r1, ...]``: per group of k, the highest- and lowest-scored sample
    (first occurrence on ties); groups whose samples all score the same give no pair.

    The "best vs worst" pairing of online/iterative DPO (Xiong et al. 2024, "Iterative Preference
    Learning from Human Feedback"; Yuan et al. 2024, "Self-Rewarding Language Models")."""
    groups = scores.view(-1, k)
    best, worst = groups.argmax(1), groups.argmin(1)
    keep = (groups.max(1).values > groups.min(1).values).nonzero().flatten()
    base = keep * k
    return torch.stack([base + best[keep], base + worst[keep]], 1).flatten()


def choose_pairs(exp: Experience, values: torch.Tensor,
                 processes: Processes = ALONE) -> tuple[torch.Tensor, dict[str, float]]:
    """Best-vs-worst pairs of each group by ``values`` into ``exp.extra['units']``; the order and
    (over every process) the pair count, the tied groups and the mean gap of ``values`` within the
    pairs."""
    order = best_worst_pairs(values, exp.k)
    exp.extra["units"] = order
    gaps = (values[order[0::2]] - values[order[1::2]]).double()
    pairs, groups, gap_sum = processes.sum(torch.stack([
        torch.tensor(len(order) // 2, dtype=torch.float64, device=gaps.device),
        torch.tensor(len(exp) // exp.k, dtype=torch.float64, device=gaps.device), gaps.sum()]))
    return order, {"pairs": int(pairs), "tied_groups": int(groups - pairs),
                   "gap": float(gap_sum / pairs) if pairs else 0.0}


def prepare_online_dpo(exp: Experience, rl: RLSettings, beta: float,
                       processes: Processes = ALONE) -> dict[str, float]:
    """Choose the pairs; ``exp.extra['units']`` holds the row order (chosen, rejected, ...)."""
    exp.kl = token_kl(exp, rl)
    _, metrics = choose_pairs(exp, exp.scores, processes)
    return {**metrics, "pair_score_gap": metrics.pop("gap")}


def online_dpo_loss(logp: torch.Tensor, exp: Experience, ctx: LossContext):
    """The configured pair objective (``loss:``) on minibatch rows ordered chosen, rejected, ...;
    sequence log-probs are summed over response tokens, reference sums come from the rollout."""
    mask = exp.mask
    logps, lengths = (logp * mask).sum(1), mask.sum(1)
    ref = None if exp.ref_logp is None else (exp.ref_logp * mask).sum(1)

    def stats(part: slice) -> SeqStats:
        return SeqStats(logps[part], lengths[part], None if ref is None else ref[part])

    chosen, rejected = stats(slice(0, None, 2)), stats(slice(1, None, 2))
    inputs = PairInputs(chosen, rejected, torch.ones_like(chosen.logps))
    losses, metrics = ctx.objective(inputs)
    return losses.mean(), {k: v.float().mean() for k, v in metrics.items()}


# ----------------------------------------------------------------------------- SPPO


def sppo_win_rates(scores: torch.Tensor, k: int) -> torch.Tensor:
    """P̂(y_i ≻ π_t | x) = (1/K) Σ_j P(y_i ≻ y_j | x) with P(y_i ≻ y_j) = σ(r_i − r_j), for every
    sample of every group of k (Wu et al. 2024, "Self-Play Preference Optimization", §4, the
    estimate from K samples). As in the paper the sum includes j = i (P = ½); it equals
    (K − 1)/K times the leave-one-out mean plus 1/(2K)."""
    groups = scores.view(-1, k).double()
    return torch.sigmoid(groups[:, :, None] - groups[:, None, :]).mean(2).flatten().to(scores.dtype)


def group_pairs(exp: Experience) -> tuple[torch.Tensor, torch.Tensor]:
    """``(first, second)`` row indices of every unordered pair i < j within each group of k."""
    i, j = torch.triu_indices(exp.k, exp.k, 1, device=exp.scores.device)
    starts = torch.arange(0, len(exp), exp.k, device=exp.scores.device)[:, None]
    return (starts + i).flatten(), (starts + j).flatten()


def win_rates_from_pairs(probs: torch.Tensor, k: int) -> torch.Tensor:
    """P̂(y_i ≻ π_t) = (1/K) Σ_j P(y_i ≻ y_j) from a judge's P(y_i ≻ y_j) for the pairs i < j of
    each group in :func:`group_pairs` order (P(y_j ≻ y_i) = 1 − P(y_i ≻ y_j), P(y_i ≻ y_i) = ½), as
    :func:`sppo_win_rates` does from scores."""
    groups = probs.view(-1, k * (k - 1) // 2).double()
    matrix = torch.full((len(groups), k, k), 0.5, dtype=torch.float64, device=probs.device)
    i, j = torch.triu_indices(k, k, 1, device=probs.device)
    matrix[:, i, j] = groups
    matrix[:, j, i] = 1.0 - groups
    return matrix.mean(2).flatten().to(probs.dtype)


def sppo_targets(win: torch.Tensor, order: torch.Tensor, eta: float, mode: str) -> torch.Tensor:
    """Per-row regression targets of the log-ratio: η(P̂ − ½) (``soft``, the paper's eq. 4.7) or
    ±η/2 for the winner and the loser (``hard``: P̂ replaced by 1 and 0, TRL's ``sppo_hard``)."""
    targets = torch.zeros_like(win)
    if mode == "hard":
        targets[order[0::2]], targets[order[1::2]] = eta / 2, -eta / 2
    else:
        targets[order] = eta * (win[order] - 0.5)
    return targets


def prepare_sppo(exp: Experience, rl: RLSettings, beta: float,
                 processes: Processes = ALONE) -> dict[str, float]:
    """SPPO (Wu et al. 2024, Algorithm 1 and eq. 4.7): win rates of the k samples against each
    other (from a pair judge's ``exp.extra['pair_probs']`` when there is one, else from the
    scores), the winner (highest P̂) and the loser (lowest) of each prompt; groups whose samples all
    score the same give no pair."""
    exp.kl = token_kl(exp, rl)
    judged = exp.extra.get("pair_probs")
    win = (sppo_win_rates(exp.scores, exp.k) if judged is None
           else win_rates_from_pairs(judged, exp.k))
    order, metrics = choose_pairs(exp, win, processes)
    exp.targets = sppo_targets(win, order, rl.sppo_eta, rl.sppo_mode)
    return {**metrics, "win_rate_gap": metrics.pop("gap")}


def sppo_loss(logp: torch.Tensor, exp: Experience, ctx: LossContext):
    """(log π(y)/π_t(y) − target)² summed over the winner and the loser of each pair, averaged over
    pairs (Wu et al. 2024, eq. 4.7); rows are ordered winner, loser, ... (the pair units)."""
    mask = exp.mask
    log_ratio = (logp * mask).sum(1) - (exp.ref_logp * mask).sum(1)
    errors = (log_ratio - exp.targets) ** 2
    losses = errors[0::2] + errors[1::2]
    return losses.mean(), {"log_ratio/winner": log_ratio[0::2].detach().mean(),
                           "log_ratio/loser": log_ratio[1::2].detach().mean(),
                           "target/winner": exp.targets[0::2].mean(),
                           "target/loser": exp.targets[1::2].mean()}


# ----------------------------------------------------------------------------- Nash-MD and XPO


def opponent_pairs(exp: Experience) -> tuple[torch.Tensor, torch.Tensor]:
    """``(own, rival)`` row indices: the j-th policy sample of each group and the j-th opponent
    sample of the same prompt (a group is the policy's m samples, then the opponent's m)."""
    half = exp.k // 2
    starts = torch.arange(0, len(exp), exp.k, device=exp.scores.device)
    own = (starts[:, None] + torch.arange(half, device=starts.device)).flatten()
    return own, own + half


def pair_preferences(exp: Experience, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """P(first ≻ second): the pair judge's ``exp.extra['pair_probs']`` when there is one (computed
    by the trainer for the algorithm's ``pair_queries``), else σ(r_first − r_second)."""
    judged = exp.extra.get("pair_probs")
    if judged is not None:
        return judged.to(exp.scores.device)
    return torch.sigmoid(exp.scores[first] - exp.scores[second])


def prepare_nash_md(exp: Experience, rl: RLSettings, beta: float,
                    processes: Processes = ALONE) -> dict[str, float]:
    """Nash-MD-PG (Munos et al. 2023, "Nash Learning from Human Feedback", §7): each policy sample
    y is compared with a sample y' of the geometric mixture of policy and reference (the
    opponent), and earns the sequence reward

        P(y ≻ y') − ½ − β · log π(y)/π_ref(y)

    (½ is the control variate; the log-ratio is the k1 sequence KL at sampling time). The loss is
    REINFORCE on the policy's samples only. P is the pair judge's (``preference:``) or, by default,
    σ(r(y) − r(y')) from the configured reward's scores (Bradley-Terry)."""
    exp.kl = token_kl(exp, rl)
    own, rival = opponent_pairs(exp)
    preference = pair_preferences(exp, own, rival)
    rewards = torch.zeros_like(exp.scores)
    rewards[own] = preference - 0.5 - beta * exp.kl[own].sum(1)
    exp.extra["units"] = own
    metrics = _finish(exp, adv.expand_to_tokens(rewards, exp.mask), False, processes)
    return {**metrics, "preference_vs_mixture": float(preference.mean())}


def prepare_xpo(exp: Experience, rl: RLSettings, beta: float,
                processes: Processes = ALONE) -> dict[str, float]:
    """XPO (Xie et al. 2024, "Exploratory Preference Optimization", Algorithm 1): each policy
    sample and a reference sample of the same prompt form a pair, ordered by P(policy sample ≻
    reference sample) (the pair judge's, or σ of the score difference; P = ½ is a tie and is
    dropped); ``exp.extra['units']`` holds chosen, rejected, ..."""
    exp.kl = token_kl(exp, rl)
    own, rival = opponent_pairs(exp)
    preference = pair_preferences(exp, own, rival)
    keep, wins = preference != 0.5, preference > 0.5
    chosen = torch.where(wins, own, rival)[keep]
    rejected = torch.where(wins, rival, own)[keep]
    exp.extra["units"] = torch.stack([chosen, rejected], 1).flatten()
    pairs, ties, won = processes.sum(torch.stack([keep.sum(), (~keep).sum(), wins.sum()]).double())
    return {"pairs": int(pairs), "tied_pairs": int(ties),
            "policy_beats_reference": float(won / (pairs + ties))}


def xpo_loss(logp: torch.Tensor, exp: Experience, ctx: LossContext):
    """XPO's objective (Xie et al. 2024, eq. in Algorithm 1, line 6): the pair objective (DPO by
    default) on the labelled pairs plus ``α · log π(ỹ)``, the policy's log-probability of the
    reference's sample ỹ in each pair (minimising it is the paper's optimism: mass moves away from
    what the reference already covers). Departure: the paper sums both terms over every pair
    collected so far; here over the current rollout's pairs (online, as the other algorithms)."""
    loss, metrics = online_dpo_loss(logp, exp, ctx)
    reference_sample_logp = ((logp * exp.mask).sum(1) * exp.opponent).sum() / (len(exp) // 2)
    metrics["reference_sample_logp"] = reference_sample_logp.detach()
    return loss + ctx.rl.xpo_alpha * reference_sample_logp, metrics


# ----------------------------------------------------------------------------- table


PPO = Algorithm("ppo", "Ouyang et al. 2022 (InstructGPT); Schulman et al. 2017", prepare_ppo,
                clipped_loss, needs_critic=True, whiten_default=True)
RLOO = Algorithm("rloo", "Ahmadian et al. 2024 (Back to Basics)", prepare_rloo, clipped_loss,
                 min_k=2)
GRPO = Algorithm("grpo", "Shao et al. 2024 (DeepSeekMath)", prepare_grpo, grpo_minibatch_loss,
                 reduction="seq_mean_token_mean", min_k=2)
REINFORCE_PP = Algorithm("reinforce_pp", "Hu 2025 (REINFORCE++)", prepare_reinforce_pp,
                         clipped_loss)
ONLINE_DPO = Algorithm("online_dpo", "Guo et al. 2024 (online AI feedback); Xiong et al. 2024",
                       prepare_online_dpo, online_dpo_loss, min_k=2, unit_rows=2,
                       uses_objective=True)

SPPO = Algorithm("sppo", "Wu et al. 2024 (Self-Play Preference Optimization)", prepare_sppo,
                 sppo_loss, min_k=2, unit_rows=2, pair_queries=group_pairs,
                 always_reference=True)
NASH_MD = Algorithm("nash_md", "Munos et al. 2023 (Nash Learning from Human Feedback)",
                    prepare_nash_md, clipped_loss, reduction="seq_mean_token_sum_norm",
                    opponent="mixture", pair_queries=opponent_pairs, always_reference=True)
XPO = Algorithm("xpo", "Xie et al. 2024 (Exploratory Preference Optimization)", prepare_xpo,
                xpo_loss, unit_rows=2, uses_objective=True, opponent="reference",
                pair_queries=opponent_pairs, always_reference=True)

ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (PPO, RLOO, GRPO, REINFORCE_PP, ONLINE_DPO,
                                                        SPPO, NASH_MD, XPO)}


def get_algorithm(name: str) -> Algorithm:
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; choose one of {sorted(ALGORITHMS)}")
    return ALGORITHMS[name]


def check_config(cfg) -> None:
    """Config-time checks that depend on the algorithm (raised as validation errors)."""
    algo = get_algorithm(cfg.algorithm)
    k = cfg.generation.num_samples
    if k < algo.min_k:
        raise ValueError(f"{algo.name} compares the samples of a prompt: generation.num_samples "
                         f"must be >= {algo.min_k}, got {k}")
    if cfg.critic is not None and not algo.needs_critic:
        raise ValueError(f"critic: only ppo uses a critic, not {algo.name}")
    if cfg.rl.ptx_coef > 0 and cfg.ptx_data is None:
        raise ValueError("rl.ptx_coef > 0 needs ptx_data (the pretraining/SFT data of PPO-ptx)")
    if cfg.rl.ref_sync_every and cfg.model.lora is not None:
        raise ValueError("rl.ref_sync_every: with LoRA the reference is the adapter-free base "
                         "model and cannot move; train without LoRA or set ref_sync_every: 0")
    if algo.uses_objective:
        _check_pair_objective(cfg.loss, algo.name)
    if cfg.preference is not None and algo.pair_queries is None:
        raise ValueError(f"preference: a pair judge is read by sppo, nash_md and xpo, not by "
                         f"{algo.name} (use it through reward: kind: judge instead)")
    if algo.opponent is not None and cfg.backend != "hf":
        raise ValueError(f"{algo.name} samples its opponent ({algo.opponent}) with the hf backend's "
                         f"decoding loop; backend {cfg.backend!r} is not supported for it yet")
    for s in cfg.reward:
        judge = s.self_reward
        if s.kind == "self_reward" and (judge is None or judge.mode == "parse") and \
                (judge is None or judge.fallback is None):
            raise ValueError("reward kind 'self_reward' in parse mode can leave a sample unscored "
                             "(no judgement parsed); the online stage needs a number: set "
                             "self_reward.fallback (e.g. 0) or use mode: digits")
    if any(s.kind == "prm" for s in cfg.reward) and (cfg.rl.score_norm != "none"
                                                     or cfg.rl.reward_clip is not None):
        raise ValueError("reward kind 'prm' (dense step rewards) cannot be combined with "
                         "rl.score_norm or rl.reward_clip, which act on whole-sequence scores")


def _check_pair_objective(terms, algorithm: str) -> None:
    from alignlab.losses import get_loss

    for term in terms:
        spec = get_loss(term.name)
        if spec.data_kind != "pair" or spec.reference == "online" or spec.needs:
            raise ValueError(f"loss {term.name!r}: {algorithm} trains on sampled pairs and needs a "
                             f"pair objective of sequence log-probs with a cached or no reference "
                             f"(got data kind {spec.data_kind}, reference {spec.reference}, "
                             f"needs {sorted(spec.needs) or 'nothing'})")
