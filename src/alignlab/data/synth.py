"""``alignlab synth``: instruction data by self-instruct synthesis or by templating labelled tasks.

**Seed tasks** have the format of Self-Instruct's ``seed_tasks.jsonl``: one object per line with
``id``, ``name``, ``instruction``, ``instances`` (a list of ``{input, output}``) and
``is_classification`` (:func:`read_seed_tasks`; ``name`` and ``is_classification`` may be omitted).

**mode: self_instruct** (Wang et al. 2023, "Self-Instruct: Aligning Language Models with
Self-Generated Instructions", section 2.2, instruction generation and filtering): request ``i`` shows
``prompt_tasks`` numbered example instructions, ``machine_tasks`` of them drawn from the instructions
accepted so far (once there are any) and the rest from the seed tasks, shuffled, and asks the model
to continue the numbered list (:func:`request_text`). The numbered items of the reply
(:func:`parse_numbered`) are judged in order (:func:`judge_instruction`): the paper's heuristics
(word count outside ``[min_words, max_words]``, a keyword a text-only model cannot act on, a first
character that is not a letter), then exact duplicates and ROUGE-L ``> rouge_threshold`` against every
seed and accepted instruction (:class:`alignlab.data.rouge.RougePool`). Accepted instructions join
the pool at once. With ``answer: true`` the same model then answers every accepted instruction (a
plain user turn, sampled or greedy as ``generation`` says), giving SFT conversations.

Departures from the paper: the model is a chat model, so the request is one user turn rendered with
its chat template rather than a raw "Task 9:" completion prompt; the paper's instance generation
(classification tasks output-first, others input-first) is replaced by a direct answer to the
instruction; the last item of a reply cut by ``max_new_tokens`` is dropped as ``truncated`` (as in
the paper's code); once ``num_instructions`` are accepted the remaining items of that request are
counted as ``surplus``; and the run stops after ``max_requests`` requests (default
``3 * num_instructions``, :data:`REQUESTS_PER_INSTRUCTION`) even when fewer were accepted, so a weak
model cannot loop forever.

**mode: template**: each labelled instance of the seed tasks becomes a two-turn conversation, the user
turn filled from a template with ``{instruction}`` and ``{input}`` chosen per instance by a seeded rng
(only the instruction when the input is blank), the assistant turn being the instance output.

Outputs (in ``out``): ``requests.jsonl`` (self-instruct journal: one line per finished request with
its examples, raw samples, every parsed item with its verdict, and the answers), ``instructions.jsonl``
(accepted instruction, source request, ROUGE-L max and the closest pool text, answer), ``sft.jsonl``
(``{"messages": [user, assistant]}``, the ``alignlab`` format ``alignlab sft`` reads; rows with an
empty answer are left out), ``synth_stats.json`` (requests, generated, accepted, rejected per reason).

Resuming: every random choice of request ``i`` (examples and sampling seed) derives from
``(seed, i)``, and the journal line of a request is written only after the request is finished. A
rerun drops a torn last line, rebuilds the pool and ``instructions.jsonl``/``sft.jsonl`` from the
journal and continues at the next request, so a resumed run writes what a straight run writes.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from alignlab.config import ConfigError, GenerationSettings, ModelSettings, StageConfig
from alignlab.data.errors import DataSourceError, Location, RecordError
from alignlab.data.readers import require
from alignlab.data.records import Conversation, Message, record_to_dict
from alignlab.data.rouge import RougePool
from alignlab.data.sources import iter_rows
from alignlab.feedback.jobs import JsonlJob, append_jsonl, write_jsonl_atomic
from alignlab.runs import write_atomic


class SynthConfig(StageConfig):
    """Instruction data synthesis (``alignlab synth``).

    ``mode: self_instruct`` (Wang et al. 2023, "Self-Instruct"): ``model`` writes new instructions
    from prompts of ``prompt_tasks`` example tasks (``machine_tasks`` of them from its own accepted
    output once there is some), filtered and ROUGE-L de-duplicated (``rouge_threshold``), then
    answers them; it stops after ``max_requests`` requests (default 3 per instruction asked for) even
    when fewer were accepted. ``mode: template``: every labelled instance of ``seed_tasks`` is turned into an
    instruction conversation with ``templates``. ``seed_tasks`` has the format of self-instruct's
    ``seed_tasks.jsonl``. Resumable.
    """

    stage: Literal["synth"] = "synth"
    mode: Literal["self_instruct", "template"] = "self_instruct"
    model: ModelSettings | None = None
    seed_tasks: str
    num_instructions: int = Field(100, ge=1)
    max_requests: int | None = Field(None, ge=1)
    prompt_tasks: int = Field(8, ge=1)
    machine_tasks: int = Field(2, ge=0)
    rouge_threshold: float = Field(0.7, gt=0.0, le=1.0)
    min_words: int = Field(3, ge=1)
    max_words: int = Field(150, ge=1)
    answer: bool = True
    generation: GenerationSettings = Field(
        default_factory=lambda: GenerationSettings(max_new_tokens=256, temperature=0.7, top_p=0.5))
    templates: list[str] = Field(default_factory=list)
    seed: int = 0
    out: str

    @model_validator(mode="after")
    def _check(self) -> "SynthConfig":
        if self.mode == "self_instruct" and self.model is None:
            raise ValueError("mode 'self_instruct' needs 'model'")
        if self.machine_tasks > self.prompt_tasks:
            raise ValueError("machine_tasks cannot exceed prompt_tasks")
        if self.templates:
            check_templates(self.templates)
        return self


JOURNAL = "requests.jsonl"
INSTRUCTIONS = "instructions.jsonl"
SFT = "sft.jsonl"
STATS = "synth_stats.json"
SETTINGS = "synth_settings.json"
REQUESTS_PER_INSTRUCTION = 3


# ----------------------------------------------------------------------------- seed tasks


@dataclass(frozen=True)
class Instance:
    """One labelled example of a seed task."""

    input: str
    output: str


@dataclass(frozen=True)
class SeedTask:
    """A Self-Instruct seed task: an instruction and its labelled instances."""

    id: str
    name: str
    instruction: str
    instances: tuple[Instance, ...]
    is_classification: bool = False


def read_seed_tasks(path: str) -> list[SeedTask]:
    """Every seed task of ``path`` (JSONL, or JSON list); a bad row raises RecordError naming the file,
    line and field; duplicate ids and an empty file are errors too."""
    tasks: list[SeedTask] = []
    first_line: dict[str, int] = {}
    for raw in iter_rows(path):
        if raw.error is not None:
            raise raw.error
        task = parse_seed_task(raw.data, raw.where)
        if task.id in first_line:
            raise raw.where.error("id", f"duplicate id {task.id!r} (first used at "
                                        f"{raw.where.unit} {first_line[task.id]})")
        first_line[task.id] = raw.where.index
        tasks.append(task)
    if not tasks:
        raise DataSourceError(path, "the seed task file holds no tasks")
    return tasks


def parse_seed_task(row: dict[str, Any], where: Location) -> SeedTask:
    """One seed-task row (see the module docstring for the fields)."""
    instruction = require(row, "instruction", where, str).strip()
    if not instruction:
        raise where.error("instruction", "the instruction is empty")
    instances = require(row, "instances", where, list)
    return SeedTask(
        id=require(row, "id", where, str),
        name=require(row, "name", where, str) if row.get("name") is not None else "",
        instruction=instruction,
        instances=tuple(_parse_instance(item, where, f"instances[{i}]")
                        for i, item in enumerate(instances)),
        is_classification=(require(row, "is_classification", where, bool)
                           if row.get("is_classification") is not None else False))


def _parse_instance(item: Any, where: Location, name: str) -> Instance:
    if not isinstance(item, dict):
        raise where.error(name, f"expected an object with 'input' and 'output', "
                                f"got {type(item).__name__}")
    return Instance(require(item, "input", where, str, f"{name}.input"),
                    require(item, "output", where, str, f"{name}.output"))


def derived_seed(seed: int, *parts: Any) -> int:
    """A 31-bit seed that depends only on ``seed`` and ``parts`` (stable across runs and machines)."""
    key = ":".join(str(p) for p in (seed, *parts)).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "big") & 0x7FFFFFFF


# ----------------------------------------------------------------------------- template mode

DEFAULT_TEMPLATES = (
    "{instruction}\n\n{input}",
    "{input}\n\n{instruction}",
    "{instruction}\n\nInput: {input}",
    "{instruction}\n{input}",
    "Input: {input}\n\n{instruction}",
)
PLACEHOLDERS = ("instruction", "input")


def check_templates(templates: Sequence[str]) -> tuple[str, ...]:
    """The templates, checked: only ``{instruction}`` and ``{input}`` placeholders (no format spec or
    conversion), each used at least once; anything else is a ConfigError naming ``templates[i]``."""
    for i, template in enumerate(templates):
        try:
            parts = list(string.Formatter().parse(template))
        except ValueError as exc:
            raise ConfigError(f"templates[{i}]: {exc} in {template!r}; write a literal brace as "
                              "'{{' or '}}'") from None
        names = []
        for _, name, spec, conversion in parts:
            if name is None:
                continue
            if name not in PLACEHOLDERS or spec or conversion:
                shown = "{" + name + (f"!{conversion}" if conversion else "") + \
                        (f":{spec}" if spec else "") + "}"
                raise ConfigError(f"templates[{i}]: unknown placeholder {shown} in {template!r}; "
                                  "the placeholders are {instruction} and {input}")
            names.append(name)
        missing = [p for p in PLACEHOLDERS if p not in names]
        if missing:
            raise ConfigError(f"templates[{i}]: {template!r} lacks {{{missing[0]}}}; every template "
                              "needs both {instruction} and {input}")
    return tuple(templates)


def fill_template(template: str, instruction: str, input_text: str) -> str:
    """The user turn: ``template`` filled in, or the instruction alone when the input is blank."""
    if not input_text.strip():
        return instruction
    return template.format(instruction=instruction, input=input_text)


def template_conversations(tasks: Sequence[SeedTask], templates: Sequence[str],
                           seed: int) -> tuple[list[Conversation], dict[str, Any]]:
    """One conversation per labelled instance (template chosen by an rng seeded from ``(seed, task id,
    instance index)``), and counts; instances with a blank output are skipped and counted."""
    conversations, used = [], Counter()
    blank_output = instruction_only = 0
    for task in tasks:
        for k, instance in enumerate(task.instances):
            if not instance.output.strip():
                blank_output += 1
                continue
            choice = random.Random(derived_seed(seed, "template", task.id, k)).randrange(len(templates))
            if instance.input.strip():
                used[choice] += 1
            else:
                instruction_only += 1
            user = fill_template(templates[choice], task.instruction, instance.input)
            conversations.append(Conversation((Message("user", user),
                                               Message("assistant", instance.output))))
    stats = {"mode": "template", "tasks": len(tasks),
             "instances": sum(len(t.instances) for t in tasks), "conversations": len(conversations),
             "skipped_blank_output": blank_output, "instruction_only": instruction_only,
             "template_counts": {str(i): used[i] for i in range(len(templates))}}
    return conversations, stats


def run_template(cfg: SynthConfig, run) -> None:
    """Template mode: write ``sft.jsonl`` and ``synth_stats.json`` (rewritten whole, atomically)."""
    templates = check_templates(cfg.templates or DEFAULT_TEMPLATES)
    tasks = read_seed_tasks(cfg.seed_tasks)
    conversations, stats = template_conversations(tasks, templates, cfg.seed)
    write_jsonl_atomic(run.path / SFT, [record_to_dict(c) for c in conversations])
    run.write_json(STATS, stats)
    run.log(f"template: {stats['conversations']} conversations from {stats['tasks']} tasks "
            f"({stats['instances']} instances) → {run.path / SFT}")


# ----------------------------------------------------------------------------- parsing and filters

KEYWORDS = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map",
            "maps", "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram")
_KEYWORD_RE = re.compile(r"\b(?:" + "|".join(k.replace(" ", r"\s+") for k in KEYWORDS) + r")\b")
_ITEM_RE = re.compile(r"^\s*(?:[*_]{1,2})?(?:task\s*)?(\d{1,3})\s*[.):](?:[*_]{1,2})?(?:\s+|$)(.*)$",
                      re.IGNORECASE)


def parse_numbered(text: str) -> list[str]:
    """The items of a numbered list in ``text``, whitespace collapsed, empty items dropped.

    An item starts at a line ``N. text`` (also ``N)``, ``N:``, ``Task N:``, ``**N.**``; any N, since
    small models often restart at 1); following non-blank lines continue it and a blank line ends it.
    Text outside items (a preamble, closing remarks) is ignored."""
    items: list[list[str]] = []
    current: list[str] | None = None
    for line in text.splitlines():
        match = _ITEM_RE.match(line)
        if match:
            current = [match.group(2)]
            items.append(current)
        elif not line.strip():
            current = None
        elif current is not None:
            current.append(line)
    cleaned = (" ".join(" ".join(parts).split()) for parts in items)
    return [item for item in cleaned if item]


def instruction_problem(text: str, min_words: int, max_words: int) -> str | None:
    """The first heuristic filter of Self-Instruct (section 2.2) that ``text`` fails, or None:
    ``too_short``/``too_long`` (whitespace words outside ``[min_words, max_words]``), ``keyword``
    (a word of :data:`KEYWORDS`, whole words, case-insensitive), ``bad_start`` (first character not an
    ASCII letter: punctuation, digits, non-English script)."""
    words = len(text.split())
    if words < min_words:
        return "too_short"
    if words > max_words:
        return "too_long"
    if _KEYWORD_RE.search(text.lower()):
        return "keyword"
    if not (text[0].isascii() and text[0].isalpha()):
        return "bad_start"
    return None


def normalise(text: str) -> str:
    """The key of exact de-duplication: lowercased, whitespace collapsed."""
    return " ".join(text.lower().split())


@dataclass
class InstructionPool:
    """Seed and accepted instructions: exact keys plus a ROUGE-L pool."""

    rouge: RougePool = field(default_factory=RougePool)
    keys: set[str] = field(default_factory=set)
    accepted: list[str] = field(default_factory=list)

    @classmethod
    def from_seeds(cls, instructions: Iterable[str]) -> InstructionPool:
        """A pool holding the seed instructions (they are compared against, never shown as machine
        examples)."""
        pool = cls()
        for text in instructions:
            pool.rouge.add(text)
            pool.keys.add(normalise(text))
        return pool

    def accept(self, text: str) -> None:
        """Add an accepted machine instruction (compared against from now on, and eligible as a
        machine example)."""
        self.rouge.add(text)
        self.keys.add(normalise(text))
        self.accepted.append(text)


def judge_instruction(text: str, pool: InstructionPool, cfg: SynthConfig) -> dict[str, Any]:
    """The verdict on one parsed instruction: ``accepted`` (then added to ``pool``) or the reason it
    is rejected (heuristics first, then ``duplicate``, then ``similar``: ROUGE-L above
    ``rouge_threshold`` against some pool text); with the ROUGE-L maximum and the closest text."""
    verdict = {"instruction": text, "verdict": None, "rouge_max": None, "most_similar": None}
    problem = instruction_problem(text, cfg.min_words, cfg.max_words)
    if problem is None and normalise(text) in pool.keys:
        problem = "duplicate"
    if problem is None:
        match = pool.rouge.best(text, stop_above=cfg.rouge_threshold)
        verdict["rouge_max"] = round(match.score, 6)
        verdict["most_similar"] = pool.rouge.texts[match.index] if match.index >= 0 else None
        problem = "similar" if match.score > cfg.rouge_threshold else None
    verdict["verdict"] = problem or "accepted"
    if problem is None:
        pool.accept(text)
    return verdict


# ----------------------------------------------------------------------------- requests


def choose_examples(rng: random.Random, seeds: Sequence[str], machine: Sequence[str],
                    prompt_tasks: int, machine_tasks: int) -> list[str]:
    """``prompt_tasks`` example instructions: up to ``machine_tasks`` accepted ones, the rest seeds,
    shuffled (Self-Instruct uses 6 human-written and 2 machine-generated)."""
    k_machine = min(machine_tasks, len(machine))
    picked = rng.sample(list(machine), k_machine)
    picked += rng.sample(list(seeds), min(prompt_tasks - k_machine, len(seeds)))
    rng.shuffle(picked)
    return picked


def request_text(examples: Sequence[str]) -> str:
    """The user turn of a request: the examples as a numbered list, and the ask to continue it."""
    listed = "".join(f"{i}. {' '.join(ex.split())}\n" for i, ex in enumerate(examples, start=1))
    return (f"Here are some example tasks:\n\n{listed}\nWrite new tasks like these, as a numbered "
            f"list from {len(examples) + 1} on. Each task is one short instruction on its own line.")


def run_request(index: int, cfg: SynthConfig, seeds: Sequence[str], pool: InstructionPool,
                generator) -> dict[str, Any]:
    """Request ``index`` end to end (examples, generation, judging, answers) → its journal row."""
    rng = random.Random(derived_seed(cfg.seed, "examples", index))
    examples = choose_examples(rng, seeds, pool.accepted, cfg.prompt_tasks, cfg.machine_tasks)
    settings = cfg.generation.model_copy(update={"seed": derived_seed(cfg.seed, "request", index)})
    samples = generator.generate([(Message("user", request_text(examples)),)], settings)[0]
    items = []
    for sample in samples:
        parsed = parse_numbered(sample.text)
        for j, text in enumerate(parsed):
            if len(pool.accepted) >= cfg.num_instructions:
                items.append({"instruction": text, "verdict": "surplus"})
            elif sample.stop_reason == "length" and j == len(parsed) - 1:
                items.append({"instruction": text, "verdict": "truncated"})
            else:
                items.append(judge_instruction(text, pool, cfg))
    accepted = [it["instruction"] for it in items if it["verdict"] == "accepted"]
    answers = answer_instructions(accepted, cfg, index, generator) if cfg.answer else []
    return {"request": index, "examples": examples, "samples": [s.text for s in samples],
            "stop_reasons": [s.stop_reason for s in samples], "items": items, "answers": answers}


def answer_instructions(instructions: Sequence[str], cfg: SynthConfig, index: int,
                        generator) -> list[str]:
    """The model's answer to each instruction (one user turn each; seed from ``(seed, index)``)."""
    if not instructions:
        return []
    settings = cfg.generation.model_copy(
        update={"seed": derived_seed(cfg.seed, "answer", index), "num_samples": 1})
    prompts = [(Message("user", text),) for text in instructions]
    return [samples[0].text.strip() for samples in generator.generate(prompts, settings)]


