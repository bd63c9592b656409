"""Outcome (``orm``) and process (``prm``) reward-model stages.

- ``alignlab orm``: a classifier of final-answer correctness (Cobbe et al. 2021, "Training Verifiers
  to Solve Math Word Problems"), read at the solution's last token; ``every_token: true`` trains the
  head at every completion token with the outcome label, as Cobbe et al.'s token-level verifier.
  Needs ``correct`` on every solution.
- ``alignlab prm``: a per-step classifier (Lightman et al. 2023, "Let's Verify Step by Step"; Wang et
  al. 2024, Math-Shepherd) read at each step's last token, all steps of a solution in ONE forward
  (:mod:`alignlab.data.step_tokenize`). ``target``: ``binary``, ``soft`` or ``three_class`` targets
  (:func:`alignlab.losses.process.step_targets`); ``neutral_as_positive`` as Lightman et al.
  Needs step labels.

Solutions without the label a stage needs are skipped and counted (``skipped_unlabelled`` in the log
and metrics), never silently. The loss is the mean cross-entropy over scored positions. After
training the held-out solutions (``eval_data`` or a seeded ``eval_fraction``) are scored
(:func:`verifier_metrics`, ``eval.json``), and ``verifier.json`` is saved with the model so every
reader scores solutions as they were trained.
"""

from __future__ import annotations

import random
from functools import partial
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from alignlab.config import ModelSettings, StageConfig, TrainSettings
from alignlab.data.errors import DataSourceError
from alignlab.data.step_readers import StepDataSettings, load_step_solutions
from alignlab.data.steps import StepSolution, first_error
from alignlab.losses.process import (
    aggregate_step_scores,
    binary_auroc,
    first_error_metrics,
    num_labels_for,
    orm_loss,
    step_loss,
    step_targets,
)
from alignlab.models.loading import load_reward_model
from alignlab.models.sharding import gathered_for_generation
from alignlab.models.verifier import (
    VerifierSpec,
    batch_logits,
    collate_positions,
    encode_solution,
    score_encoded,
)
from alignlab.runs import RunFolder
from alignlab.train.common import encode_all, report_data, save_final, start_stage
from alignlab.train.loop import main_log, train_loop


class VerifierConfig(StageConfig):
    """An outcome or process reward model (see the module docstring); ``stage`` picks the kind."""

    stage: Literal["orm", "prm"] = "prm"
    model: ModelSettings
    data: StepDataSettings
    eval_data: StepDataSettings | None = None
    eval_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    target: Literal["binary", "soft", "three_class"] = "binary"
    neutral_as_positive: bool = False
    separator: str = "\n"
    tag: str | None = None
    aggregation: Literal["product", "min", "last", "mean"] = "product"
    every_token: bool = False
    train: TrainSettings = Field(default_factory=TrainSettings)
    out: str

    def spec(self) -> VerifierSpec:
        return VerifierSpec(kind=self.stage, target=self.target if self.stage == "prm" else "binary",
                            neutral_as_positive=self.neutral_as_positive, separator=self.separator,
                            tag=self.tag, aggregation=self.aggregation, every_token=self.every_token,
                            max_length=self.train.max_length,
                            max_prompt_length=self.train.max_prompt_length)


def usable(solution: StepSolution, kind: str) -> bool:
    """Whether ``solution`` has the label a ``kind`` verifier trains on."""
    return bool(solution.labels) if kind == "prm" else solution.correct is not None


def encode_item(tokenizer, spec: VerifierSpec, solution: StepSolution) -> dict:
    """The encoded solution with one training target per scored position."""
    enc = encode_solution(tokenizer, spec, solution.prompt, solution.steps, spec.every_token)
    if spec.kind == "prm":
        targets = step_targets(solution.labels, solution.label_type, spec.target,
                               spec.neutral_as_positive)[: len(enc.positions)]
    else:
        targets = [float(solution.correct)] * len(enc.positions)
    return {"encoded": enc, "targets": targets}


