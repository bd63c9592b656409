"""Constitutions: the principles behind critique -> revision and AI preference labels.

Bai et al. 2022, "Constitutional AI: Harmlessness from AI Feedback": a constitution is a short list of
natural-language principles. Each critique/revision principle is a *critique request* ("identify ways
the last reply is harmful") paired with a *revision request* ("rewrite it to remove ..."); the
multiple-choice principles are questions asked of a feedback model comparing two replies (sec. 4.1).

alignlab's YAML format (``docs/rlaif.md``)::

    name: my-constitution
    principles:            # critique -> revision pairs; one is drawn at random per round
      - {name: harm, critique: "...", revision: "..."}
    comparison:            # multiple-choice principles for AI preference labels
      - "Which reply is less harmful?"
    rating: "Rate the reply from 1 to 5."     # direct RLAIF's pointwise question (optional)
    examples:              # optional few-shot critique/revision examples
      - conversation: [{role: user, content: ...}, {role: assistant, content: ...}]
        critique_request: ...
        critique: ...
        revision_request: ...
        revision: ...
    comparison_examples:   # optional few-shot multiple-choice examples
      - {conversation: [...], principle: ..., options: [first, second], answer: A}

:func:`load_constitution` also reads the JSON files Anthropic published with the paper (a folder holding
``CritiqueRevisionInstructions.json`` and optionally ``RLMadisonInstructions.json`` and the two
``*FewShotPrompts.json`` files). ``"default"`` and ``"gym"`` name the constitutions shipped in
``alignlab/resources/constitutions``.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from alignlab.data.records import Message, Messages

BUILTIN = ("default", "gym")
ANTHROPIC_FILES = {"principles": "CritiqueRevisionInstructions.json",
                   "examples": "CritiqueRevisionFewShotPrompts.json",
                   "comparison": "RLMadisonInstructions.json",
                   "comparison_examples": "RLMadisonFewShotPrompts.json"}


class ConstitutionError(ValueError):
    """A constitution file is missing, malformed or lacks what a stage needs (names file and field)."""


@dataclass(frozen=True)
class Principle:
    """One critique -> revision principle."""

    name: str
    critique: str
    revision: str


@dataclass(frozen=True)
class RevisionExample:
    """A worked critique -> revision example (few-shot)."""

    conversation: Messages
    critique_request: str
    critique: str
    revision_request: str
    revision: str


@dataclass(frozen=True)
class ComparisonExample:
    """A worked multiple-choice example (few-shot): ``answer`` is "A" or "B"."""

    conversation: Messages
    principle: str
    options: tuple[str, str]
    answer: str


@dataclass(frozen=True)
class Constitution:
    """Principles, multiple-choice questions, the rating question and few-shot examples."""

    name: str
    principles: tuple[Principle, ...]
    comparison: tuple[str, ...]
    rating: str | None = None
    examples: tuple[RevisionExample, ...] = ()
    comparison_examples: tuple[ComparisonExample, ...] = ()
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def draw_principles(self, rng: random.Random, n: int) -> list[Principle]:
        """``n`` critique/revision principles drawn uniformly with replacement (CAI sec. 3.1)."""
        if not self.principles:
            raise ConstitutionError(f"{self.source}: no critique/revision principles")
        return [rng.choice(self.principles) for _ in range(n)]

    def draw_comparisons(self, rng: random.Random, n: int) -> list[str]:
        """``n`` distinct multiple-choice principles (all of them when ``n`` exceeds the count)."""
        if not self.comparison:
            raise ConstitutionError(f"{self.source}: no comparison principles")
        return rng.sample(list(self.comparison), min(n, len(self.comparison)))

    def rating_question(self) -> str:
        """The direct-RLAIF rating question; an error when the constitution has none."""
        if not self.rating:
            raise ConstitutionError(f"{self.source}: no 'rating' question (needed by the judge scorer)")
        return self.rating


# ----------------------------------------------------------------------------- loading


def load_constitution(spec: str) -> Constitution:
    """A constitution from ``"default"``, ``"gym"``, a YAML file, or a folder of Anthropic's JSON files."""
    if spec in BUILTIN:
        ref = resources.files("alignlab") / "resources" / "constitutions" / f"{spec}.yaml"
        with resources.as_file(ref) as path:
            return _from_yaml(path)
    path = Path(spec)
    if path.is_dir():
        return _from_anthropic_folder(path)
    if path.is_file() and path.suffix.lower() == ".json":
        return _from_anthropic_folder(path.parent, only=path.name)
    if path.is_file():
        return _from_yaml(path)
    raise ConstitutionError(f"constitution {spec!r}: not 'default', 'gym', a YAML file or a folder "
                            f"of Anthropic JSON files")


