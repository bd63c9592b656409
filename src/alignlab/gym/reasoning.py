"""A reasoning world for the gym: multi-step arithmetic with checkable steps.

Process supervision labels every step of a solution, outcome supervision only its final answer
(Uesato et al. 2022, "Solving math word problems with process- and outcome-based feedback";
Lightman et al. 2023, "Let's Verify Step by Step"). Comparing the two needs a world where both kinds
of label are exact, and where the cases that separate them occur: a right final answer reached by
wrong reasoning (Uesato et al.'s *trace errors*). This module is that world, in pure Python and
deterministic for a seed:

* problems (:class:`ReasoningProblem`) — a start number and 2–4 operations, e.g.
  ``"Start with 7. Add 5, then multiply by 2, then subtract 3. What is the result?"``; every
  intermediate value lies in 0..99. :func:`parse_problem` recovers a problem from prompt text;
* solutions — one step per line, ``"{a} {op} {b} = {c}"`` for each operation, then
  ``"The answer is {c}."`` (the last step);
* the gold step checker :func:`check_solution` (per-step *local* validity, first error, final
  answer, outcome label, trace error) and the gold scorers :func:`outcome_reward`,
  :func:`process_reward`, :func:`step_labels` (usable as ``FunctionScorer`` functions,
  ``"alignlab.gym.reasoning:outcome_reward"``);
* a stochastic solver (:func:`sample_solution`) with the error modes of a weak model
  (:class:`ErrorRates`): arithmetic slips, copy slips, wrong operations, a right-looking answer
  after a wrong step, lucky compensating errors and early stops, with a per-problem difficulty
  factor;
* data: :func:`reasoning_dataset` (labelled :class:`~alignlab.data.steps.StepSolution` records),
  :func:`reasoning_sft_conversations`, :func:`reasoning_prompts`, :func:`write_reasoning_data`.

Local validity
--------------
A computation step is judged against what the solution itself wrote before it, not against the
true values: ``12 * 2 = 24`` is valid after a step that (wrongly) wrote 12, even if the true value
was 11. So after an arithmetic slip that is carried forward, only the slipped step is invalid. The
label that matters for PRM800K-style process supervision is the *first* error: every step from it
on is unreliable, which is how Lightman et al. (2023) score a solution (it is correct iff every
step is).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

from alignlab.data.records import Conversation, Message, Messages, record_to_dict
from alignlab.data.step_tokenize import split_steps
from alignlab.data.steps import StepSolution, answers_match, extract_answer, step_solution_to_dict

OPS = ("+", "-", "*")
OP_WORDS = {"+": "add {n}", "-": "subtract {n}", "*": "multiply by {n}"}
OPERANDS = range(2, 10)
START_VALUES = range(2, 21)
MAX_VALUE = 99
SLIP_MAX = 199
SLIP_DELTAS = (1, -1, 2, -2, 10, -10)

ARITHMETIC = "arithmetic"
COPY = "copy"
WRONG_OP = "wrong_op"
RIGHT_ANSWER = "right_answer"
COMPENSATE = "compensate"
EARLY_STOP = "early_stop"
ERROR_MODES = (ARITHMETIC, COPY, WRONG_OP, RIGHT_ANSWER, COMPENSATE, EARLY_STOP)

TEST_SEED_OFFSET = 1_000_003
SIZES = {"n_train": 600, "samples": 4, "n_test": 100, "test_samples": 64, "n_sft": 8000,
         "n_prompts_train": 2000}


class ReasoningPromptError(ValueError):
    """A text that holds no reasoning question of this module's form."""


# ----------------------------------------------------------------------------- problems