def collate_items(items: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    batch = collate_positions([item["encoded"] for item in items], pad_id)
    batch["targets"] = torch.tensor([t for item in items for t in item["targets"]],
                                    dtype=torch.float32)
    return batch


class PositionScoreModule(torch.nn.Module):
    """``forward(batch) -> [S, C]`` head outputs at the scored positions (DDP-safe wrapper)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> torch.Tensor:
        return batch_logits(self.model, batch)


def verifier_step(kind: str, module, batch: dict):
    """``(loss_sum, n_positions, {accuracy} sums)`` for one micro-batch."""
    logits = module(batch)
    targets = batch["targets"]
    losses = orm_loss(logits, targets) if kind == "orm" else step_loss(logits, targets)
    if logits.shape[-1] == 3:
        right = (logits.argmax(-1) == targets.long()).float()
    else:
        right = ((logits.reshape(-1) > 0).float() == (targets >= 0.5).float()).float()
    return losses.sum(), losses.numel(), {"accuracy": right.sum()}


def count_positions(batch: dict) -> int:
    return int(batch["targets"].numel())


def split_eval(records: list, fraction: float, seed: int) -> tuple[list, list]:
    """A seeded hold-out of whole problems (solutions of one problem never straddle the split)."""
    if fraction == 0 or len(records) < 2:
        return records, []
    keys = list(dict.fromkeys(r.problem_id or r.prompt for r in records))
    random.Random(seed).shuffle(keys)
    held = set(keys[: max(1, round(fraction * len(keys)))]) if len(keys) > 1 else set()
    return ([r for r in records if (r.problem_id or r.prompt) not in held],
            [r for r in records if (r.problem_id or r.prompt) in held])


def verifier_metrics(spec: VerifierSpec, solutions: list[StepSolution],
                     scores: list[list[float]]) -> dict[str, float]:
    """Held-out metrics: solution-level accuracy and AUROC of the solution score against
    ``correct``; for a PRM also step-level accuracy and AUROC against the step labels (right =
    :func:`alignlab.data.steps.first_error`'s rule) and first-error localisation."""
    out: dict[str, float] = {"solutions": len(solutions)}
    agg = spec.aggregation if spec.kind == "prm" else "last"
    solution_scores = [aggregate_step_scores(s, agg) for s in scores]
    graded = [(s, r.correct) for s, r in zip(solution_scores, solutions) if r.correct is not None]
    if graded:
        out["solution_accuracy"] = sum((s >= 0.5) == c for s, c in graded) / len(graded)
        auroc = binary_auroc([s for s, _ in graded], [c for _, c in graded])
        if auroc is not None:
            out["solution_auroc"] = auroc
    labelled = [(s, r) for s, r in zip(scores, solutions) if r.labels and spec.kind == "prm"]
    if labelled:
        flat = [(p, first_error((v,), r.label_type) is None)
                for s, r in labelled for p, v in zip(s, r.labels)]
        out["step_accuracy"] = sum((p >= 0.5) == y for p, y in flat) / len(flat)
        auroc = binary_auroc([p for p, _ in flat], [y for _, y in flat])
        if auroc is not None:
            out["step_auroc"] = auroc
        where = first_error_metrics([s for s, _ in labelled],
                                    [first_error(r.labels, r.label_type) for _, r in labelled])
        out.update({f"first_error_{k}": v for k, v in where.items()})
    return out


def load_solutions(cfg: VerifierConfig, run: RunFolder, acc) -> tuple[list, list, str]:
    """Training and held-out solutions with the label this verifier needs (others counted)."""
    loaded = load_step_solutions(cfg.data)
    report_data(acc, run, loaded, "step solution")
    train, held = split_eval(loaded.records, cfg.eval_fraction if cfg.eval_data is None else 0,
                             cfg.train.seed)
    if cfg.eval_data is not None:
        eval_loaded = load_step_solutions(cfg.eval_data)
        report_data(acc, run, eval_loaded, "eval step solution")
        held = eval_loaded.records
    keep = [r for r in train if usable(r, cfg.stage)]
    skipped = len(train) - len(keep)
    main_log(acc, run, f"{len(keep)} training solutions; skipped_unlabelled={skipped} (no "
                       f"{'step labels' if cfg.stage == 'prm' else 'outcome label'})")
    if acc.is_main_process:
        run.log_metrics({"skipped_unlabelled": skipped}, step=0)
    if not keep:
        raise DataSourceError(loaded.source, "no solution has the "
                              f"{'step labels' if cfg.stage == 'prm' else 'outcome labels'} a "
                              f"{cfg.stage} needs")
    return keep, held, loaded.source


def run_verifier(cfg: VerifierConfig, run: RunFolder) -> Path:
    """Train an ORM or PRM, score the held-out solutions, save the model with ``verifier.json``."""
    acc = start_stage(cfg.stage, cfg.train.seed, run)
    train_records, eval_records, source = load_solutions(cfg, run, acc)
    spec = cfg.spec()
    model, tokenizer = load_reward_model(cfg.model, num_labels=num_labels_for(spec.target))
    items = encode_all(train_records, partial(encode_item, tokenizer, spec), source)
    collate = partial(collate_items, pad_id=tokenizer.pad_token_id)
    result = train_loop(PositionScoreModule(model), items, collate,
                        partial(verifier_step, cfg.stage), count_positions, cfg.train, run, acc)
    trained = result.model.model
    with gathered_for_generation(acc, trained):  # every process; FSDP2 / ZeRO-3 weights whole
        if eval_records and acc.is_main_process:
            encoded = [encode_solution(tokenizer, spec, r.prompt, r.steps) for r in eval_records]
            scores = score_encoded(trained.to(acc.device), encoded, tokenizer.pad_token_id,
                                   cfg.train.batch_size, spec.neutral_as_positive)
            trained.train()
            metrics = verifier_metrics(spec, eval_records, scores)
            run.log_metrics({f"eval/{k}": v for k, v in metrics.items()}, step=result.step)
            run.write_json("eval.json", metrics)
            run.log("eval: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    folder = save_final(acc, run, trained, tokenizer)
    if acc.is_main_process:
        spec.write(folder)
    acc.wait_for_everyone()
    return folder
