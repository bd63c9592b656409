"""The ``w2s`` stage: Burns et al. 2023, "Weak-to-Strong Generalization", as one resumable run.

The paper's protocol (§3, "Methodology"): the labelled training data is split in two halves. A
*weak supervisor* is fine-tuned on half A with gold labels and labels half B (soft labels: its
class probabilities). A *strong student* is fine-tuned on half B with those weak labels, and the
*strong ceiling* on half B with gold labels. Everything is scored on a held-out test set, and

    PGR = (acc_w2s - acc_weak) / (acc_ceiling - acc_weak)

is the performance gap recovered (:mod:`alignlab.eval.pgr`). ``models`` is a ladder, weakest first;
students are trained for the ``pairs`` of the config with each transfer loss, and with ``bootstrap``
the chain model 0 -> 1 -> ... -> last (each model trained on its predecessor's labels of half B,
then labelling half B for the next; Burns et al. §4.3.1). Departure: the paper leaves open which data
each link labels; here every link labels half B, which it was itself trained on (with weak labels,
not gold) — the same data the direct student sees, so chain and direct differ only in the chain.

Every model is one *unit* with its own folder ``units/s<seed>/<role>/...``: a run folder (log,
metrics, checkpoints), ``test.jsonl`` (its class probabilities on the test set) and for supervisors
``labels.jsonl`` (on half B), both appended and fsynced as they are computed (a killed run keeps
them), then ``DONE``. Re-running skips finished units and resumes the unfinished one from its
checkpoint, so no finished model is retrained. ``unit.json`` records what a unit's model depends on
(settings, seed, loss, a digest of its targets); a re-run that would reuse a unit for other
settings is refused. ``split.json`` fixes the split; a re-run whose data
gives a different split is refused. The report (``report.json``, ``report.md``, ``w2s.png``) is
written by :mod:`alignlab.w2s.report`.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from accelerate import PartialState

from alignlab.data.labelled import check_probability_rows, load_labelled
from alignlab.data.loading import load_records
from alignlab.feedback.jobs import JsonlJob
from alignlab.models.loading import resolve_model_source
from alignlab.runs import RunFolder
from alignlab.w2s.config import W2SConfig, W2SModel, check_ladder
from alignlab.w2s.report import write_report
from alignlab.w2s.tasks import Example, labelled_examples, pair_examples
from alignlab.w2s.train import LossSpec, predict_probs, train_member

DONE = "DONE"


@dataclass
class Split:
    """The paper's split: half A (weak supervisors, gold), half B (students and ceilings), test."""

    half_a: list[Example]
    half_b: list[Example]
    test: list[Example]


def load_examples(cfg: W2SConfig, run: RunFolder) -> tuple[list[Example], list[Example]]:
    """(training examples, test examples or [] when the test set is carved from the data)."""
    task = cfg.task

    def read(settings) -> list[Example]:
        if task.kind == "classify":
            loaded = load_labelled(settings, task.num_classes)
            examples = labelled_examples(loaded.records)
        else:
            loaded = load_records(settings, "pair")
            examples, ties = pair_examples(loaded.records, task.split_seed)
            if ties:
                run.log(f"{settings.path}: {ties} pairs without a gold preference (label 0.5) "
                        "skipped")
        if loaded.bad.skipped:
            run.log(f"{settings.path}: {loaded.bad.skipped} bad records skipped; first: "
                    f"{loaded.bad.examples[0]}")
        if not examples:
            raise ValueError(f"{settings.path}: no usable {task.kind} examples")
        return examples

    return read(task.data), (read(task.test_data) if task.test_data else [])


def split_examples(cfg: W2SConfig, examples: list[Example], test: list[Example]) -> Split:
    """Seeded split (``task.split_seed``): test (``test_data`` or ``test_fraction``), then the
    rest in two halves. Test examples from ``test_data`` get indices after the training data's."""
    order = list(range(len(examples)))
    random.Random(f"w2s-split-{cfg.task.split_seed}").shuffle(order)
    if test:
        offset = max(ex.index for ex in examples) + 1
        test = [Example(offset + ex.index, ex.label, ex.record) for ex in test]
    else:
        n_test = max(1, round(cfg.task.test_fraction * len(examples)))
        test = [examples[i] for i in order[:n_test]]
        order = order[n_test:]
    half = len(order) // 2
    if half < 2:
        raise ValueError(f"{cfg.task.data.path}: {len(examples)} examples are too few to split "
                         "into two training halves and a test set")
    return Split([examples[i] for i in order[:half]], [examples[i] for i in order[half:]], test)