def apply_op(a: int, op: str, b: int) -> int:
    """``a op b`` for ``op`` in :data:`OPS`."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    raise ValueError(f"unknown operation {op!r}; expected one of {OPS}")


@dataclass(frozen=True)
class ReasoningProblem:
    """``start`` followed by ``ops``, each ``(op, operand)`` with ``op`` in ``+ - *``."""

    start: int
    ops: tuple[tuple[str, int], ...]

    def __post_init__(self) -> None:
        if not self.ops:
            raise ValueError("a reasoning problem needs at least one operation")
        for op, _ in self.ops:
            if op not in OPS:
                raise ValueError(f"unknown operation {op!r}; expected one of {OPS}")

    @functools.cached_property
    def question(self) -> str:
        """The question text, one fixed phrasing per operation (see :func:`parse_problem`)."""
        words = [OP_WORDS[op].format(n=n) for op, n in self.ops]
        chain = ", then ".join(words)
        return f"Start with {self.start}. {chain[0].upper()}{chain[1:]}. What is the result?"

    @functools.cached_property
    def values(self) -> tuple[int, ...]:
        """The true value after each operation (one per op; the last is :attr:`answer`)."""
        out, value = [], self.start
        for op, n in self.ops:
            value = apply_op(value, op, n)
            out.append(value)
        return tuple(out)

    @property
    def answer(self) -> int:
        """The true final result."""
        return self.values[-1]

    def solution_lines(self) -> list[str]:
        """The exact solution, one step per line."""
        lines, value = [], self.start
        for (op, n), result in zip(self.ops, self.values):
            lines.append(step_line(value, op, n, result))
            value = result
        return lines + [answer_line(value)]


def step_line(a: int, op: str, b: int, c: int) -> str:
    """One computation step, ``"{a} {op} {b} = {c}"``."""
    return f"{a} {op} {b} = {c}"


def answer_line(value: int) -> str:
    """The final step, ``"The answer is {value}."``."""
    return f"The answer is {value}."


def format_solution(lines: Sequence[str]) -> str:
    """A solution text: its steps joined by newlines."""
    return "\n".join(lines)


@functools.cache
def _op_choices(value: int) -> tuple[tuple[str, int], ...]:
    """Every ``(op, operand)`` that keeps ``value op operand`` in 0..:data:`MAX_VALUE`."""
    return tuple((op, n) for op in OPS for n in OPERANDS
                 if 0 <= apply_op(value, op, n) <= MAX_VALUE)


def sample_problem(rng: random.Random, min_ops: int = 2, max_ops: int = 4) -> ReasoningProblem:
    """A random problem: start in 2..20, ``min_ops``–``max_ops`` operations with operands 2..9, an
    operation type drawn first (uniform among those with a feasible operand), then its operand."""
    if not 1 <= min_ops <= max_ops:
        raise ValueError(f"need 1 <= min_ops <= max_ops, got {min_ops}, {max_ops}")
    value = rng.choice(START_VALUES)
    start, ops = value, []
    for _ in range(rng.randint(min_ops, max_ops)):
        choices = _op_choices(value)
        op = rng.choice(sorted({o for o, _ in choices}))
        n = rng.choice([m for o, m in choices if o == op])
        ops.append((op, n))
        value = apply_op(value, op, n)
    return ReasoningProblem(start, tuple(ops))


def generate_problems(seed: int, n: int, min_ops: int = 2, max_ops: int = 4,
                      exclude: Collection[str] = ()) -> list[ReasoningProblem]:
    """``n`` problems with distinct questions, none in ``exclude`` (question texts). Deterministic
    for ``seed``, and prefix-stable: the first k problems are the same for every ``n >= k``."""
    rng = random.Random(f"reasoning-problems-{seed}")
    seen, out = set(exclude), []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 100 * n + 1000:
            raise ValueError(f"could not draw {n} distinct problems (seed {seed})")
        problem = sample_problem(rng, min_ops, max_ops)
        if problem.question not in seen:
            seen.add(problem.question)
            out.append(problem)
    return out


# ----------------------------------------------------------------------------- parsing

_QUESTION_RE = re.compile(r"Start\s+with\s+(?P<start>[0-9]{1,9})\s*\.\s*(?P<chain>[^.?]*?)\s*\.\s*"
                          r"What\s+is\s+the\s+result\s*\?", re.IGNORECASE)
_OP_RE = re.compile(r"(?P<word>add|subtract|multiply\s+by)\s+(?P<n>[0-9]{1,9})", re.IGNORECASE)
_WORD_OP = {"add": "+", "subtract": "-", "multiply by": "*"}
_NUM = r"-?[0-9]{1,12}"  # bounded: int() of a huge digit string raises, and no step needs one
_STEP_RE = re.compile(rf"(?P<a>{_NUM})\s*(?P<op>[-+*])\s*(?P<b>{_NUM})\s*=\s*(?P<c>{_NUM})")
_ANSWER_RE = re.compile(rf"The\s+answer\s+is:?\s*(?P<n>{_NUM})\s*\.?", re.IGNORECASE)


def _prompt_text(text: str | Messages) -> str:
    """The text to search: ``text`` itself, or the last user turn of a message tuple."""
    if isinstance(text, str):
        return text
    users = [m.content for m in text if m.role == "user"]
    if not users:
        raise ReasoningPromptError("reasoning prompt has no user turn")
    return users[-1]


def _parse_chain(chain: str) -> tuple[tuple[str, int], ...] | None:
    """The operations of ``"add 5, then multiply by 2"``; None unless each part is one operation."""
    ops = []
    for part in re.split(r"\s*,\s*then\s+", chain.strip(), flags=re.IGNORECASE):
        m = _OP_RE.fullmatch(part.strip())
        if m is None:
            return None
        ops.append((_WORD_OP[" ".join(m["word"].lower().split())], int(m["n"])))
    return tuple(ops)


def parse_problem(text: str | Messages) -> ReasoningProblem:
    """The problem asked in ``text`` (a string, or messages: their last user turn), the inverse of
    :attr:`ReasoningProblem.question`. The question may sit inside a longer text (the last one
    found counts). :class:`ReasoningPromptError` when no question of this form is there."""
    body = _prompt_text(text)
    for m in reversed(list(_QUESTION_RE.finditer(body))):
        ops = _parse_chain(m["chain"])
        if ops:
            return ReasoningProblem(int(m["start"]), ops)
    raise ReasoningPromptError("not a reasoning question (expected 'Start with N. Add N, then "
                               f"multiply by N, then subtract N. What is the result?'): "
                               f"{body[:80]!r}")


# ----------------------------------------------------------------------------- gold checker


@dataclass(frozen=True)
class StepCheck:
    """The gold checker's verdict on one solution (see :func:`check_solution`).

    ``valid`` holds each step's local validity. ``first_error`` is the index of the first invalid
    step; when every present step is valid but the solution is incomplete (it stops before its
    answer line), the first *missing* step is the first error (``first_error == len(steps)``); it is
    None only for a complete solution with every step valid. ``correct`` is the outcome label (the
    final answer equals the true result); ``trace_error`` marks a right answer with an invalid step
    (Uesato et al. 2022).
    """

    steps: tuple[str, ...]
    valid: tuple[bool, ...]
    first_error: int | None
    answer: str | None
    correct: bool
    trace_error: bool
    complete: bool

    @property
    def fully_correct(self) -> bool:
        """Right answer and every step valid (the process label of the whole solution)."""
        return self.correct and self.first_error is None


def parse_step(line: str) -> tuple[int, str, int, int] | None:
    """``(a, op, b, c)`` of a computation step ``"a op b = c"``, or None when it is not one."""
    m = _STEP_RE.fullmatch(line.strip())
    return (int(m["a"]), m["op"], int(m["b"]), int(m["c"])) if m else None


def parse_answer_line(line: str) -> int | None:
    """The number of an answer step ``"The answer is N."``, or None when it is not one."""
    m = _ANSWER_RE.fullmatch(line.strip())
    return int(m["n"]) if m else None


def _computation_valid(parsed: tuple[int, str, int, int] | None, previous: int | None,
                       expected: tuple[str, int]) -> bool:
    """Local validity of a computation step (see :func:`check_solution`)."""
    if parsed is None or previous is None:
        return False
    a, op, b, c = parsed
    return a == previous and (op, b) == expected and c == apply_op(a, op, b)


def step_validity(problem: ReasoningProblem, steps: Sequence[str]) -> tuple[bool, ...]:
    """Local validity of each step (see :func:`check_solution`)."""
    n_ops = len(problem.ops)
    previous: int | None = problem.start
    valid = []
    for i, line in enumerate(steps):
        if i < n_ops:
            parsed = parse_step(line)
            valid.append(_computation_valid(parsed, previous, problem.ops[i]))
            previous = parsed[3] if parsed else None
        elif i == n_ops:
            stated = parse_answer_line(line)
            valid.append(stated is not None and previous is not None and stated == previous)
        else:
            valid.append(False)
    return tuple(valid)


def check_solution(problem: ReasoningProblem, text_or_steps: str | Sequence[str]) -> StepCheck:
    """The gold verdict on a solution (a text, one step per line, or its steps).

    Step ``i < len(ops)`` is valid iff it reads ``a op b = c``, ``a`` is the result the previous
    step wrote (the start number for step 0), ``op b`` is the problem's i-th operation and
    ``c = a op b`` (*local validity*: a step that correctly continues from an earlier wrong value is
    valid; the first error is what PRM800K-style labels use — Lightman et al. 2023). Step
    ``len(ops)`` is valid iff it reads ``The answer is N.`` with N the result the last computation
    step wrote. Extra steps, unparseable lines and answers stated too early are invalid. The final
    answer is :func:`~alignlab.data.steps.extract_answer` of the whole text. Never raises on any
    text.
    """
    if isinstance(text_or_steps, str):
        steps = tuple(split_steps(text_or_steps))
    else:
        steps = tuple(s.strip() for s in text_or_steps)
    valid = step_validity(problem, steps)
    n_ops = len(problem.ops)
    complete = len(steps) > n_ops and parse_answer_line(steps[n_ops]) is not None
    invalid = [i for i, ok in enumerate(valid) if not ok]
    first = invalid[0] if invalid else (None if complete else len(steps))
    answer = extract_answer("\n".join(steps))
    correct = answers_match(answer, str(problem.answer))
    return StepCheck(steps=steps, valid=valid, first_error=first, answer=answer, correct=correct,
                     trace_error=correct and first is not None, complete=complete)


# ----------------------------------------------------------------------------- gold scorers


def _check_completion(prompt: Messages, completion: str) -> StepCheck:
    return check_solution(parse_problem(prompt), completion)


def outcome_reward(prompt: Messages, completion: str) -> float:
    """Outcome supervision (Uesato et al. 2022): 1.0 iff the final answer is right. The problem is
    parsed from the prompt's last user turn (:class:`ReasoningPromptError` if it holds none)."""
    return 1.0 if _check_completion(prompt, completion).correct else 0.0


