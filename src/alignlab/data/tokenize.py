"""Render records with the tokenizer's chat template, tokenise them and mark the training targets.

Rendering. With a ``chat_template`` the prompt is ``apply_chat_template(messages, tokenize=False,
add_generation_prompt=True)``. Without one, the HH fallback format is used (the format of Anthropic's
HH-RLHF and of the alignment gym)::

    {system}\\n\\nHuman: {user}\\n\\nAssistant: {assistant}\\n\\nHuman: {user}\\n\\nAssistant:

(a system message is a leading plain paragraph; an empty assistant turn renders as
``\\n\\nAssistant:``). A completion's text is what rendering the whole conversation adds after the
rendered prompt (so template end-of-turn markers are part of the target); when the rendered prompt
is not a string prefix of the rendered conversation, the completion falls back to ``" " + content``
(HH fallback) or ``content`` (template).

Tokenisation. Prompt and completion are tokenised separately with ``add_special_tokens=False``. A
bos token is prepended to the prompt when the tokenizer has one and the rendered prompt does not
already start with it. An eos token is appended to the completion unless the rendered completion
already ends with the eos text (trailing whitespace ignored, e.g. ``<|im_end|>\\n``) or the tokenizer
has no eos. Prompt tokens are masked (``loss_mask`` 0); completion tokens are targets (1).

Truncation policy (see ``TrainSettings``): the prompt keeps its last ``max_prompt_length`` tokens
(oldest turns go first); a leading bos survives truncation and counts towards that budget. The prompt
budget is also capped at ``max_length - 1`` so at least one completion token fits. The completion is
then cut on the right so that prompt + completion ≤ ``max_length``; the eos may be cut off then.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from alignlab.data.records import Conversation, Message, Messages, PreferencePair, messages_to_list


@dataclass
class Encoded:
    """Token ids and the target mask (``loss_mask[t] == 1``: token t is a target).

    ``position_ids`` is set only for packed sequences (see :mod:`alignlab.data.packing`).
    """

    input_ids: list[int]
    loss_mask: list[int]
    position_ids: list[int] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class EncodedPair:
    """A preference pair encoded as two sequences sharing the prompt; ``label`` = P(chosen preferred)."""

    chosen: Encoded
    rejected: Encoded
    label: float = 1.0


# ----------------------------------------------------------------------------- rendering


def has_chat_template(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` carries a chat template (otherwise the HH fallback is used)."""
    return bool(getattr(tokenizer, "chat_template", None))


def render_hh(messages: Sequence[Message], add_generation_prompt: bool) -> str:
    """The HH fallback rendering (see the module docstring)."""
    parts = []
    for i, m in enumerate(messages):
        if m.role == "system":
            parts.append(m.content if i == 0 else f"\n\n{m.content}")
        elif m.role == "user":
            parts.append(f"\n\nHuman: {m.content}")
        else:
            parts.append(f"\n\nAssistant: {m.content}" if m.content else "\n\nAssistant:")
    if add_generation_prompt:
        parts.append("\n\nAssistant:")
    return "".join(parts)