def check_split(run: RunFolder, split: Split) -> None:
    """Write ``split.json``, or check a re-run's split equals the one already there."""
    current = {name: [ex.index for ex in part] for name, part in
               (("half_a", split.half_a), ("half_b", split.half_b), ("test", split.test))}
    path = run.path / "split.json"
    if path.is_file():
        if json.loads(path.read_text()) != current:
            raise ValueError(f"{path}: this run's data gives a different split than the finished "
                             "units were trained on; use a new out folder")
        return
    run.write_json("split.json", current)


# ----------------------------------------------------------------------------- units


@dataclass
class Unit:
    """One model to train: where, which rung, on what targets, with which loss, and whether it
    labels half B for a later model."""

    folder: Path
    member: W2SModel
    seed: int
    train_on: list[Example]
    targets: dict[int, list[float]]
    loss: LossSpec
    labels_b: bool


def _prob_job(path: Path, num_classes: int) -> tuple[JsonlJob, dict[int, list[float]]]:
    job = JsonlJob(path)
    return job, check_probability_rows(str(path), job.rows, num_classes)


def _fill(job: JsonlJob, have: dict[int, list[float]], model, tokenizer, examples: list[Example],
          num_classes: int, settings) -> dict[int, list[float]]:
    """Predict the examples ``job`` does not hold yet, appending them in chunks."""
    missing = [ex for ex in examples if ex.index not in have]
    step = max(settings.batch_size * 8, 64)
    for start in range(0, len(missing), step):
        probs = predict_probs(model, tokenizer, missing[start:start + step], num_classes, settings)
        job.append([{"index": i, "probs": p} for i, p in probs.items()])
        have.update(probs)
    return have


def unit_recipe(unit: Unit) -> dict:
    """What a unit's model depends on: the model and training settings (with the unit's seed), the
    loss, and a digest of its training examples and targets (a supervisor's labels included)."""
    targets = json.dumps([[ex.index, [round(p, 6) for p in unit.targets[ex.index]]]
                          for ex in unit.train_on])
    return {"model": unit.member.model.model_dump(mode="json"),
            "train": unit.member.train.model_dump(mode="json") | {"seed": unit.seed},
            "loss": asdict(unit.loss), "examples": len(unit.train_on),
            "targets_sha256": hashlib.sha256(targets.encode()).hexdigest()}


def check_unit(unit: Unit) -> None:
    """Write ``unit.json``, or refuse a unit folder made with other settings or targets (its
    finished model or checkpoints would otherwise be reused for a different experiment)."""
    path, recipe = unit.folder / "unit.json", unit_recipe(unit)
    if path.is_file():
        if json.loads(path.read_text()) != recipe:
            raise ValueError(f"{path}: this unit was trained with other settings or targets than "
                             "the config now asks for; use a new out folder (or delete the unit)")
        return
    unit.folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(recipe, indent=2) + "\n")


def run_unit(cfg: W2SConfig, unit: Unit, split: Split, log) -> dict[str, dict[int, list[float]]]:
    """Train (or resume) one unit and predict; returns ``{"test": probs, "labels": probs}``."""
    check_unit(unit)
    c = cfg.task.num_classes
    test_job, test_probs = _prob_job(unit.folder / "test.jsonl", c)
    label_job, label_probs = _prob_job(unit.folder / "labels.jsonl", c) if unit.labels_b else \
        (None, {})
    if (unit.folder / DONE).is_file():
        return {"test": test_probs, "labels": label_probs}
    log(f"{'/'.join(unit.folder.parts[-4:])}: training {unit.member.name} on "
        f"{len(unit.train_on)} examples ({unit.loss.name})")
    settings = unit.member.train.model_copy(update={"seed": unit.seed})
    model, tokenizer = train_member(unit.member.model, cfg.head_outputs(), unit.train_on,
                                    unit.targets, settings, unit.loss, unit.folder)
    test_probs = _fill(test_job, test_probs, model, tokenizer, split.test, c, settings)
    if label_job is not None:
        label_probs = _fill(label_job, label_probs, model, tokenizer, split.half_b, c, settings)
    if not cfg.keep_checkpoints:
        shutil.rmtree(unit.folder / "checkpoints", ignore_errors=True)
    (unit.folder / DONE).write_text("ok\n")
    return {"test": test_probs, "labels": label_probs}


