"""Judges: feedback models behind one interface.

A *text judge* reads a rendered text that ends where its answer begins and returns, for each text,
the probability of each option string as the continuation, normalised over the options, from ONE
forward pass (no sampling); it can also continue a text (chain-of-thought rationales):

* :class:`LocalJudge` — a local causal LM (Hugging Face);
* :class:`alignlab.feedback.http.HTTPJudge` — an OpenAI-compatible ``/v1/completions`` endpoint that
  returns log-probs (e.g. a vLLM server).

:class:`RewardModelJudge` is a *pair judge*: P(first preferred) = sigmoid(r(first) - r(second))
(the Bradley–Terry model the reward model was trained with); it has no text interface.

Option probabilities (Bai et al. 2022, "Constitutional AI", sec. 4.1; Lee et al. 2024, "RLAIF vs.
RLHF", sec. 2.1): p_i = P(option_i | text) / sum_j P(option_j | text). Options that share leading
tokens (" (A)" / " (B)" start with the same " (" token in many BPE vocabularies) are handled exactly:
the shared tokens are appended to the context and the first token that tells the options apart is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch


class TextJudge(Protocol):
    """A judge that reads option probabilities from text (local LM or HTTP endpoint)."""

    name: str
    tokenizer: object | None

    def option_probs(self, texts: Sequence[str], options: Sequence[str]) -> list[list[float]]:
        """Normalised option probabilities for each text (one forward, no sampling)."""
        ...

    def continue_texts(self, texts: Sequence[str], max_new_tokens: int, temperature: float,
                       seed: int) -> list[str]:
        """A continuation of each text (chain-of-thought rationales)."""
        ...


# ----------------------------------------------------------------------------- option tokens


def option_branch(tokenizer, text: str, options: Sequence[str]) -> tuple[list[int], list[int]]:
    """``(context_ids, option_ids)``: the ids shared by every ``text + option`` and, for each option,
    its first token after them. Errors when two options cannot be told apart by one token."""
    from alignlab.data.tokenize import prompt_ids

    encoded = [prompt_ids(tokenizer, text + option) for option in options]
    n = min(len(e) for e in encoded)  # the encodings differ near their ends: compare whole slices
    while any(e[:n] != encoded[0][:n] for e in encoded[1:]):
        n -= 1
    if any(len(e) <= n for e in encoded):
        raise ValueError(f"option {options!r}: one option is a token prefix of another")
    ids = [e[n] for e in encoded]
    if len(set(ids)) != len(ids):
        raise ValueError(f"options {options!r} do not differ in their first distinguishing token")
    return encoded[0][:n], ids


def read_option_probs(model, rows: Sequence[tuple[list[int], list[int]]], pad_id: int,
                      batch_size: int, share_prefix: bool = True) -> tuple[list[list[float]], list[float]]:
    """Normalised option probabilities and the raw option mass for each ``(context, option_ids)``.

    The mass (sum of the options' unnormalised probabilities) shows how much the model is answering
    the question at all; the labeler reports its mean. At most ``batch_size`` contexts go through
    the model per forward. Contexts that share a token prefix (both option orders, several
    principles) run it once (:func:`alignlab.models.prefix_groups.last_token_logprobs`); models
    whose attention takes no custom mask, or ``share_prefix=False``, run one left-padded row per
    context.
    """
    from alignlab.models.prefix_groups import last_token_logprobs
    from alignlab.models.shared_prefix import can_share_prefix

    if not rows:
        return [], []
    if share_prefix and can_share_prefix(model):
        picked = last_token_logprobs(model, [r[0] for r in rows], [r[1] for r in rows], batch_size)
    else:
        picked = _option_logprobs_per_context(model, rows, pad_id, batch_size)
    return torch.softmax(picked, -1).tolist(), picked.exp().sum(-1).tolist()


def _option_logprobs_per_context(model, rows: Sequence[tuple[list[int], list[int]]], pad_id: int,
                                 batch_size: int) -> torch.Tensor:
    """``[N, K]`` option log-probs with one left-padded row per context (no prefix sharing)."""
    from alignlab.generation.hf import left_pad
    from alignlab.models.logprobs import default_position_ids
    from alignlab.models.reference import eval_mode, model_device

    device = model_device(model)
    picked = torch.empty(len(rows), len(rows[0][1]), dtype=torch.float32)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))  # little padding per batch
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        ids, attn = left_pad([rows[i][0] for i in chunk], pad_id)
        with torch.no_grad(), eval_mode(model):  # logits of the last position only
            logits = model(input_ids=ids.to(device), attention_mask=attn.to(device),
                           position_ids=default_position_ids(attn).to(device),
                           logits_to_keep=1).logits[:, -1].float()
        logp = torch.log_softmax(logits, -1)
        picked[chunk] = torch.stack([logp[j, torch.tensor(rows[i][1], device=device)]
                                     for j, i in enumerate(chunk)]).cpu()
    return picked


# ----------------------------------------------------------------------------- judges


class LocalJudge:
    """A local causal LM as a judge (see the module docstring). Contexts longer than ``max_length``
    keep their last ``max_length`` tokens (the question and options are at the end). Contexts that
    share a head run it once (:func:`read_option_probs`); ``share_prefix=False`` reads each context
    in its own row (the layout before prefix sharing, kept for benchmarks)."""

    def __init__(self, model, tokenizer, batch_size: int = 16, max_length: int = 1024,
                 name: str = "local_judge", share_prefix: bool = True):
        self.model, self.tokenizer, self.share_prefix = model, tokenizer, share_prefix
        self.batch_size, self.max_length, self.name = batch_size, max_length, name
        self.last_mass: list[float] = []
        self.truncated = 0  # queries whose context lost its start to max_length (running count)

    def option_probs(self, texts: Sequence[str], options: Sequence[str]) -> list[list[float]]:
        rows = []
        for text in texts:
            context, ids = option_branch(self.tokenizer, text, options)
            self.truncated += len(context) > self.max_length
            rows.append((context[-self.max_length:], ids))
        probs, self.last_mass = read_option_probs(self.model, rows, self.tokenizer.pad_token_id,
                                                  self.batch_size, self.share_prefix)
        return probs

    def continue_texts(self, texts: Sequence[str], max_new_tokens: int, temperature: float,
                       seed: int) -> list[str]:
        from alignlab.config import GenerationSettings
        from alignlab.generation.hf import HFGenerator

        generator = HFGenerator(self.model, self.tokenizer, render_prompt=lambda _tok, text: text)
        settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature,
                                      batch_size=self.batch_size, seed=seed)
        return [samples[0].text for samples in generator.generate(list(texts), settings)]


class RewardModelJudge:
    """A reward model as a pair judge: P(first preferred) = sigmoid(r(first) - r(second))."""

    def __init__(self, scorer, name: str = "reward_model_judge"):
        self.scorer, self.name = scorer, name

    def pair_probs(self, prompts, firsts: Sequence[str], seconds: Sequence[str]) -> list[float]:
        """P(first ≻ second) for each pair under the reward model's Bradley–Terry model."""
        r1 = torch.tensor(self.scorer.score(list(prompts), list(firsts)))
        r2 = torch.tensor(self.scorer.score(list(prompts), list(seconds)))
        return torch.sigmoid(r1 - r2).tolist()


def build_judge(settings, device=None):
    """A judge from :class:`alignlab.config.JudgeSettings`."""
    from alignlab.models.loading import load_causal_lm

    if settings.kind == "local":
        model, tokenizer = load_causal_lm(settings.model, for_training=False)
        if device is not None:
            model.to(device)
        return LocalJudge(model, tokenizer, settings.batch_size, settings.max_length)
    if settings.kind == "reward_model":
        from alignlab.eval.winrate import load_reward_judge

        return RewardModelJudge(load_reward_judge(settings.model.path, settings.batch_size,
                                                  device or torch.device("cpu"), "reward_model"))
    from alignlab.feedback.http import HTTPJudge
    from alignlab.models.loading import load_tokenizer, resolve_model_source

    judge = HTTPJudge(settings)
    if settings.model is not None:  # render with the served model's chat template
        source, extra = resolve_model_source(settings.model)
        judge.tokenizer = load_tokenizer(source, settings.model, extra)
    return judge
