"""Preference-model pretraining (``alignlab pmp``): Askell et al. 2021, "A General Language Assistant
as a Laboratory for Alignment", §4.

A preference model is first trained on plentiful vote-scored data from another distribution (Stack
Exchange, Reddit, Wikipedia edits; in the gym, ``data/forum.jsonl``), then fine-tuned on the few
human comparisons with the ``rm`` stage (``model: {path: <pmp run>/model}``). The paper reports
better sample efficiency of the fine-tuning with PMP than without, and better transfer from
*binarised* PMP than from ranked PMP.

Data: any ranked source converts to every better/worse pair of one question (ties skipped and
counted): ``format: stackexchange`` (vote scores by :func:`alignlab.data.pmp.vote_score`),
``oasst`` (ranks), alignlab ranked lists, or plain pairs. With ``binarize: true`` (the paper's
choice) each pair (A better than B) becomes ``GOOD:A ≻ BAD:A`` and ``BAD:B ≻ GOOD:B``
(:func:`alignlab.data.pmp.binarize`); the held-out pairs (``eval_data`` or ``eval_fraction``) are
binarised the same way, so ``eval.json`` measures the task that was trained. Training is the
``rm`` stage's Bradley–Terry loop.

Departures: the paper's PMP mixes three sources and trains on a language-modelling loss alongside;
here one source and the preference loss only. Pairs are split into train/eval before binarising,
so both halves of one pair stay on the same side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from alignlab.data.pmp import binarize
from alignlab.runs import RunFolder
from alignlab.train.common import start_stage
from alignlab.train.loop import main_log
from alignlab.train.reward import RMConfig, load_rm_data, train_reward_model


class PMPConfig(RMConfig):
    """Preference-model pretraining: the ``rm`` stage on (binarised) ranked pairs."""

    stage: Literal["pmp"] = "pmp"
    binarize: bool = True
    good_label: str = "GOOD"
    bad_label: str = "BAD"
    template: str = "{label}: {text}"


def binarized(cfg: PMPConfig, pairs: list) -> list:
    """Both GOOD/BAD discrimination pairs of every ranked pair (module docstring)."""
    return [b for p in pairs for b in binarize(p.prompt, p.chosen, p.rejected, cfg.good_label,
                                                 cfg.bad_label, cfg.template)]


def run_pmp(cfg: PMPConfig, run: RunFolder) -> Path:
    """Pretrain a preference model on ranked (optionally binarised) pairs; the model folder."""
    acc = start_stage("pmp", cfg.train.seed, run)
    train, held, source = load_rm_data(cfg, acc, run)
    if cfg.binarize:
        train, held = binarized(cfg, train), binarized(cfg, held)
        main_log(acc, run, f"binarised: {len(train)} training and {len(held)} eval GOOD/BAD pairs")
    return train_reward_model(cfg, run, acc, train, held, source)
