"""Dispatch a validated stage config to the code that runs it.

Each stage writes a run folder (see :mod:`alignlab.runs`) and returns its *output*: the trained model
folder for training stages, the gym folder for ``gym``, the run folder for ``eval`` and ``report``. A
finished stage leaves a ``DONE`` marker so a recipe can skip it when re-run.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from alignlab.runs import RunFolder

DONE_MARKER = "DONE"


def stage_output(cfg: BaseModel) -> Path:
    """Where a stage's output will be, known before it runs (recipes link stages through this)."""
    out = Path(cfg.out)
    if cfg.stage in ("sft", "rm", "dpo", "preference", "online", "distill"):
        return out / "model"
    return out


def run_stage(cfg: BaseModel) -> Path:
    """Run one stage to completion and return its output path."""
    if cfg.stage == "gym":
        return _run_gym(cfg)
    run = RunFolder(cfg.out, cfg)
    runner = _runner(cfg.stage)
    runner(cfg, run)
    (run.path / DONE_MARKER).write_text("ok\n")
    return stage_output(cfg)


def is_done(cfg: BaseModel) -> bool:
    """True when the stage finished earlier (its DONE marker exists)."""
    return (Path(cfg.out) / DONE_MARKER).is_file()


def _runner(stage: str):
    if stage == "sft":
        from alignlab.train.sft import run_sft
        return run_sft
    if stage == "rm":
        from alignlab.train.reward import run_rm
        return run_rm
    if stage in ("dpo", "preference"):
        from alignlab.train.preference import run_preference
        return run_preference
    if stage == "online":
        from alignlab.rl.trainer import run_online
        return run_online
    if stage == "eval":
        from alignlab.eval.run import run_eval
        return run_eval
    if stage == "report":
        from alignlab.eval.report import run_report
        return run_report
    return _feedback_runner(stage)


def _feedback_runner(stage: str):
    if stage == "label":
        from alignlab.feedback.labeling import run_label
        return run_label
    if stage == "revise":
        from alignlab.feedback.revise import run_revise
        return run_revise
    if stage == "distill":
        from alignlab.train.distill import run_distill
        return run_distill
    if stage == "synth":
        from alignlab.data.synth import run_synth
        return run_synth
    raise ValueError(f"no runner for stage {stage!r}")


def _run_gym(cfg) -> Path:
    from alignlab.gym import build_gym

    out = build_gym(cfg.out, seed=cfg.seed, pretrain_seconds=cfg.pretrain_seconds,
                    length_bias=cfg.length_bias, max_steps=cfg.pretrain_steps)
    (Path(cfg.out) / DONE_MARKER).write_text("ok\n")
    return Path(out)