# ----------------------------------------------------------------------------- journal and views


def read_journal(path: Path) -> tuple[JsonlJob, bool]:
    """The journal (a :class:`~alignlab.feedback.jobs.JsonlJob`: a torn last line is dropped) and
    whether a torn line was dropped; rows out of order raise RecordError naming the line."""
    job = JsonlJob(path)
    for number, row in enumerate(job.rows, start=1):
        if not isinstance(row, dict) or row.get("request") != number - 1:
            got = row.get("request") if isinstance(row, dict) else row
            raise RecordError(str(path), number, "request", f"expected request {number - 1}, got {got!r}")
    return job, job.dropped_torn_line


def instruction_rows(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``instructions.jsonl`` rows of one journal row (its accepted items, with answers)."""
    accepted = [it for it in row["items"] if it["verdict"] == "accepted"]
    answers = row["answers"] or [None] * len(accepted)
    return [{"instruction": it["instruction"], "request": row["request"],
             "rouge_max": it["rouge_max"], "most_similar": it["most_similar"], "answer": answer}
            for it, answer in zip(accepted, answers)]


def sft_rows(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``sft.jsonl`` conversations of one journal row (accepted items with a non-empty answer)."""
    return [record_to_dict(Conversation((Message("user", r["instruction"]),
                                         Message("assistant", r["answer"]))))
            for r in instruction_rows(row) if r["answer"]]


def synth_stats(rows: Sequence[dict[str, Any]], cfg: SynthConfig) -> dict[str, Any]:
    """Counts over the journal: ``generated == accepted + sum(rejected.values())``."""
    verdicts = Counter(it["verdict"] for row in rows for it in row["items"])
    accepted = verdicts.pop("accepted", 0)
    answered = [r for row in rows for r in instruction_rows(row)] if cfg.answer else []
    return {"mode": "self_instruct", "requests": len(rows), "generated": accepted + sum(verdicts.values()),
            "accepted": accepted, "rejected": dict(sorted(verdicts.items())),
            "empty_answers": sum(1 for r in answered if not r["answer"]),
            "sft_rows": sum(1 for r in answered if r["answer"]),
            "target": cfg.num_instructions, "max_requests": max_requests(cfg)}


def max_requests(cfg: SynthConfig) -> int:
    """The request budget: ``cfg.max_requests``, or :data:`REQUESTS_PER_INSTRUCTION` per instruction
    asked for."""
    return cfg.max_requests or REQUESTS_PER_INSTRUCTION * cfg.num_instructions


def settings_of(cfg: SynthConfig) -> dict[str, Any]:
    """The settings a journal depends on (everything but ``num_instructions`` and ``out``)."""
    return cfg.model_dump(mode="json", exclude={"num_instructions", "out"})


def check_settings(folder: Path, cfg: SynthConfig, has_rows: bool) -> None:
    """Refuse to extend a journal written with other settings; record the settings otherwise."""
    target, current = folder / SETTINGS, settings_of(cfg)
    if has_rows and target.is_file():
        before = json.loads(target.read_text())
        changed = sorted(k for k in set(before) | set(current) if before.get(k) != current.get(k))
        if changed:
            raise ConfigError(f"{folder} holds a synth run made with other settings (changed: "
                              f"{', '.join(changed)}); use a new 'out' or the same settings")
    write_atomic(target, json.dumps(current, indent=2))  # a torn file would block the resume


# ----------------------------------------------------------------------------- self-instruct run


def resume(cfg: SynthConfig, run, seeds: Sequence[str]) -> tuple[JsonlJob, InstructionPool]:
    """The journal so far, the pool rebuilt from its rows, and ``instructions.jsonl``/``sft.jsonl``
    rewritten to match the journal (a torn last journal line is dropped)."""
    journal, torn = read_journal(run.path / JOURNAL)
    rows = journal.rows
    check_settings(run.path, cfg, bool(rows))
    if torn:
        run.log(f"dropped a torn last line of {journal.path}")
    pool = InstructionPool.from_seeds(seeds)
    for row in rows:
        for item in row["items"]:
            if item["verdict"] == "accepted":
                pool.accept(item["instruction"])
    write_jsonl_atomic(run.path / INSTRUCTIONS, [r for row in rows for r in instruction_rows(row)])
    if cfg.answer:
        write_jsonl_atomic(run.path / SFT, [r for row in rows for r in sft_rows(row)])
    if rows:
        run.log(f"resumed after {len(rows)} requests ({len(pool.accepted)} instructions accepted)")
    return journal, pool


def run_self_instruct(cfg: SynthConfig, run) -> None:
    """Self-instruct mode (see the module docstring): request until ``num_instructions`` are accepted
    or the request budget is spent, journaling each finished request."""
    from alignlab.generation.hf import HFGenerator
    from alignlab.models.loading import load_causal_lm

    seeds = [task.instruction for task in read_seed_tasks(cfg.seed_tasks)]
    journal, pool = resume(cfg, run, seeds)
    rows = journal.rows
    budget = max_requests(cfg)
    if len(pool.accepted) < cfg.num_instructions and len(rows) < budget:
        model, tokenizer = load_causal_lm(cfg.model, for_training=False)
        generator = HFGenerator(model, tokenizer)
        while len(pool.accepted) < cfg.num_instructions and len(rows) < budget:
            row = run_request(len(rows), cfg, seeds, pool, generator)
            journal.append([row])  # also extends ``rows``
            _write_views(run, cfg, row)
            run.write_json(STATS, synth_stats(rows, cfg))
    stats = synth_stats(rows, cfg)
    stats["stopped"] = "target" if len(pool.accepted) >= cfg.num_instructions else "max_requests"
    run.write_json(STATS, stats)
    run.log(f"self_instruct: {stats['accepted']} accepted of {stats['generated']} generated in "
            f"{stats['requests']} requests (stopped: {stats['stopped']}); rejected {stats['rejected']}")


def _write_views(run, cfg: SynthConfig, row: dict[str, Any]) -> None:
    """Append one finished request to the views, the stats file and the metrics."""
    append_jsonl(run.path / INSTRUCTIONS, instruction_rows(row))
    if cfg.answer:
        append_jsonl(run.path / SFT, sft_rows(row))
    accepted = sum(it["verdict"] == "accepted" for it in row["items"])
    run.log(f"request {row['request']}: {len(row['items'])} generated, {accepted} accepted")
    run.log_metrics({"generated": len(row["items"]), "accepted": accepted}, step=row["request"] + 1)


def run_synth(cfg: SynthConfig, run) -> None:
    """The ``synth`` stage: ``mode: self_instruct`` or ``mode: template`` (module docstring)."""
    if cfg.mode == "template":
        run_template(cfg, run)
    else:
        run_self_instruct(cfg, run)
