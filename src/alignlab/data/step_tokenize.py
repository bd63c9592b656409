"""Encode a step solution as ONE sequence with the token position at which each step is scored.

A process reward model reads one score per step at the step's last token (Lightman et al. 2023,
sec. 2.6; Wang et al. 2024, Math-Shepherd, read it at a tag token after the step). All steps of a
solution are scored by a single forward over ``prompt + completion``, never one forward per step.

The completion is the steps joined by ``separator`` (default a newline), each step followed by
``tag`` when one is configured (e.g. Math-Shepherd's ``" ки"`` or a special token); it is rendered as
the assistant turn exactly as every other stage renders completions
(:func:`alignlab.data.tokenize.render_completion`), tokenised once with character offsets, and each
step is scored at the token that holds its last character (the tag's last character when tagged).
Training, verification and the online PRM reward all use this one function, so a PRM is read at the
positions it was trained at.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from alignlab.data.records import Messages
from alignlab.data.tokenize import (
    _prompt_budget,
    prompt_ids,
    render_completion,
    render_prompt,
    truncate_prompt,
)


@dataclass(frozen=True)
class EncodedSteps:
    """``input_ids`` of prompt + completion, ``completion_start`` (index of the first completion
    token) and ``positions``: for each step that fits, the index of the token it is scored at.
    ``dropped``: steps cut off by ``max_length`` (their scores are missing)."""

    input_ids: list[int]
    completion_start: int
    positions: list[int]
    dropped: int = 0


def join_steps(steps: Sequence[str], separator: str = "\n", tag: str | None = None
               ) -> tuple[str, list[int]]:
    """The completion text and the character offset just past each step (after its tag)."""
    text, ends = "", []
    for i, step in enumerate(steps):
        if i:
            text += separator
        text += step + (tag or "")
        ends.append(len(text))
    return text, ends


def step_spans(text: str, separator: str = "\n", tag: str | None = None
               ) -> list[tuple[str, int]]:
    """``(step, end)`` for each step of ``text``: the pieces between separators, stripped, with the
    tag removed from their end; blank pieces are not steps. ``end`` is the character offset just
    past the piece's last non-blank character (its tag included): where the step's score or reward
    belongs."""
    spans, start = [], 0
    mark = tag.strip() if tag else ""
    for piece in text.split(separator):
        body = piece.rstrip()
        step = body[: -len(mark)] if mark and body.endswith(mark) else body
        if step.strip():
            spans.append((step.strip(), start + len(body)))
        start += len(piece) + len(separator)
    return spans


def split_steps(text: str, separator: str = "\n", tag: str | None = None) -> list[str]:
    """The steps of a generated completion (:func:`step_spans`); the inverse of
    :func:`join_steps` for non-blank steps."""
    return [step for step, _ in step_spans(text, separator, tag)]


def step_char_ends(text: str, separator: str = "\n", tag: str | None = None) -> list[int]:
    """The character offset just past each step of ``text`` (:func:`step_spans`)."""
    return [end for _, end in step_spans(text, separator, tag)]


def covering_token(offsets: Sequence[tuple[int, int]], char: int) -> int:
    """Index of the token whose character span holds ``char`` (the last token starting at or
    before it, when spans have gaps, e.g. byte-level merges)."""
    best = 0
    for index, (start, end) in enumerate(offsets):
        if start <= char < end:
            return index
        if start <= char and end > start:
            best = index
    return best


def encode_steps(tokenizer: Any, prompt: Messages, steps: Sequence[str], max_length: int,
                 max_prompt_length: int, separator: str = "\n", tag: str | None = None
                 ) -> EncodedSteps:
    """Encode ``steps`` after ``prompt`` (module docstring). The prompt keeps its last
    ``max_prompt_length`` tokens; the completion is cut on the right to fit ``max_length`` and steps
    whose scoring token is cut are counted in ``dropped``."""
    head_text = render_prompt(tokenizer, prompt)
    head = truncate_prompt(prompt_ids(tokenizer, head_text),
                           _prompt_budget(max_length, max_prompt_length),
                           getattr(tokenizer, "bos_token_id", None))
    text, ends = join_steps(steps, separator, tag)
    rendered = render_completion(tokenizer, prompt, text, rendered_prompt=head_text)
    shift = rendered.find(text)
    if shift < 0:
        raise ValueError("the chat template changed the completion text; cannot locate the steps")
    encoded = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    eos, eos_id = getattr(tokenizer, "eos_token", None), getattr(tokenizer, "eos_token_id", None)
    if eos_id is not None and eos and not rendered.rstrip().endswith(eos):  # as completion_ids
        ids.append(eos_id)
    positions = [covering_token(encoded["offset_mapping"], shift + end - 1) for end in ends]
    room = max_length - len(head)
    kept = [len(head) + p for p in positions if p < room]
    return EncodedSteps(head + ids[:room], len(head), kept, len(positions) - len(kept))


def step_token_ends(tokenizer: Any, token_ids: Sequence[int], step_char_ends: Sequence[int]
                    ) -> list[int]:
    """For text generated as ``token_ids``: the index of the token that completes each character
    offset in ``step_char_ends`` (the first token whose decoded prefix reaches it). Offsets past the
    decoded text map to the last token. Used to place per-step rewards on sampled tokens."""
    out, lengths, j = [], [], 0
    for end in step_char_ends:  # decode prefixes only as far as the steps need
        while j < len(token_ids) - 1 and _prefix_length(tokenizer, token_ids, lengths, j) < end:
            j += 1
        out.append(j)
    return out


def _prefix_length(tokenizer: Any, token_ids: Sequence[int], lengths: list[int], k: int) -> int:
    """Length of the decoded ``token_ids[: k + 1]``, decoded once and kept in ``lengths``."""
    while len(lengths) <= k:
        lengths.append(len(tokenizer.decode(list(token_ids[: len(lengths) + 1]),
                                            skip_special_tokens=True)))
    return lengths[k]
