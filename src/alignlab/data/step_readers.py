"""Readers of step-level (process-supervision) data: public layouts → :class:`StepSolution`.

Every reader has the signature of :mod:`alignlab.data.readers` (``read_x(row, where, notes)``),
returns ``list[StepSolution]``, raises ``where.error(field, problem)`` naming the exact field path,
and counts the quirks it handles in ``notes``. Formats (``StepDataSettings.format``):

- ``steps``: the canonical :func:`~alignlab.data.steps.step_solution_to_dict` form. Without
  ``label_type`` it is inferred (any −1 → ternary; all 0/1 or booleans → binary; else soft). An
  absent or empty ``labels`` means unlabelled. Without ``answer`` but with ``gold_answer``, the
  answer is extracted from the last step (``steps_answer_extracted``) and, without ``correct``,
  ``correct`` is whether it matches (``steps_correct_from_answer``).
- ``prm800k``: OpenAI's PRM800K (Lightman et al. 2023, "Let's Verify Step by Step"); see
  :func:`read_prm800k`.
- ``math_shepherd``: Math-Shepherd (Wang et al. 2024); see :func:`read_math_shepherd`.
- ``trl_stepwise``: TRL's stepwise-supervision layout ``{"prompt", "completions": [step, ...],
  "labels": [bool, ...]}`` → binary labels.
- ``gsm8k``: GSM8K reference solutions (Cobbe et al. 2021, "Training Verifiers to Solve Math
  Word Problems"): ``{"question", "answer": "line\\n…\\n#### N"}``. Steps are the non-blank lines
  before ``#### N`` (blank ones counted: ``gsm8k_blank_line_skipped``); answer = gold = N,
  ``correct`` True, no step labels (reference solutions are outcome-correct; we do not invent
  step labels).
- ``gsm8k_solutions``: the GSM8K authors' labelled model solutions ``{"question", "ground_truth":
  "…\\nA: N", "<model>": {"solution", "is_correct"}, …}`` → one record per solution object, in
  file order. Steps are the solution's non-blank lines, the final ``A: N`` line kept as the last
  step (it is the model's final-answer step). ``correct`` is the given ``is_correct``; a label that
  disagrees with the extracted answer is kept and counted (``gsm8k_label_disagrees_with_answer``);
  a solution without an ``A:`` line (truncated samples) is counted
  (``gsm8k_solution_without_final_answer``).

With ``strip_calculator``, GSM8K's calculator annotations ``<<48/2=24>>`` are removed from steps.
``problem_id``: PRM800K and Math-Shepherd hold many rows per problem, so their id is a hash of the
problem text (:func:`text_id`); GSM8K rows are one problem each, so theirs is
``"{source}:{line}"``.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, Literal

from pydantic import Field

from alignlab.config import DataSettings, shown
from alignlab.data.errors import Location
from alignlab.data.loading import LoadedData, read_items
from alignlab.data.readers import match_format_rules, parse_prompt, require
from alignlab.data.records import Message, Messages
from alignlab.data.steps import (
    LABEL_TYPES,
    Problem,
    StepSolution,
    answers_match,
    check_step_labels,
    extract_answer,
    normalize_answer,
)

StepReader = Callable[[dict[str, Any], Location, Counter], list[StepSolution]]
StepFormat = Literal["auto", "steps", "prm800k", "math_shepherd", "trl_stepwise", "gsm8k",
                     "gsm8k_solutions"]


class StepDataSettings(DataSettings):
    """A source of step-level solutions: :class:`DataSettings` with the step formats and options."""

    format: StepFormat = "auto"  # type: ignore[assignment]
    step_tag: str = Field("ки", min_length=1)
    strip_calculator: bool = False
    prm800k_alternatives: bool = False


# ----------------------------------------------------------------------------- helpers


def text_id(text: str) -> str:
    """A stable problem id: the first 16 hex digits of the SHA-1 of the problem text."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _user(text: str) -> Messages:
    return (Message("user", text),)


def _optional(row: dict[str, Any], key: str, where: Location, kind: type | tuple) -> Any:
    return None if row.get(key) is None else require(row, key, where, kind)