def _render(tokenizer: Any, messages: Sequence[Message], add_generation_prompt: bool) -> str:
    if not has_chat_template(tokenizer):
        return render_hh(messages, add_generation_prompt)
    return tokenizer.apply_chat_template(messages_to_list(tuple(messages)), tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def render_prompt(tokenizer: Any, messages: Messages) -> str:
    """The prompt text with the generation prompt (chat template, or the HH fallback)."""
    return _render(tokenizer, messages, add_generation_prompt=True)


def render_completion(tokenizer: Any, prompt: Messages, completion: str,
                      rendered_prompt: str | None = None) -> str:
    """The text the assistant turn ``completion`` adds after the rendered prompt (module docstring)."""
    head = render_prompt(tokenizer, prompt) if rendered_prompt is None else rendered_prompt
    full = _render(tokenizer, tuple(prompt) + (Message("assistant", completion),), False)
    if full.startswith(head):
        return full[len(head):]
    if not has_chat_template(tokenizer):
        return f" {completion}" if completion else ""
    return completion


# ----------------------------------------------------------------------------- token ids


def text_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without any special tokens added by the tokenizer call."""
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def prompt_ids(tokenizer: Any, rendered: str) -> list[int]:
    """Ids of a rendered prompt, with bos prepended when the tokenizer has one and it is missing."""
    ids = text_ids(tokenizer, rendered)
    bos, bos_id = getattr(tokenizer, "bos_token", None), getattr(tokenizer, "bos_token_id", None)
    if bos_id is not None and bos and not rendered.startswith(bos):
        ids = [bos_id] + ids
    return ids


def completion_ids(tokenizer: Any, rendered: str, add_eos: bool = True) -> list[int]:
    """Ids of a rendered completion, with eos appended unless the text already ends with it."""
    ids = text_ids(tokenizer, rendered)
    eos, eos_id = getattr(tokenizer, "eos_token", None), getattr(tokenizer, "eos_token_id", None)
    if add_eos and eos_id is not None and eos and not rendered.rstrip().endswith(eos):
        ids = ids + [eos_id]
    return ids


def truncate_prompt(ids: list[int], max_prompt_length: int, bos_id: int | None) -> list[int]:
    """The last ``max_prompt_length`` prompt tokens; a leading bos is kept (and counted)."""
    if len(ids) <= max_prompt_length:
        return ids
    if bos_id is not None and ids[0] == bos_id and max_prompt_length > 1:
        return [ids[0]] + ids[len(ids) - (max_prompt_length - 1):]
    return ids[len(ids) - max_prompt_length:]


def _prompt_budget(max_length: int, max_prompt_length: int) -> int:
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    return min(max_prompt_length, max_length - 1)


def join_truncated(prompt: list[int], completion: list[int], tokenizer: Any, max_length: int,
                   max_prompt_length: int) -> Encoded:
    """Apply the truncation policy and build the masked sequence."""
    budget = _prompt_budget(max_length, max_prompt_length)
    prompt = truncate_prompt(prompt, budget, getattr(tokenizer, "bos_token_id", None))
    completion = completion[: max_length - len(prompt)]
    return Encoded(prompt + completion, [0] * len(prompt) + [1] * len(completion))


# ----------------------------------------------------------------------------- encoders


def encode_completion(tokenizer: Any, prompt: Messages, completion: str, max_length: int,
                      max_prompt_length: int) -> Encoded:
    """``prompt`` (masked) followed by the assistant reply ``completion`` (targets), truncated."""
    head = render_prompt(tokenizer, prompt)
    tail = render_completion(tokenizer, prompt, completion, rendered_prompt=head)
    return join_truncated(prompt_ids(tokenizer, head), completion_ids(tokenizer, tail), tokenizer,
                          max_length, max_prompt_length)


def encode_pair(tokenizer: Any, pair: PreferencePair, max_length: int,
                max_prompt_length: int) -> EncodedPair:
    """Chosen and rejected sequences of one pair, each encoded by :func:`encode_completion`."""
    chosen = encode_completion(tokenizer, pair.prompt, pair.chosen, max_length, max_prompt_length)
    rejected = encode_completion(tokenizer, pair.prompt, pair.rejected, max_length,
                                 max_prompt_length)
    return EncodedPair(chosen, rejected, float(pair.label))


def encode_prompt(tokenizer: Any, messages: Messages, max_prompt_length: int) -> list[int]:
    """Prompt ids for generation: rendered with the generation prompt, bos added, left-truncated."""
    ids = prompt_ids(tokenizer, render_prompt(tokenizer, messages))
    return truncate_prompt(ids, max_prompt_length, getattr(tokenizer, "bos_token_id", None))


def conversation_segments(tokenizer: Any, messages: Messages) -> list[tuple[str, bool]]:
    """``(text, is_target)`` pieces of a conversation rendered turn by turn.

    For each assistant turn i: the text turn i's prompt (``messages[:i]`` with the generation prompt)
    adds to what was rendered so far (not a target), then its completion text (a target). Messages
    after the last assistant turn are dropped (nothing in them is trained on). The template must
    render each prefix as an extension of the previous one; otherwise a ValueError says so.
    """
    pieces: list[tuple[str, bool]] = []
    rendered = ""
    for i, message in enumerate(messages):
        if message.role != "assistant":
            continue
        head = render_prompt(tokenizer, messages[:i])
        if not head.startswith(rendered):
            raise ValueError(f"the chat template does not render the conversation up to turn {i} as "
                             "an extension of the earlier turns, so multi-turn targets cannot be "
                             "masked; train on the last turn only (use pairs or single completions)")
        tail = render_completion(tokenizer, messages[:i], message.content, rendered_prompt=head)
        pieces += [(head[len(rendered):], False), (tail, True)]
        rendered = head + tail
    if not pieces:
        raise ValueError("the conversation has no assistant turn to train on")
    return pieces


def encode_conversation(tokenizer: Any, conversation: Conversation, max_length: int,
                        max_prompt_length: int) -> Encoded:
    """Every assistant turn is a target, every other token is masked.

    Truncation: the tokens before the first assistant turn are the prompt and keep their last
    ``max_prompt_length`` tokens; the whole sequence is then cut on the right at ``max_length``.
    The eos is appended after the final assistant turn only (template end-of-turn markers inside
    earlier completions are targets; the HH fallback has none, matching how it renders prompts).
    """
    pieces = conversation_segments(tokenizer, conversation.messages)
    last_target = max(i for i, (_, is_target) in enumerate(pieces) if is_target)
    prompt = prompt_ids(tokenizer, pieces[0][0])
    ids: list[int] = []
    mask: list[int] = []
    for i, (text, is_target) in enumerate(pieces[1:], start=1):
        if is_target:
            piece = completion_ids(tokenizer, text, add_eos=i == last_target)
        else:
            piece = text_ids(tokenizer, text)
        ids += piece
        mask += [int(is_target)] * len(piece)
    prompt = truncate_prompt(prompt, _prompt_budget(max_length, max_prompt_length),
                             getattr(tokenizer, "bos_token_id", None))
    room = max_length - len(prompt)
    return Encoded(prompt + ids[:room], [0] * len(prompt) + mask[:room])
