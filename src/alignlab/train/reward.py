"""Reward-model stage: Bradley–Terry pairwise loss (soft labels allowed) with held-out evaluation.

Each batch of B pairs is one forward over 2B sequences (chosen rows, then rejected rows, as
``data.collate.collate_pairs`` lays them out); the reward is the score head at each row's last real
token. Evaluation on ``eval_data`` (or a seeded ``eval_fraction`` hold-out) reports pairwise accuracy,
mean loss and margin, and the expected calibration error of sigma(r_c - r_r). ECE is computed on both
orientations of each pair, (p, y) and (1 - p, 1 - y), i.e. for P(A preferred over B) with A/B in
random order: with hard labels every stored pair has y = 1, and one-sided ECE would only measure how
close p is to 1, not calibration.
"""

from __future__ import annotations

import random
from functools import partial
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from alignlab.config import DataSettings, ModelSettings, StageConfig, TrainSettings
from alignlab.data.collate import collate_pairs
from alignlab.data.loading import load_records
from alignlab.data.tokenize import encode_pair
from alignlab.losses.reward import bradley_terry_loss, calibration_error
from alignlab.models.loading import load_reward_model
from alignlab.models.sharding import sharding_kind
from alignlab.runs import RunFolder
from alignlab.train.common import (
    encode_all,
    keep_best,
    report_data,
    save_final,
    sharded_map,
    start_stage,
)
from alignlab.train.forward import RewardModule
from alignlab.train.held_out import HeldOut
from alignlab.train.loop import main_log, train_loop
from alignlab.train.reduce import to_device


class RMConfig(StageConfig):
    """Reward model: Bradley–Terry pairwise loss (soft labels allowed).

    The held-out pairs (``eval_data``, else a seeded ``eval_fraction`` of ``data``) are scored after
    training (accuracy, loss, margin, ECE: ``eval.json``); with ``train.eval_every`` or
    ``train.save_best`` they are also evaluated during training (``eval/loss``, ``eval/accuracy``,
    ``eval/margin``). ``share_prompt`` (default on) runs the prompt a pair's chosen and rejected
    rows share once, in one packed row under a tree attention mask (:mod:`alignlab.models.shared_prefix`;
    the same rewards and gradients up to float rounding, less activation memory and compute)."""

    stage: Literal["rm"] = "rm"
    model: ModelSettings
    data: DataSettings
    eval_data: DataSettings | None = None
    eval_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    train: TrainSettings = Field(default_factory=TrainSettings)
    share_prompt: bool = True
    out: str


def count_pairs(batch: dict) -> int:
    return int(batch["label"].numel())


def split_rewards(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) rewards [B] each, from one forward over the 2B rows."""
    rewards = model(batch)
    half = batch["label"].numel()
    return rewards[:half], rewards[half:]


def rm_step(model, batch: dict):
    """``(loss_sum, n_pairs, {accuracy, margin} sums)`` for one micro-batch of pairs."""
    chosen, rejected = split_rewards(model, batch)
    losses, metrics = bradley_terry_loss(chosen, rejected, batch["label"])
    sums = {name: value.sum() for name, value in metrics.items()}
    return losses.sum(), losses.numel(), sums


def split_eval(cfg: RMConfig, records: list) -> tuple[list, list]:
    """(train, eval) records: ``eval_data`` is loaded separately; otherwise a seeded hold-out of
    round(eval_fraction * n) pairs (at least 1 when the fraction is > 0 and n > 1)."""
    if cfg.eval_data is not None or cfg.eval_fraction == 0 or len(records) < 2:
        return records, []
    order = list(range(len(records)))
    random.Random(cfg.train.seed).shuffle(order)
    n_eval = min(len(records) - 1, max(1, round(cfg.eval_fraction * len(records))))
    held = set(order[:n_eval])
    return ([r for i, r in enumerate(records) if i not in held],
            [r for i, r in enumerate(records) if i in held])


def evaluate_rm(acc, model, items: list, collate, batch_size: int) -> dict[str, float]:
    """Accuracy, loss, margin and ECE of the reward model on encoded pairs (all processes)."""
    def score(chunk):
        batch = to_device(collate(chunk), acc.device)
        with torch.no_grad():
            chosen, rejected = split_rewards(model, batch)
        return list(zip(chosen.tolist(), rejected.tolist(), batch["label"].tolist()))

    was_training = model.training
    model.eval()
    rows = sharded_map(acc, items, score, batch_size, lockstep=sharding_kind(model) is not None)
    model.train(was_training)
    chosen, rejected, labels = (torch.tensor(col, dtype=torch.float64) for col in zip(*rows))
    losses, metrics = bradley_terry_loss(chosen, rejected, labels)
    probs = torch.sigmoid(chosen - rejected)
    ece = calibration_error(torch.cat([probs, 1 - probs]), torch.cat([labels, 1 - labels]))
    return {"accuracy": float(metrics["accuracy"].mean()), "loss": float(losses.mean()),
            "margin": float(metrics["margin"].mean()), "ece": ece, "n": len(rows)}


def load_rm_data(cfg: RMConfig, acc, run: RunFolder) -> tuple[list, list, str]:
    """Train and eval pair records, with bad-record counts reported."""
    loaded = load_records(cfg.data, "pair")
    report_data(acc, run, loaded, "pair")
    train, held = split_eval(cfg, loaded.records)
    if cfg.eval_data is not None:
        eval_loaded = load_records(cfg.eval_data, "pair")
        report_data(acc, run, eval_loaded, "eval pair")
        held = eval_loaded.records
    return train, held, loaded.source


def run_rm(cfg: RMConfig, run: RunFolder) -> Path:
    """Train a Bradley–Terry reward model; evaluate it; returns the saved model folder."""
    acc = start_stage("rm", cfg.train.seed, run)
    train_records, eval_records, source = load_rm_data(cfg, acc, run)
    return train_reward_model(cfg, run, acc, train_records, eval_records, source)


def train_reward_model(cfg: RMConfig, run: RunFolder, acc, train_records: list,
                       eval_records: list, source: str) -> Path:
    """Train on ``train_records`` (pairs), evaluate on ``eval_records``, save; the model folder."""
    model, tokenizer = load_reward_model(cfg.model)
    encode = partial(encode_pair, tokenizer, max_length=cfg.train.max_length,
                     max_prompt_length=cfg.train.max_prompt_length)
    train_items = encode_all(train_records, encode, source)
    eval_items = encode_all(eval_records, encode, "eval data")
    main_log(acc, run, f"{len(train_items)} training pairs, {len(eval_items)} eval pairs")
    collate = partial(collate_pairs, pad_id=tokenizer.pad_token_id)
    held_out = None
    if eval_items and (cfg.train.eval_every or cfg.train.save_best):
        held_out = HeldOut(eval_items, collate, rm_step, cfg.train.batch_size,
                           save_best=keep_best(run, tokenizer, lambda module: module.model))
    module = RewardModule(model, share_slots=2 if cfg.share_prompt else 1)
    result = train_loop(module, train_items, collate, rm_step, count_pairs, cfg.train, run, acc,
                        held_out)
    if eval_items:
        scores = evaluate_rm(acc, result.model.to(acc.device), eval_items, collate,
                             cfg.train.batch_size)
        if acc.is_main_process:
            run.log_metrics({f"eval/{k}": v for k, v in scores.items()}, step=result.step)
            run.write_json("eval.json", scores)
        main_log(acc, run, "eval: " + ", ".join(f"{k}={v:.4g}" for k, v in scores.items()))
    return save_final(acc, run, result.model.model, tokenizer, cfg.train.save_best is not None)
