"""Train one model of a weak-to-strong experiment on targets with a transfer loss, and predict.

Every model (weak supervisor, ceiling, student, bootstrapping step) is trained by
:func:`train_member` through the shared loop (:func:`alignlab.train.loop.train_loop`): AdamW, the
stage's ``train`` settings, checkpoints every ``save_every`` steps and one at the end, so a killed
run resumes the unit it was in without redoing finished steps. The loss is
:func:`alignlab.losses.w2s.transfer_loss` on the batch's targets (gold one-hot for supervisors and
ceilings, the supervisor's soft labels for students); ``step_frac`` comes from the loop's
``on_step`` hook, so the confidence loss's warm-up is right after a resume too.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from alignlab.config import ModelSettings, TrainSettings
from alignlab.losses.w2s import transfer_loss
from alignlab.models.loading import load_reward_model
from alignlab.runs import RunFolder
from alignlab.train.checkpoint import latest_checkpoint, save_checkpoint
from alignlab.train.common import batched, start_stage
from alignlab.train.loop import train_loop
from alignlab.train.reduce import to_device
from alignlab.w2s.tasks import ClassifierModule, Example, collate_items, encode_example


@dataclass
class LossSpec:
    """A transfer loss by name with its settings (see :func:`alignlab.losses.w2s.transfer_loss`)."""

    name: str = "ce"
    alpha: float = 0.75
    warmup_frac: float = 0.2
    radius: float = 0.15


class _Clock:
    """The fraction of training done, set by the loop's ``on_step`` hook."""

    def __init__(self):
        self.frac = 0.0

    def __call__(self, step: int, total: int) -> None:
        self.frac = step / max(total, 1)


def _step(loss: LossSpec, clock: _Clock, module, batch: dict):
    """``(loss_sum, n, {agreement})`` for one micro-batch; agreement = share of examples whose
    argmax matches the target's argmax."""
    logits = module(batch)
    targets = batch["targets"]
    losses = transfer_loss(loss.name, logits, targets, clock.frac, alpha=loss.alpha,
                           warmup_frac=loss.warmup_frac, radius=loss.radius)
    agree = (logits.argmax(-1) == targets.argmax(-1)).float().sum()
    return losses.sum(), losses.numel(), {"target_agreement": agree}


def encode_items(tokenizer, examples: list[Example], targets: dict[int, list[float]],
                 settings: TrainSettings) -> list:
    """Every example with its target, encoded for ``tokenizer``'s model."""
    return [encode_example(tokenizer, ex, targets[ex.index], settings.max_length,
                           settings.max_prompt_length) for ex in examples]


def train_member(model_settings: ModelSettings, num_labels: int, examples: list[Example],
                 targets: dict[int, list[float]], settings: TrainSettings, loss: LossSpec,
                 folder: Path):
    """Train a sequence classifier with ``num_labels`` outputs on ``examples`` / ``targets`` (run
    folder ``folder``: log, metrics, checkpoints); returns ``(model, tokenizer)``, model in eval
    mode. A final checkpoint makes a re-run after a kill skip the training."""
    run = RunFolder(folder, echo=False)
    try:
        acc = start_stage(f"w2s {loss.name}", settings.seed, run)
        model, tokenizer = load_reward_model(model_settings, num_labels=num_labels)
        items = encode_items(tokenizer, examples, targets, settings)
        clock = _Clock()
        collate = partial(collate_items, pad_id=tokenizer.pad_token_id)
        result = train_loop(ClassifierModule(model), items, collate, partial(_step, loss, clock),
                            lambda batch: int(batch["targets"].shape[0]), settings, run, acc,
                            on_step=clock)
        last = latest_checkpoint(run.checkpoint_dir)
        if last is None or last.name != f"step-{result.step}":
            save_checkpoint(acc, run.checkpoint_dir, result.step)
        trained = result.model.model
        trained.eval()
        return trained, tokenizer
    finally:
        run.close()


@torch.no_grad()
def predict_probs(model, tokenizer, examples: list[Example], num_classes: int,
                  settings: TrainSettings) -> dict[int, list[float]]:
    """``{index: class probabilities}`` of ``model`` on ``examples`` (softmax of the class logits)."""
    dummy = {ex.index: [1.0 / num_classes] * num_classes for ex in examples}
    items = encode_items(tokenizer, examples, dummy, settings)
    module = ClassifierModule(model)
    module.eval()
    out: dict[int, list[float]] = {}
    for chunk in batched(items, settings.batch_size):
        batch = to_device(collate_items(chunk, tokenizer.pad_token_id), next(model.parameters()).device)
        probs = torch.softmax(module(batch).float(), dim=-1)
        out.update(zip(batch["index"].tolist(), probs.tolist()))
    return out