def _from_yaml(path: Path) -> Constitution:
    from alignlab.config import ConfigError, parse_yaml, read_text_file

    try:  # one line naming the file and line: bad bytes, YAML syntax, a key given twice
        raw = parse_yaml(read_text_file(path), str(path))
    except ConfigError as exc:
        raise ConstitutionError(str(exc)) from None
    if not isinstance(raw, dict):
        raise ConstitutionError(f"{path}: expected a mapping at the top level")
    known = {"name", "principles", "comparison", "rating", "examples", "comparison_examples"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConstitutionError(f"{path}: unknown field(s) {unknown}; expected some of {sorted(known)}")
    where = str(path)
    return Constitution(
        name=str(raw.get("name", path.stem)),
        principles=tuple(_principle(p, f"{where}: principles[{i}]")
                         for i, p in enumerate(_list(raw, "principles", where))),
        comparison=tuple(_text(c, f"{where}: comparison[{i}]")
                         for i, c in enumerate(_list(raw, "comparison", where))),
        rating=_text(raw["rating"], f"{where}: rating") if raw.get("rating") is not None else None,
        examples=tuple(_revision_example(e, f"{where}: examples[{i}]")
                       for i, e in enumerate(_list(raw, "examples", where))),
        comparison_examples=tuple(_comparison_example(e, f"{where}: comparison_examples[{i}]")
                                  for i, e in enumerate(_list(raw, "comparison_examples", where))),
        source=where)


def _list(raw: dict, key: str, where: str) -> list:
    value = raw.get(key) or []
    if not isinstance(value, list):
        raise ConstitutionError(f"{where}: {key} must be a list, got {type(value).__name__}")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConstitutionError(f"{where}: expected a non-empty string, got {value!r}")
    return value.strip()


def _principle(raw: Any, where: str) -> Principle:
    if not isinstance(raw, dict):
        raise ConstitutionError(f"{where}: expected a mapping with critique and revision")
    for key in ("critique", "revision"):
        if key not in raw:
            raise ConstitutionError(f"{where}: missing field {key!r}")
    return Principle(str(raw.get("name", "")), _text(raw["critique"], f"{where}.critique"),
                     _text(raw["revision"], f"{where}.revision"))


def _messages(raw: Any, where: str) -> Messages:
    if not isinstance(raw, list) or not raw:
        raise ConstitutionError(f"{where}: expected a non-empty list of {{role, content}} messages")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise ConstitutionError(f"{where}[{i}]: expected role system/user/assistant")
        out.append(Message(m["role"], _text(m.get("content"), f"{where}[{i}].content")))
    return tuple(out)


def _revision_example(raw: Any, where: str) -> RevisionExample:
    if not isinstance(raw, dict):
        raise ConstitutionError(f"{where}: expected a mapping")
    keys = ("critique_request", "critique", "revision_request", "revision")
    missing = [k for k in ("conversation",) + keys if k not in raw]
    if missing:
        raise ConstitutionError(f"{where}: missing field(s) {missing}")
    conv = _messages(raw["conversation"], f"{where}.conversation")
    if conv[-1].role != "assistant":
        raise ConstitutionError(f"{where}.conversation: must end with the assistant reply to critique")
    return RevisionExample(conv, *(_text(raw[k], f"{where}.{k}") for k in keys))


def _comparison_example(raw: Any, where: str) -> ComparisonExample:
    if not isinstance(raw, dict):
        raise ConstitutionError(f"{where}: expected a mapping")
    missing = [k for k in ("conversation", "principle", "options", "answer") if k not in raw]
    if missing:
        raise ConstitutionError(f"{where}: missing field(s) {missing}")
    options = raw["options"]
    if not isinstance(options, list) or len(options) != 2:
        raise ConstitutionError(f"{where}.options: expected exactly two replies")
    answer = str(raw["answer"]).strip().strip("()").upper()
    if answer not in ("A", "B"):
        raise ConstitutionError(f"{where}.answer: expected A or B, got {raw['answer']!r}")
    return ComparisonExample(_messages(raw["conversation"], f"{where}.conversation"),
                             _text(raw["principle"], f"{where}.principle"),
                             (_text(options[0], f"{where}.options[0]"),
                              _text(options[1], f"{where}.options[1]")), answer)


# ----------------------------------------------------------------------------- Anthropic's JSON files

_MARKERS = re.compile(r"\n\n(Human|Assistant|CritiqueRequest|Critique|RevisionRequest|Revision):")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes().decode("utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise ConstitutionError(f"{path}: line {exc.lineno}: not valid JSON: {exc.msg}") from None
    except UnicodeDecodeError as exc:
        raise ConstitutionError(f"{path}: not valid UTF-8 text (byte {exc.start})") from None


def _strip_marker(text: str, marker: str) -> str:
    """``"\\n\\nCritiqueRequest: Identify ...\\n\\nCritique:"`` -> ``"Identify ..."``."""
    text = text.strip()
    if text.startswith(f"{marker}:"):
        text = text[len(marker) + 1:]
    for tail in ("Critique:", "Revision:"):
        text = text.removesuffix(tail)
    return text.strip()


def _anthropic_principles(path: Path) -> tuple[Principle, ...]:
    raw = _read_json(path)
    if not isinstance(raw, dict):
        raise ConstitutionError(f"{path}: expected an object of {{name: {{prompt, edit_request}}}}")
    out = []
    for name, item in raw.items():
        if not isinstance(item, dict) or "prompt" not in item or "edit_request" not in item:
            raise ConstitutionError(f"{path}: {name}: expected fields 'prompt' and 'edit_request'")
        prompt = item["prompt"][0] if isinstance(item["prompt"], list) else item["prompt"]
        out.append(Principle(name, _strip_marker(_text(prompt, f"{path}: {name}.prompt"),
                                                 "CritiqueRequest"),
                             _strip_marker(_text(item["edit_request"], f"{path}: {name}.edit_request"),
                                           "RevisionRequest")))
    return tuple(out)


def parse_revision_transcript(text: str, where: str) -> RevisionExample:
    """One of Anthropic's few-shot strings (HH transcript, then CritiqueRequest/Critique/
    RevisionRequest/Revision sections) as a :class:`RevisionExample`."""
    parts = _MARKERS.split("\n\n" + text.strip() if not text.startswith("\n\n") else text)
    pairs = list(zip(parts[1::2], (p.strip() for p in parts[2::2])))
    first_section = next((i for i, (k, _) in enumerate(pairs) if k not in ("Human", "Assistant")),
                         len(pairs))
    turns = [Message("user" if k == "Human" else "assistant", v) for k, v in pairs[:first_section]
             if v]
    sections = {k: v for k, v in pairs if k not in ("Human", "Assistant")}
    missing = [k for k in ("CritiqueRequest", "Critique", "RevisionRequest", "Revision")
               if not sections.get(k)]
    if missing or not turns or turns[-1].role != "assistant":
        raise ConstitutionError(f"{where}: expected a transcript ending with an assistant turn and "
                                f"sections {missing or 'in order'}")
    return RevisionExample(tuple(turns), sections["CritiqueRequest"], sections["Critique"],
                           sections["RevisionRequest"], sections["Revision"])


def _anthropic_comparison_example(raw: Any, where: str, principle: str,
                                  correct_second: bool = False) -> ComparisonExample:
    """One of Anthropic's multiple-choice examples; ``correct_second`` lists the correct reply as (B)
    (the loader alternates, so few-shot examples do not all teach position A)."""
    if not isinstance(raw, dict) or not {"prompt", "corrects", "incorrects"} <= set(raw):
        raise ConstitutionError(f"{where}: expected fields prompt, corrects, incorrects")
    parts = _MARKERS.split(raw["prompt"])
    turns = tuple(Message("user" if k == "Human" else "assistant", v.strip())
                  for k, v in zip(parts[1::2], parts[2::2]) if v.strip())
    if not turns:
        raise ConstitutionError(f"{where}.prompt: no Human turn found")
    good = _text(raw["corrects"][0], f"{where}.corrects[0]")
    bad = _text(raw["incorrects"][0], f"{where}.incorrects[0]")
    if correct_second:
        return ComparisonExample(turns, principle, (bad, good), "B")
    return ComparisonExample(turns, principle, (good, bad), "A")


def _from_anthropic_folder(folder: Path, only: str | None = None) -> Constitution:
    files = {k: folder / v for k, v in ANTHROPIC_FILES.items()}
    if only is not None and only not in ANTHROPIC_FILES.values():
        raise ConstitutionError(f"{folder / only}: not one of Anthropic's files {sorted(ANTHROPIC_FILES.values())}")
    if not files["principles"].is_file() and not files["comparison"].is_file():
        raise ConstitutionError(f"{folder}: holds neither {ANTHROPIC_FILES['principles']} nor "
                                f"{ANTHROPIC_FILES['comparison']}")
    principles = _anthropic_principles(files["principles"]) if files["principles"].is_file() else ()
    comparison: tuple[str, ...] = ()
    if files["comparison"].is_file():
        raw = _read_json(files["comparison"])
        comparison = tuple(_strip_options(_text(c, f"{files['comparison']}[{i}]"))
                           for i, c in enumerate(raw))
    examples: tuple[RevisionExample, ...] = ()
    if files["examples"].is_file():
        examples = tuple(parse_revision_transcript(t, f"{files['examples']}[{i}]")
                         for i, t in enumerate(_read_json(files["examples"])))
    comparison_examples: tuple[ComparisonExample, ...] = ()
    if files["comparison_examples"].is_file() and comparison:
        comparison_examples = tuple(
            _anthropic_comparison_example(e, f"{files['comparison_examples']}[{i}]", comparison[0],
                                          correct_second=i % 2 == 1)
            for i, e in enumerate(_read_json(files["comparison_examples"])))
    return Constitution("anthropic-cai", principles, comparison, None, examples, comparison_examples,
                        source=str(folder))


def _strip_options(text: str) -> str:
    """Anthropic's multiple-choice principles end in "Options:"; alignlab adds the options itself."""
    text = text.strip()
    return text[: -len("Options:")].strip() if text.endswith("Options:") else text