def process_reward(prompt: Messages, completion: str) -> float:
    """Process supervision (Lightman et al. 2023): 1.0 iff the answer is right and every step is
    valid (no trace error, nothing missing)."""
    return 1.0 if _check_completion(prompt, completion).fully_correct else 0.0


def step_labels(prompt: Messages, completion: str) -> tuple[bool, ...]:
    """The gold local validity of each step of ``completion`` (one per non-empty line)."""
    return _check_completion(prompt, completion).valid


# ----------------------------------------------------------------------------- solver


@dataclass(frozen=True)
class ErrorRates:
    """Per-step error probabilities of the solver (:func:`sample_solution`).

    ``arithmetic``, ``copy``, ``wrong_op`` and ``early_stop`` are per-step rates, scaled by the
    problem's difficulty factor (:func:`problem_profile`, log-normal with ``difficulty_spread``);
    ``arithmetic`` is also scaled by :data:`OP_DIFFICULTY` and, at the problem's *hard step*, by
    ``hard_step``. An arithmetic slip at the hard step is, with probability ``systematic``, the
    problem's own habitual slip (the same wrong value every time — a systematic error, so that the
    majority answer of a hard problem can be wrong). ``right_answer`` (state the true answer after
    an earlier wrong step) and ``compensate`` (after an uncorrected arithmetic slip, a later result
    slips back to the true value) are conditional probabilities, not scaled. With the defaults, on
    3-operation problems about 60% of solutions reach the right answer and about 52% are fully
    correct; about 13% of right answers have a wrong step (trace errors); per-problem accuracy is
    spread widely (median about 0.65, a tenth of problems below 0.15), and a majority vote of 64
    samples is right on about 90% of problems.
    """

    arithmetic: float = 0.035
    copy: float = 0.025
    wrong_op: float = 0.03
    early_stop: float = 0.025
    right_answer: float = 0.12
    compensate: float = 0.12
    difficulty_spread: float = 1.4
    hard_step: float = 5.0
    systematic: float = 0.8

    def __post_init__(self) -> None:
        for name in ("arithmetic", "copy", "wrong_op", "early_stop", "right_answer", "compensate",
                     "systematic"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"ErrorRates.{name} must lie in [0, 1], got {value!r}")
        for name in ("difficulty_spread", "hard_step"):
            if getattr(self, name) < 0:
                raise ValueError(f"ErrorRates.{name} must be >= 0, got {getattr(self, name)!r}")

    @classmethod
    def none(cls) -> ErrorRates:
        """An exact solver (reference solutions)."""
        return cls(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


DEFAULT_ERRORS = ErrorRates()
OP_DIFFICULTY = {"+": 1.0, "-": 1.2, "*": 1.6}
MAX_RATE = 0.9


@dataclass(frozen=True)
class ProblemProfile:
    """How hard the solver finds a problem: ``difficulty`` scales its error rates, ``hard_step`` is
    the step it finds hardest, ``habit_delta`` its habitual slip there (added to the result)."""

    difficulty: float
    hard_step: int
    habit_delta: int


@functools.lru_cache(maxsize=65536)
def problem_profile(problem: ReasoningProblem, spread: float) -> ProblemProfile:
    """The solver's profile of ``problem``, drawn from a hash of its question (deterministic, the
    same for every sample): ``difficulty = exp(spread * z)`` with ``z`` standard normal."""
    digest = hashlib.sha256(problem.question.encode()).digest()
    u = (int.from_bytes(digest[:8], "big") + 0.5) / 2 ** 64
    difficulty = math.exp(spread * NormalDist().inv_cdf(u)) if spread else 1.0
    hard_step = digest[8] % len(problem.ops)
    result = problem.values[hard_step]
    deltas = [d for d in SLIP_DELTAS if 0 <= result + d <= SLIP_MAX]
    return ProblemProfile(difficulty, hard_step, deltas[digest[9] % len(deltas)])


@dataclass(frozen=True)
class SolverStep:
    """One line the solver wrote, the number it states (its result, or the answer) and the error
    it injected there (None: a correct step)."""

    text: str
    value: int
    error: str | None = None


def _computed(a: int, op: str, b: int, c: int, error: str | None = None) -> SolverStep:
    """A computation step ``a op b = c``."""
    return SolverStep(step_line(a, op, b, c), c, error)


def _answered(value: int, error: str | None = None) -> SolverStep:
    """An answer step ``The answer is {value}.``."""
    return SolverStep(answer_line(value), value, error)


@dataclass
class _SolverState:
    """What the solver has written so far."""

    current: int
    lines: list[SolverStep] = field(default_factory=list)
    slipped: bool = False

    @property
    def erred(self) -> bool:
        return any(s.error for s in self.lines)


def _nearby(rng: random.Random, value: int, keep: Callable[[int], bool]) -> int | None:
    """A random value near ``value`` (±1, ±2, ±10 or swapped digits) for which ``keep`` holds."""
    candidates = {value + d for d in SLIP_DELTAS}
    if 10 <= value <= 99 and value % 10:
        candidates.add(int(str(value)[::-1]))
    options = sorted(c for c in candidates if c != value and keep(c))
    return rng.choice(options) if options else None


def _in_slip_range(value: int) -> bool:
    return 0 <= value <= SLIP_MAX


def _arithmetic_slip(rng: random.Random, a: int, op: str, b: int,
                     habit: int | None) -> SolverStep | None:
    """The right operation with a result off by a small delta (kept in 0..:data:`SLIP_MAX`);
    ``habit`` is the delta to use when the slip is the problem's habitual one."""
    right = apply_op(a, op, b)
    if habit is not None and _in_slip_range(right + habit):
        return _computed(a, op, b, right + habit, ARITHMETIC)
    c = _nearby(rng, right, _in_slip_range)
    return None if c is None else _computed(a, op, b, c, ARITHMETIC)


def _copy_slip(rng: random.Random, a: int, op: str, b: int) -> SolverStep | None:
    """The previous result miscopied, then computed correctly from the miscopied value."""
    a2 = _nearby(rng, a, lambda v: _in_slip_range(v) and _in_slip_range(apply_op(v, op, b)))
    return None if a2 is None else _computed(a2, op, b, apply_op(a2, op, b), COPY)


def _wrong_op(rng: random.Random, a: int, op: str, b: int) -> SolverStep | None:
    """Another operation or operand than the problem's, computed correctly."""
    options = [(o, b) for o in OPS if o != op] + [(op, n) for n in OPERANDS if n != b]
    options = [(o, n) for o, n in options if _in_slip_range(apply_op(a, o, n))]
    if not options:
        return None
    o, n = rng.choice(options)
    return _computed(a, o, n, apply_op(a, o, n), WRONG_OP)


def _compensate(a: int, op: str, b: int, true_value: int) -> SolverStep | None:
    """A wrong result that happens to equal the true value (undoing an earlier slip by luck)."""
    if apply_op(a, op, b) == true_value:
        return None
    return _computed(a, op, b, true_value, COMPENSATE)


@dataclass(frozen=True)
class _StepRates:
    """The solver's error probabilities at one computation step."""

    compensate: float
    wrong_op: float
    copy: float
    arithmetic: float
    habit: float


@functools.lru_cache(maxsize=65536)
def _step_rates(errors: ErrorRates, profile: ProblemProfile, index: int, op: str) -> _StepRates:
    """Scale the base rates by the problem's difficulty, the operation and the hard step."""
    f = profile.difficulty
    hard = index == profile.hard_step
    arithmetic = errors.arithmetic * OP_DIFFICULTY[op] * (errors.hard_step if hard else 1.0)
    return _StepRates(compensate=errors.compensate, wrong_op=min(MAX_RATE, errors.wrong_op * f),
                      copy=min(MAX_RATE, errors.copy * f), arithmetic=min(MAX_RATE, arithmetic * f),
                      habit=errors.systematic if hard else 0.0)


def _computation_step(rng: random.Random, state: _SolverState, op: str, b: int, true_value: int,
                      rates: _StepRates, habit_delta: int) -> SolverStep:
    """The next computation step: at most one error, tried in a fixed order, each with its rate."""
    a = state.current
    step = None
    if state.slipped and rng.random() < rates.compensate:
        step = _compensate(a, op, b, true_value)
    if step is None and rng.random() < rates.wrong_op:
        step = _wrong_op(rng, a, op, b)
    if step is None and rng.random() < rates.copy:
        step = _copy_slip(rng, a, op, b)
    if step is None and rng.random() < rates.arithmetic:
        habit = habit_delta if rng.random() < rates.habit else None
        step = _arithmetic_slip(rng, a, op, b, habit)
    return step or _computed(a, op, b, apply_op(a, op, b))


def sample_solution_steps(problem: ReasoningProblem, rng: random.Random,
                          errors: ErrorRates | None = None) -> tuple[SolverStep, ...]:
    """A sampled solution, each line with the error injected there (the solver's own record, which
    the gold checker must recover). See :func:`sample_solution`."""
    errors = errors or DEFAULT_ERRORS
    profile = problem_profile(problem, errors.difficulty_spread)
    early_stop = min(MAX_RATE, errors.early_stop * profile.difficulty)
    state = _SolverState(problem.start)
    for i, ((op, b), true_value) in enumerate(zip(problem.ops, problem.values)):
        if i > 0 and rng.random() < early_stop:
            state.lines.append(_answered(state.current, EARLY_STOP))
            return tuple(state.lines)
        rates = _step_rates(errors, profile, i, op)
        step = _computation_step(rng, state, op, b, true_value, rates, profile.habit_delta)
        state.lines.append(step)
        state.current = step.value
        state.slipped = state.slipped or step.error == ARITHMETIC
    return tuple(state.lines) + (_answer_step(rng, state, problem.answer, errors),)


def _answer_step(rng: random.Random, state: _SolverState, true_answer: int,
                 errors: ErrorRates) -> SolverStep:
    """The answer line: the last written result, or — after an earlier error, with probability
    ``right_answer`` — the true answer (right answer, wrong reasoning)."""
    if state.erred and state.current != true_answer and rng.random() < errors.right_answer:
        return _answered(true_answer, RIGHT_ANSWER)
    return _answered(state.current)


def sample_solution(problem: ReasoningProblem, rng: random.Random,
                    errors: ErrorRates | None = None) -> str:
    """A solution written by the gym's stochastic solver (the policy): one step per line, with the
    error modes of :class:`ErrorRates` — arithmetic slips (carried forward consistently), copy
    slips, wrong operations, a right-looking answer after a wrong step, lucky compensating errors
    and early stops — at rates scaled by the problem's difficulty. ``ErrorRates.none()`` solves
    exactly."""
    return format_solution([s.text for s in sample_solution_steps(problem, rng, errors)])


# ----------------------------------------------------------------------------- data


def _prompt(problem: ReasoningProblem) -> Messages:
    return (Message("user", problem.question),)


def _step_solution(problem: ReasoningProblem, text: str, problem_id: str) -> StepSolution:
    check = check_solution(problem, text)
    return StepSolution(prompt=_prompt(problem), steps=check.steps,
                        labels=tuple(1 if ok else 0 for ok in check.valid), label_type="binary",
                        answer=check.answer, correct=check.correct,
                        gold_answer=str(problem.answer), problem_id=problem_id)


def _solutions(problems: Sequence[ReasoningProblem], seed: int, samples: int,
               errors: ErrorRates | None) -> list[StepSolution]:
    rng = random.Random(f"reasoning-solver-{seed}")
    return [_step_solution(p, sample_solution(p, rng, errors), f"r{seed}-{index}")
            for index, p in enumerate(problems) for _ in range(samples)]


def _conversations(problems: Sequence[ReasoningProblem], seed: int,
                   errors: ErrorRates | None) -> list[Conversation]:
    rng = random.Random(f"reasoning-sft-{seed}")
    return [Conversation(_prompt(p) + (Message("assistant", sample_solution(p, rng, errors)),))
            for p in problems]


def _prompt_rows(problems: Sequence[ReasoningProblem], seed: int) -> list[dict[str, Any]]:
    return [{"prompt": p.question, "gold_answer": str(p.answer), "problem_id": f"r{seed}-{i}"}
            for i, p in enumerate(problems)]


def reasoning_dataset(seed: int, n_problems: int, samples_per_problem: int,
                      errors: ErrorRates | None = None, *, min_ops: int = 2, max_ops: int = 4,
                      exclude: Collection[str] = ()) -> list[StepSolution]:
    """``samples_per_problem`` sampled solutions to each of ``n_problems`` problems, with binary
    gold step labels (1 = locally valid) and outcome labels; ``problem_id`` is ``r{seed}-{index}``.
    Problems whose question is in ``exclude`` are skipped (held-out sets)."""
    problems = generate_problems(seed, n_problems, min_ops, max_ops, exclude)
    return _solutions(problems, seed, samples_per_problem, errors)


def reasoning_sft_conversations(seed: int, n_problems: int, errors: ErrorRates | None = None, *,
                                min_ops: int = 2, max_ops: int = 4,
                                exclude: Collection[str] = ()) -> list[Conversation]:
    """SFT data for the policy: each question with one sampled solution (errors included, so a small
    LM fine-tuned on them inherits the solver's error modes)."""
    return _conversations(generate_problems(seed, n_problems, min_ops, max_ops, exclude), seed,
                          errors)


def reasoning_prompts(seed: int, n: int, *, min_ops: int = 2, max_ops: int = 4,
                      exclude: Collection[str] = ()) -> list[dict[str, Any]]:
    """Prompt-only rows ``{"prompt": question, "gold_answer": "21", "problem_id": "r0-3"}`` (the
    ids match :func:`reasoning_dataset`'s for the same seed)."""
    return _prompt_rows(generate_problems(seed, n, min_ops, max_ops, exclude), seed)


def _first_error(solution: StepSolution) -> int | None:
    """Index of the first step labelled 0 (None when every step is labelled 1)."""
    return next((i for i, v in enumerate(solution.labels) if v < 0.5), None)


def solution_rates(solutions: Sequence[StepSolution]) -> dict[str, Any]:
    """Outcome and process statistics of labelled solutions: fraction correct, fully correct, with
    any step error, trace-error rate among correct ones (Uesato et al. 2022), mean first-error
    position (among solutions with an error)."""
    n = max(len(solutions), 1)
    firsts = [_first_error(s) for s in solutions]
    errs = [f for f in firsts if f is not None]
    n_correct = sum(bool(s.correct) for s in solutions)
    trace = sum(bool(s.correct) and f is not None for s, f in zip(solutions, firsts))
    return {"solutions": len(solutions), "fraction_correct": round(n_correct / n, 4),
            "fraction_fully_correct": round((n_correct - trace) / n, 4),
            "fraction_any_step_error": round(len(errs) / n, 4),
            "trace_error_rate_among_correct": round(trace / max(n_correct, 1), 4),
            "mean_first_error": round(sum(errs) / max(len(errs), 1), 4)}


def voting_rates(solutions: Sequence[StepSolution]) -> dict[str, Any]:
    """Per-problem majority-vote accuracy (Wang et al. 2023, self-consistency), pass@n (some sample
    correct) and mean accuracy, over the groups of ``problem_id``."""
    groups: dict[str, list[StepSolution]] = {}
    for s in solutions:
        groups.setdefault(s.problem_id or "", []).append(s)
    majority = oracle = 0
    for group in groups.values():
        votes = Counter(s.answer for s in group if s.answer is not None)
        top = votes.most_common(1)[0][0] if votes else None
        majority += answers_match(top, group[0].gold_answer)
        oracle += any(s.correct for s in group)
    n = max(len(groups), 1)
    return {"problems": len(groups), "majority_accuracy": round(majority / n, 4),
            "pass_at_n": round(oracle / n, 4)}


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> int:
    """Write one JSON object per line; returns the file size in bytes."""
    with open(path, "w") as fh:
        fh.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return path.stat().st_size


def write_reasoning_data(folder: str | Path, seed: int = 0, n_train: int = SIZES["n_train"],
                         n_test: int = SIZES["n_test"], samples: int = SIZES["samples"],
                         test_samples: int = SIZES["test_samples"], n_sft: int = SIZES["n_sft"],
                         n_prompts_train: int = SIZES["n_prompts_train"],
                         errors: ErrorRates | None = None) -> dict[str, Any]:
    """Write the reasoning data under ``folder``; return (and write as ``reasoning.json``) counts,
    rates and file sizes:

    * ``train_steps.jsonl`` — ``n_train`` problems × ``samples`` labelled solutions (ORM/PRM
      training);
    * ``test_steps.jsonl`` — ``n_test`` held-out problems × ``test_samples`` (best-of-N
      verification);
    * ``sft.jsonl`` — ``n_sft`` conversations (policy SFT); ``prompts_train.jsonl`` and
      ``prompts_test.jsonl`` — prompt-only rows with gold answers (the test rows are the test
      problems of ``test_steps.jsonl``, with the same ids).

    Train-side files take prefixes of one problem stream of ``seed`` (they share problems); test
    problems come from ``seed +`` :data:`TEST_SEED_OFFSET` and exclude every train-side question.
    """
    start = time.time()
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    side = generate_problems(seed, max(n_train, n_sft, n_prompts_train))
    test_seed = seed + TEST_SEED_OFFSET
    tests = generate_problems(test_seed, n_test, exclude={p.question for p in side})
    train = _solutions(side[:n_train], seed, samples, errors)
    test = _solutions(tests, test_seed, test_samples, errors)
    files = {
        "train_steps.jsonl": [step_solution_to_dict(s) for s in train],
        "test_steps.jsonl": [step_solution_to_dict(s) for s in test],
        "sft.jsonl": [record_to_dict(c) for c in _conversations(side[:n_sft], seed, errors)],
        "prompts_train.jsonl": _prompt_rows(side[:n_prompts_train], seed),
        "prompts_test.jsonl": _prompt_rows(tests, test_seed),
    }
    sizes = {name: _write_jsonl(out / name, rows) for name, rows in files.items()}
    info = {"seed": seed, "test_seed": test_seed, "counts": {k: len(v) for k, v in files.items()},
            "errors": asdict(errors or DEFAULT_ERRORS), "train": solution_rates(train),
            "test": solution_rates(test), "test_voting": voting_rates(test),
            "bytes": sizes, "seconds": round(time.time() - start, 3)}
    (out / "reasoning.json").write_text(json.dumps(info, indent=2))
    return info