def gold_targets(examples: list[Example], num_classes: int) -> dict[int, list[float]]:
    """One-hot gold targets."""
    return {ex.index: [float(k == ex.label) for k in range(num_classes)] for ex in examples}


def student_pairs(cfg: W2SConfig) -> list[tuple[int, int]]:
    """(weak, strong) model indices that get students."""
    last = len(cfg.models) - 1
    if cfg.pairs == "extremes":
        return [(0, last)]
    if cfg.pairs == "from_weakest":
        return [(0, j) for j in range(1, last + 1)]
    return [(i, j) for j in range(1, last + 1) for i in range(j)]


def loss_spec(cfg: W2SConfig, name: str) -> LossSpec:
    return LossSpec(name, cfg.aux_alpha, cfg.aux_warmup_frac, cfg.window_radius)


def run_seed(cfg: W2SConfig, split: Split, seed: int, root: Path, log) -> dict:
    """Every unit of one seed; returns the test probabilities by role."""
    c, models = cfg.task.num_classes, cfg.models
    pairs = student_pairs(cfg)
    supervisors = sorted({i for i, _ in pairs} | ({0} if cfg.bootstrap else set()))
    ceilings = sorted({j for _, j in pairs} | ({len(models) - 1} if cfg.bootstrap else set()))
    ce = loss_spec(cfg, "ce")
    out: dict = {"weak": {}, "ceiling": {}, "student": {}, "chain": {}}
    labels: dict[int, dict[int, list[float]]] = {}
    for i in supervisors:
        unit = Unit(root / "weak" / models[i].name, models[i], seed, split.half_a,
                    gold_targets(split.half_a, c), ce, labels_b=True)
        result = run_unit(cfg, unit, split, log)
        out["weak"][models[i].name], labels[i] = result["test"], result["labels"]
    for j in ceilings:
        unit = Unit(root / "ceiling" / models[j].name, models[j], seed, split.half_b,
                    gold_targets(split.half_b, c), ce, labels_b=False)
        out["ceiling"][models[j].name] = run_unit(cfg, unit, split, log)["test"]
    for i, j in pairs:
        for name in cfg.losses:
            unit = Unit(root / "student" / f"{models[i].name}-to-{models[j].name}" / name,
                        models[j], seed, split.half_b, labels[i], loss_spec(cfg, name), False)
            out["student"][(models[i].name, models[j].name, name)] = \
                run_unit(cfg, unit, split, log)["test"]
    if cfg.bootstrap:
        out["chain"] = run_chain(cfg, split, seed, root, labels[0], log)
    return out


def run_chain(cfg: W2SConfig, split: Split, seed: int, root: Path,
              weak_labels: dict[int, list[float]], log) -> dict[str, dict[int, list[float]]]:
    """Bootstrapping: models 1..last in turn, each on its predecessor's labels of half B; returns
    the last link's test probabilities per loss."""
    out = {}
    for name in cfg.losses:
        labels, result = weak_labels, {}
        for k in range(1, len(cfg.models)):
            last = k == len(cfg.models) - 1
            unit = Unit(root / "chain" / name / cfg.models[k].name, cfg.models[k], seed,
                        split.half_b, labels, loss_spec(cfg, name), labels_b=not last)
            result = run_unit(cfg, unit, split, log)
            labels = result["labels"]
        out[name] = result["test"]
    return out


def resolved_folders(cfg: W2SConfig) -> dict[str, str]:
    """Every model's local folder (hub names are fetched, GGUF files converted once)."""
    return {m.name: resolve_model_source(m.model)[0] for m in cfg.models}


def run_w2s(cfg: W2SConfig, run: RunFolder) -> Path:
    """Run the experiment (module docstring) and write the report; returns the run folder."""
    if PartialState().num_processes > 1:
        raise ValueError("the w2s stage trains many small models one after another in one "
                         "process; run it without accelerate launch / torchrun")
    counts = check_ladder(cfg, resolved_folders(cfg))
    examples, test = load_examples(cfg, run)
    split = split_examples(cfg, examples, test)
    check_split(run, split)
    run.log(f"w2s: {len(split.half_a)} examples in half A (weak supervisors, gold), "
            f"{len(split.half_b)} in half B (students, ceilings), {len(split.test)} test")
    results = {seed: run_seed(cfg, split, seed, run.path / "units" / f"s{seed}", run.log)
               for seed in cfg.seeds}
    report = write_report(cfg, split.test, results, counts, run.path)
    for line in report["summary"]:
        run.log(line)
    return run.path