def _string_list(value: Any, where: Location, field: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise where.error(field, "expected a non-empty list of strings")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise where.error(f"{field}[{i}]", f"expected a string, got {type(item).__name__}")
    return tuple(value)


CALCULATOR = re.compile(r"<<[^<>]*>>")


def _lines(text: str, strip_calculator: bool, notes: Counter, note: str) -> tuple[str, ...]:
    """The stripped non-blank lines of ``text`` (blank ones counted as ``note``)."""
    lines = [CALCULATOR.sub("", line) if strip_calculator else line for line in text.split("\n")]
    blank = sum(1 for line in text.strip().split("\n") if not line.strip())
    if blank:
        notes[note] += blank
    return tuple(line.strip() for line in lines if line.strip())


# ----------------------------------------------------------------------------- canonical


def infer_label_type(values: Iterable[Any]) -> str:
    """ternary if any value is −1, binary if all are 0/1 (or booleans), else soft."""
    values = list(values)
    if any(v == -1 for v in values):
        return "ternary"
    return "binary" if all(v in (0, 1) for v in values) else "soft"


def _canonical_labels(row: dict[str, Any], steps: tuple[str, ...], where: Location,
                      ) -> tuple[tuple[float, ...], str]:
    raw = row.get("labels")
    if raw is None or raw == []:
        return (), "binary"
    if not isinstance(raw, list) or len(raw) != len(steps):
        raise where.error("labels", f"expected a list of {len(steps)} numbers (one per step)")
    for i, value in enumerate(raw):
        if not isinstance(value, (int, float)):
            raise where.error(f"labels[{i}]", f"expected a number, got {type(value).__name__}")
    label_type = _optional(row, "label_type", where, str) or infer_label_type(raw)
    if label_type not in LABEL_TYPES:
        raise where.error("label_type", f"expected one of {LABEL_TYPES}, got {shown(label_type)}")
    labels = tuple(float(v) for v in raw)
    try:
        check_step_labels(steps, labels, label_type)
    except ValueError as exc:
        raise where.error("labels", str(exc)) from None
    return labels, label_type


def read_steps(row: dict[str, Any], where: Location, notes: Counter) -> list[StepSolution]:
    """The canonical form (see the module docstring)."""
    prompt = parse_prompt(require(row, "prompt", where, (str, list)), where, "prompt")
    steps = _string_list(require(row, "steps", where), where, "steps")
    labels, label_type = _canonical_labels(row, steps, where)
    answer, gold = (_optional(row, key, where, str) for key in ("answer", "gold_answer"))
    correct = _optional(row, "correct", where, bool)
    problem_id = _optional(row, "problem_id", where, (str, int))
    if answer is None and gold is not None:
        answer = extract_answer(steps[-1])
        notes["steps_answer_extracted"] += 1
        if correct is None:
            correct = answers_match(answer, gold)
            notes["steps_correct_from_answer"] += 1
    return [StepSolution(prompt, steps, labels, label_type,
                         None if answer is None else normalize_answer(answer), correct,
                         None if gold is None else normalize_answer(gold),
                         None if problem_id is None else str(problem_id))]


# ----------------------------------------------------------------------------- PRM800K


PRM800K_FINISH = ("solution", "found_error", "give_up", "bad_problem")
PRM800K_ANSWER = re.compile(r"#\s*Answer\s*\n(?P<answer>.*\S)", re.DOTALL)
Rated = tuple[str, int]


def _rated(value: Any, where: Location, field: str, default: int | None = None) -> Rated:
    """``(text, rating)`` of one completion; a null rating is ``default`` or an error."""
    if not isinstance(value, dict):
        raise where.error(field, f"expected a completion object, got {type(value).__name__}")
    text = require(value, "text", where, str, f"{field}.text")
    rating = value.get("rating")
    if rating is None and default is None:
        raise where.error(f"{field}.rating", "a completion on the labelled path has no rating")
    rating = default if rating is None else rating
    if isinstance(rating, bool) or rating not in (-1, 0, 1):
        raise where.error(f"{field}.rating", f"expected -1, 0 or 1, got {shown(rating)}")
    return text, int(rating)


def _prm800k_step(step: Any, where: Location, field: str, notes: Counter,
                  ) -> tuple[Rated, int | None, bool]:
    """The labeller's completion of one step, its index in ``completions`` (None for a human one)
    and whether the trajectory ends here (no completion chosen, none written)."""
    if not isinstance(step, dict):
        raise where.error(field, f"expected a step object, got {type(step).__name__}")
    completions = require(step, "completions", where, list, f"{field}.completions")
    chosen = step.get("chosen_completion")
    if chosen is not None:
        if isinstance(chosen, bool) or not isinstance(chosen, int) \
                or not 0 <= chosen < len(completions):
            raise where.error(f"{field}.chosen_completion",
                              f"expected an index below {len(completions)}, got {shown(chosen)}")
        return _rated(completions[chosen], where, f"{field}.completions[{chosen}]"), chosen, False
    if step.get("human_completion") is not None:
        notes["prm800k_human_completion"] += 1
        human = _rated(step["human_completion"], where, f"{field}.human_completion", default=1)
        return human, None, False
    if not completions:
        raise where.error(f"{field}.completions",
                          "no completion chosen or written, and none to end on")
    last = next((i for i, c in enumerate(completions)
                 if isinstance(c, dict) and c.get("rating") == -1), 0)
    return _rated(completions[last], where, f"{field}.completions[{last}]"), last, True


def _prm800k_alternatives(step: dict[str, Any], taken: int | None, where: Location, field: str,
                          notes: Counter) -> list[Rated]:
    out = []
    for j, completion in enumerate(step["completions"]):
        if j == taken:
            continue
        if isinstance(completion, dict) and completion.get("rating") is None:
            notes["prm800k_unrated_alternative_skipped"] += 1
            continue
        out.append(_rated(completion, where, f"{field}.completions[{j}]"))
    return out


def _prm800k_record(path: list[Rated], correct: bool | None, problem: str,
                    gold: str) -> StepSolution:
    steps = tuple(text for text, _ in path)
    labels = tuple(float(rating) for _, rating in path)
    found = PRM800K_ANSWER.search(steps[-1])
    answer = normalize_answer(found.group("answer")) if found else extract_answer(steps[-1])
    return StepSolution(_user(problem), steps, labels, "ternary", answer, correct, gold,
                        text_id(problem))


def read_prm800k(row: dict[str, Any], where: Location, notes: Counter,
                 alternatives: bool = False) -> list[StepSolution]:
    """One PRM800K labelling: the labeller's path through the step completions, ternary labels.

    Per step: ``completions[chosen_completion]``; else the ``human_completion`` (a null rating
    counts as +1, ``prm800k_human_completion``); else the trajectory ends at this step with its
    first completion rated −1 (else its first completion), as phase 2 stops at the first error.
    ``finish_reason`` ``bad_problem``/``give_up`` rows give nothing (counted). ``correct``: False if
    a path step is rated −1, True if not and the labeller finished the solution, else None.

    With ``alternatives``, each other rated completion of each step also gives a record: the path
    before that step plus the completion as its last step (``correct`` False when any label is −1,
    else None); these follow the path's record, in step then completion order.
    """
    label = require(row, "label", where, dict)
    finish = require(label, "finish_reason", where, str, "label.finish_reason")
    if finish not in PRM800K_FINISH:
        raise where.error("label.finish_reason",
                          f"expected one of {PRM800K_FINISH}, got {shown(finish)}")
    if finish in ("bad_problem", "give_up"):
        notes[f"prm800k_{finish}_skipped"] += 1
        return []
    question = require(row, "question", where, dict)
    problem = require(question, "problem", where, str, "question.problem")
    gold = normalize_answer(require(question, "ground_truth_answer", where, str,
                                    "question.ground_truth_answer"))
    path: list[Rated] = []
    others: list[tuple[int, Rated]] = []
    for i, step in enumerate(require(label, "steps", where, list, "label.steps")):
        field = f"label.steps[{i}]"
        rated, taken, ends = _prm800k_step(step, where, field, notes)
        if alternatives:
            others += [(i, alt) for alt in _prm800k_alternatives(step, taken, where, field, notes)]
        path.append(rated)
        if ends:
            break
    if not path:
        raise where.error("label.steps", "no steps")
    failed = any(rating == -1 for _, rating in path)
    correct = False if failed else True if finish == "solution" else None
    out = [_prm800k_record(path, correct, problem, gold)]
    for i, alt in others:
        branch = path[:i] + [alt]
        out.append(_prm800k_record(branch, False if any(r == -1 for _, r in branch) else None,
                                   problem, gold))
    if others:
        notes["prm800k_alternative"] += len(others)
    return out


# ----------------------------------------------------------------------------- Math-Shepherd


def _shepherd_question(head: str, where: Location, notes: Counter) -> tuple[str, str]:
    """Split the text before the first tag into question and first step: at the last ``Step 1:``,
    else at the first newline (``math_shepherd_question_split_at_newline``)."""
    cut = head.rfind("Step 1:")
    if cut < 0:
        cut = head.find("\n")
        notes["math_shepherd_question_split_at_newline"] += 1
    question, step = head[:max(cut, 0)].strip(), head[max(cut, 0):].strip()
    if cut < 0 or not question or not step:
        raise where.error("input", "cannot separate the question from the first step (a "
                                   "non-empty question needs 'Step 1:' or a line break before it)")
    return question, step


def _shepherd_labels(label: str, segments: list[str], where: Location) -> tuple[float, ...]:
    """The +/− marks of ``label``, checked to be ``input`` with each tag replaced by one mark."""
    pos, marks = 0, []
    for k, segment in enumerate(segments):
        if label[pos:pos + len(segment)] != segment:
            if len(label) - pos < len(segment) and segment.startswith(label[pos:]):
                raise where.error("label", f"ends before step tag {k + 1}: fewer marks than "
                                           f"'input' has tags ({len(segments) - 1})")
            place = f"before step tag {k + 1}" if k < len(segments) - 1 else "after the last tag"
            raise where.error("label", f"the text {place} differs from 'input'")
        pos += len(segment)
        if k == len(segments) - 1:
            break
        mark = label[pos:pos + 1]
        if mark not in ("+", "-") or not mark:
            raise where.error("label", f"expected '+' or '-' in place of step tag {k + 1}, "
                                       f"found {label[pos:pos + 10]!r}")
        marks.append(1.0 if mark == "+" else 0.0)
        pos += 1
    if pos != len(label):
        raise where.error("label", "text after the last mark: more marks than 'input' has tags")
    return tuple(marks)


def read_math_shepherd(row: dict[str, Any], where: Location, notes: Counter,
                       step_tag: str = "ки") -> list[StepSolution]:
    """A Math-Shepherd row (Wang et al. 2024): ``input`` is the question then steps each ending with
    ``step_tag``; ``label`` is ``input`` with each tag replaced by ``+`` (binary 1) or ``-`` (0).

    The question ends where the last ``Step 1:`` before the first tag begins (or, without one, at
    the first line break). Steps are the tagged segments, stripped, ``Step k:`` prefixes kept as in
    the source. Without ``label`` the record is unlabelled. ``answer`` is extracted from the last step;
    ``correct`` is the last step's label (the last step's rollout is the solution itself, so its
    label says whether the final answer is right) or None when unlabelled. ``task`` is ignored.
    """
    segments = require(row, "input", where, str).split(step_tag)
    if len(segments) < 2:
        raise where.error("input", f"no step tag {step_tag!r}")
    if segments[-1].strip():
        raise where.error("input", f"text after the last step tag {step_tag!r}")
    question, first = _shepherd_question(segments[0], where, notes)
    steps = (first, *(segment.strip() for segment in segments[1:-1]))
    empty = next((k for k, step in enumerate(steps) if not step), None)
    if empty is not None:
        raise where.error("input", f"step {empty + 1} is empty")
    labels: tuple[float, ...] = ()
    if row.get("label") is not None:
        labels = _shepherd_labels(require(row, "label", where, str), segments, where)
    correct = bool(labels[-1]) if labels else None
    return [StepSolution(_user(question), steps, labels, "binary", extract_answer(steps[-1]),
                         correct, None, text_id(question))]


# ----------------------------------------------------------------------------- TRL, GSM8K


def read_trl_stepwise(row: dict[str, Any], where: Location, notes: Counter) -> list[StepSolution]:
    """TRL stepwise supervision: ``prompt``, ``completions`` (the steps), boolean ``labels``."""
    prompt = parse_prompt(require(row, "prompt", where, (str, list)), where, "prompt")
    steps = _string_list(require(row, "completions", where), where, "completions")
    raw = require(row, "labels", where, list)
    if len(raw) != len(steps):
        raise where.error("labels", f"{len(raw)} labels for {len(steps)} completions (steps)")
    for i, value in enumerate(raw):
        if not isinstance(value, (bool, int, float)) or value not in (0, 1):
            raise where.error(f"labels[{i}]", f"expected true or false, got {shown(value)}")
    return [StepSolution(prompt, steps, tuple(float(v) for v in raw), "binary",
                         extract_answer(steps[-1]))]


def read_gsm8k(row: dict[str, Any], where: Location, notes: Counter,
               strip_calculator: bool = False) -> list[StepSolution]:
    """A GSM8K reference solution (see the module docstring)."""
    question = require(row, "question", where, str)
    lines = require(row, "answer", where, str).split("\n")
    final = next((i for i in reversed(range(len(lines))) if lines[i].lstrip().startswith("####")),
                 None)
    if final is None:
        raise where.error("answer", "no final '#### N' line")
    gold = normalize_answer(lines[final].lstrip()[4:])
    if not gold or any(line.strip() for line in lines[final + 1:]):
        raise where.error("answer", "the final '#### N' line must hold the answer and end the text")
    steps = _lines("\n".join(lines[:final]), strip_calculator, notes, "gsm8k_blank_line_skipped")
    if not steps:
        raise where.error("answer", "no reasoning lines before '#### N'")
    return [StepSolution(_user(question), steps, (), "binary", gold, True, gold,
                         f"{where.source}:{where.index}")]


FINAL_A = (r"(?m)^A:\s*(?P<answer>[^\n]+)",)


def read_gsm8k_solutions(row: dict[str, Any], where: Location, notes: Counter,
                         strip_calculator: bool = False) -> list[StepSolution]:
    """The GSM8K authors' labelled model solutions (see the module docstring)."""
    question = require(row, "question", where, str)
    gold = extract_answer(require(row, "ground_truth", where, str), FINAL_A)
    if gold is None:
        raise where.error("ground_truth", "no final 'A: N' line")
    out = []
    for key, value in row.items():
        if not isinstance(value, dict) or not {"solution", "is_correct"} & value.keys():
            continue
        text = require(value, "solution", where, str, f"{key}.solution")
        correct = require(value, "is_correct", where, bool, f"{key}.is_correct")
        steps = _lines(text, strip_calculator, notes, "gsm8k_blank_line_skipped")
        if not steps:
            raise where.error(f"{key}.solution", "empty solution")
        if extract_answer(text, FINAL_A) is None:
            notes["gsm8k_solution_without_final_answer"] += 1
        answer = extract_answer(text)
        if correct != answers_match(answer, gold):
            notes["gsm8k_label_disagrees_with_answer"] += 1
        out.append(StepSolution(_user(question), steps, (), "binary", answer, correct, gold,
                                f"{where.source}:{where.index}"))
    if not out:
        raise where.error(None, "no solution objects ({'solution', 'is_correct'})")
    return out


# ----------------------------------------------------------------------------- detection, loading


STEP_FORMAT_RULES: tuple[tuple[str, str, Callable[[dict[str, Any]], bool]], ...] = (
    ("steps", "a list under steps", lambda r: isinstance(r.get("steps"), list)),
    ("prm800k", "question + label objects",
     lambda r: isinstance(r.get("question"), dict) and isinstance(r.get("label"), dict)),
    ("math_shepherd", "an input string (label, if any, a string)",
     lambda r: isinstance(r.get("input"), str) and isinstance(r.get("label", ""), str)),
    ("trl_stepwise", "keys prompt + completions + labels",
     lambda r: {"prompt", "completions", "labels"} <= r.keys()),
    ("gsm8k", "keys question + answer", lambda r: {"question", "answer"} <= r.keys()),
    ("gsm8k_solutions", "keys question + ground_truth",
     lambda r: {"question", "ground_truth"} <= r.keys()),
)


def detect_step_format(row: dict[str, Any], source: str) -> str:
    """The step format whose rule matches the row's keys; no match or several → DataSourceError."""
    return match_format_rules(row, source, STEP_FORMAT_RULES, "step-data format", "format")


def step_readers(settings: StepDataSettings) -> dict[str, StepReader]:
    """Every step format's reader, with ``settings``' options bound."""
    strip = settings.strip_calculator
    return {
        "steps": read_steps,
        "prm800k": functools.partial(read_prm800k, alternatives=settings.prm800k_alternatives),
        "math_shepherd": functools.partial(read_math_shepherd, step_tag=settings.step_tag),
        "trl_stepwise": read_trl_stepwise,
        "gsm8k": functools.partial(read_gsm8k, strip_calculator=strip),
        "gsm8k_solutions": functools.partial(read_gsm8k_solutions, strip_calculator=strip),
    }


def load_step_solutions(settings: StepDataSettings) -> LoadedData:
    """Step solutions from ``settings``' source (``on_bad_record``, ``offset``, ``limit`` apply)."""
    return read_items(settings, lambda item, where, notes: [item], step_readers(settings),
                      detect_step_format)


def read_problem(row: dict[str, Any], where: Location, notes: Counter) -> list[Problem]:
    """A problem row ``{"prompt", "gold_answer", "problem_id"?}`` (``format: steps`` without
    ``steps``, as the gym's ``prompts_*.jsonl``)."""
    prompt = parse_prompt(require(row, "prompt", where, (str, list)), where, "prompt")
    gold = require(row, "gold_answer", where, (str, int, float))
    problem_id = _optional(row, "problem_id", where, (str, int))
    return [Problem(prompt, normalize_answer(str(gold)),
                    None if problem_id is None else str(problem_id))]


def as_problem(item: StepSolution | Problem, where: Location, notes: Counter) -> list[Problem]:
    """The problem a solution solves; a solution without a gold answer is a RecordError."""
    if isinstance(item, Problem):
        return [item]
    if item.gold_answer is None:
        raise where.error("gold_answer", "a problem needs a gold (reference) answer")
    return [Problem(item.prompt, item.gold_answer, item.problem_id)]


def load_problems(settings: StepDataSettings) -> LoadedData:
    """Problems with gold answers, one per problem (the first of its solutions): from any step
    format, or from ``format: steps`` rows holding only ``prompt`` and ``gold_answer``."""
    readers = step_readers(settings)
    plain = readers["steps"]
    readers["steps"] = lambda row, where, notes: (plain(row, where, notes) if "steps" in row
                                                  else read_problem(row, where, notes))
    loaded = read_items(settings, as_problem, readers, _detect_problem_format)
    seen, unique = set(), []
    for problem in loaded.records:
        key = problem.problem_id if problem.problem_id is not None else problem.prompt
        if key not in seen:
            seen.add(key)
            unique.append(problem)
    loaded.records = unique
    return loaded


def _detect_problem_format(row: dict[str, Any], source: str) -> str:
    if "prompt" in row and "gold_answer" in row and "steps" not in row:
        return "steps"
    return detect_step_format(row, source)


def group_by_problem(solutions: Iterable[StepSolution]) -> list[list[StepSolution]]:
    """The solutions grouped by ``problem_id`` (by prompt where it is None), in first-seen order."""
    groups: dict[tuple[str, Any], list[StepSolution]] = {}
    for solution in solutions:
        key = ("id", solution.problem_id) if solution.problem_id is not None \
            else ("prompt", solution.prompt)
        groups.setdefault(key, []).append(solution)
    return list(groups.values())
