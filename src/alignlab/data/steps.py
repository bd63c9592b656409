"""Step-level solutions: the canonical record for process supervision, and final-answer helpers.

A :class:`StepSolution` is one solution to one problem, split into steps (Lightman et al. 2023,
"Let's Verify Step by Step"; Uesato et al. 2022, "Solving math word problems with process- and
outcome-based feedback"). It may carry per-step labels (process supervision), an outcome label
(``correct``: the final answer matches the reference), or both.

Step labels have a ``label_type``:

- ``ternary``: −1 (wrong), 0 (neutral / ambiguous), +1 (right) — PRM800K's ratings;
- ``binary``: 0 (wrong) or 1 (right) — Math-Shepherd's hard labels, TRL's stepwise ``labels``;
- ``soft``: a value in [0, 1] — Math-Shepherd's soft estimate (the fraction of rollouts from the step
  that reach the right answer).

The canonical on-disk form (``format: steps``) is :func:`step_solution_to_dict`, one JSON object per
line. Readers of the public layouts live in :mod:`alignlab.data.step_readers`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from alignlab.data.records import Messages, messages_to_list

LABEL_TYPES = ("ternary", "binary", "soft")


@dataclass(frozen=True)
class StepSolution:
    """One solution split into steps (see the module docstring).

    ``labels`` is empty (no step labels) or one value per step, of ``label_type``. ``answer`` is the
    solution's final answer, ``gold_answer`` the problem's reference answer (both normalised strings,
    :func:`normalize_answer`), ``correct`` the outcome label, ``problem_id`` groups the solutions of
    one problem (best-of-N verification needs the groups).
    """

    prompt: Messages
    steps: tuple[str, ...]
    labels: tuple[float, ...] = ()
    label_type: str = "binary"
    answer: str | None = None
    correct: bool | None = None
    gold_answer: str | None = None
    problem_id: str | None = None

    def __post_init__(self) -> None:
        check_step_labels(self.steps, self.labels, self.label_type)

    @property
    def text(self) -> str:
        """The solution as one completion: the steps joined by newlines."""
        return "\n".join(self.steps)


@dataclass(frozen=True)
class Problem:
    """A problem to sample solutions for: its prompt, reference answer and id."""

    prompt: Messages
    gold_answer: str
    problem_id: str | None = None


def check_step_labels(steps: tuple[str, ...], labels: tuple[float, ...], label_type: str) -> None:
    """ValueError unless ``labels`` is empty or one finite value of ``label_type`` per step."""
    if label_type not in LABEL_TYPES:
        raise ValueError(f"label_type must be one of {LABEL_TYPES}, got {label_type!r}")
    if not steps:
        raise ValueError("a step solution needs at least one step")
    if not labels:
        return
    if len(labels) != len(steps):
        raise ValueError(f"{len(labels)} step labels for {len(steps)} steps")
    for i, value in enumerate(labels):
        if not math.isfinite(value):
            raise ValueError(f"step label {i} is not finite ({value!r})")
        if label_type == "ternary" and value not in (-1, 0, 1):
            raise ValueError(f"step label {i}: a ternary label is -1, 0 or 1, got {value!r}")
        if label_type == "binary" and value not in (0, 1):
            raise ValueError(f"step label {i}: a binary label is 0 or 1, got {value!r}")
        if label_type == "soft" and not 0.0 <= value <= 1.0:
            raise ValueError(f"step label {i}: a soft label lies in [0, 1], got {value!r}")


def first_error(labels: tuple[float, ...], label_type: str) -> int | None:
    """Index of the first wrong step (−1 ternary, 0 binary, < 0.5 soft), or None when none is."""
    for i, value in enumerate(labels):
        if (label_type == "ternary" and value < 0) or (label_type != "ternary" and value < 0.5):
            return i
    return None


def step_solution_to_dict(solution: StepSolution) -> dict[str, Any]:
    """The canonical JSON form (``format: steps``); None fields are left out."""
    out: dict[str, Any] = {"prompt": messages_to_list(solution.prompt),
                           "steps": list(solution.steps)}
    if solution.labels:
        out.update(labels=list(solution.labels), label_type=solution.label_type)
    for key in ("answer", "correct", "gold_answer", "problem_id"):
        value = getattr(solution, key)
        if value is not None:
            out[key] = value
    return out


# ----------------------------------------------------------------------------- final answers

ANSWER_PATTERNS = (
    r"####\s*(?P<answer>[^\n]+)",             # GSM8K reference solutions
    r"(?m)^A:\s*(?P<answer>[^\n]+)",           # GSM8K model solutions (Cobbe et al. release)
    r"[Tt]he (?:final )?answer is:?\s*(?P<answer>[^\n]+)",
)

_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?$")


def normalize_answer(text: str) -> str:
    """A final answer in comparable form: stripped, lower case, without ``$``, thousands commas, a
    trailing full stop or ``\\boxed{}``; a number loses trailing zeros (``3.0`` → ``3``)."""
    value = text.strip()
    boxed = re.fullmatch(r"\\boxed\{(.*)\}", value)
    if boxed:
        value = boxed.group(1)
    value = value.replace("$", "").replace(",", "").strip().rstrip(".").strip().lower()
    if _NUMBER.match(value):
        number = float(value)
        value = str(int(number)) if number.is_integer() else repr(number)
    return value


def extract_answer(text: str, patterns: tuple[str, ...] = ANSWER_PATTERNS) -> str | None:
    """The normalised final answer of a solution: the LAST match of the first pattern that matches
    (``#### N``, ``A: N``, ``The answer is N`` by default), or None when no pattern matches."""
    for pattern in patterns:
        matches = list(re.finditer(pattern, text))
        if matches:
            answer = normalize_answer(matches[-1].group("answer"))
            return answer or None
    return None


def answers_match(answer: str | None, gold: str | None) -> bool:
    """True when both answers exist and are equal after :func:`normalize_answer`."""
    return answer is not None and gold is not None and normalize_answer(answer) == \
        normalize_answer(gold)
