"""Sampling from the token-level geometric mixture of a policy and a reference (Nash-MD).

Munos et al. 2023 ("Nash Learning from Human Feedback", §6, eq. 8) regularise the opponent with the
geometric mixture

    π^β_mix(y | x) ∝ π(y | x)^(1−β) · μ(y | x)^β

and, for language models, sample it token by token (§7, "Nash-MD-PG"): at each step the next-token
distribution is ``softmax((1−β)·log π(·|prefix) + β·log μ(·|prefix))``. β = 0 samples the policy, β = 1
the reference. Departure from the paper: the per-token mixture is a cheaper stand-in for the
sequence-level mixture (the paper uses it in its experiments too; the two differ because per-token
normalisation does not compose into the sequence-level one).

:class:`MixtureGenerator` runs both models with their own KV caches in one decoding loop; the
reference is a separate frozen model or, for a LoRA policy, the policy with its adapter disabled.
Temperature and nucleus ``top_p`` apply to the mixed distribution. Prompt encoding, batching, seeding
and the cut at eos/stop strings are :class:`~alignlab.generation.hf.HFGenerator`'s.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from contextlib import nullcontext

import torch

from alignlab.config import GenerationSettings
from alignlab.generation.base import Sample
from alignlab.generation.hf import HFGenerator, left_pad
from alignlab.generation.seeded import RowStreams, top_p_filter, warp
from alignlab.models.reference import adapter_disabled


def mixture_logprobs(policy_logits: torch.Tensor, reference_logits: torch.Tensor,
                     coef: float) -> torch.Tensor:
    """Next-token log-probs of the geometric mixture: ``log_softmax((1−β) log π + β log μ)``
    (Munos et al. 2023, eq. 8, per token) with ``β = coef``."""
    if not 0.0 <= coef <= 1.0:
        raise ValueError(f"mixture coefficient must be in [0, 1], got {coef}")
    if coef == 0.0:
        return torch.log_softmax(policy_logits.float(), -1)
    if coef == 1.0:
        return torch.log_softmax(reference_logits.float(), -1)
    mixed = ((1.0 - coef) * torch.log_softmax(policy_logits.float(), -1)
             + coef * torch.log_softmax(reference_logits.float(), -1))
    return torch.log_softmax(mixed, -1)


class _Stream:
    """One model decoding with its own KV cache (optionally with its LoRA adapter disabled)."""

    def __init__(self, model, disable_adapter: bool):
        self.model = model
        self.disable_adapter = disable_adapter
        self.cache = None
        self.cache_key = _cache_argument(model)

    def step(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits at the last position after feeding ``input_ids`` (all new since the last call)."""
        positions = (attention_mask.cumsum(1) - 1).clamp(min=0)[:, -input_ids.shape[1]:]
        context = adapter_disabled(self.model) if self.disable_adapter else nullcontext()
        with context:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                             position_ids=positions, use_cache=True, **{self.cache_key: self.cache})
        self.cache = getattr(out, self.cache_key)
        return out.logits[:, -1]


def _cache_argument(model) -> str:
    """The KV-cache argument and output name: ``cache`` (transformers >= 5.2x) or
    ``past_key_values`` (earlier releases)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"


class MixtureGenerator(HFGenerator):
    """Samples of the geometric mixture of ``model`` (the policy) and ``reference`` with
    coefficient ``coef`` (see the module docstring). ``reference=None`` means the policy's own
    LoRA base (adapter disabled). ``coef`` may be changed between calls (a schedule)."""

    def __init__(self, model, tokenizer, reference=None, coef: float = 0.5,
                 render_prompt: Callable | None = None):
        super().__init__(model, tokenizer, render_prompt)
        self.reference = reference
        self.coef = coef

    def _streams(self) -> tuple[_Stream | None, _Stream | None]:
        policy = None if self.coef == 1.0 else _Stream(self.model, False)
        if self.coef == 0.0:
            return policy, None
        if self.reference is None:
            return policy, _Stream(self.model, True)
        return policy, _Stream(self.reference, False)

    def _generate_batch(self, prompt_ids: list[list[int]], settings: GenerationSettings,
                        device, seeds=None) -> list[Sample]:
        n = settings.num_samples if settings.temperature > 0 else 1
        streams = (RowStreams.for_prompts(seeds, n, settings.max_new_tokens)
                   if seeds is not None and settings.temperature > 0 else None)
        input_ids, attention_mask = left_pad(prompt_ids, self.tokenizer.pad_token_id)
        input_ids = input_ids.repeat_interleave(n, 0).to(device)
        attention_mask = attention_mask.repeat_interleave(n, 0).to(device)
        tokens = self._decode_loop(input_ids, attention_mask, settings, streams)
        samples = [self._to_sample(row, settings.stop) for row in tokens.tolist()]
        if settings.temperature == 0:
            samples = [s for s in samples for _ in range(settings.num_samples)]
        return samples

    def _decode_loop(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     settings: GenerationSettings, streams: RowStreams | None = None) -> torch.Tensor:
        """``[B, ≤ max_new_tokens]`` new tokens (eos, then padding, after a row finishes);
        ``streams``: one random stream per row (per-prompt seeds) instead of the global RNG."""
        policy, reference = self._streams()
        eos = torch.tensor(self.eos_ids, device=input_ids.device)
        pad = self.tokenizer.pad_token_id
        done = torch.zeros(len(input_ids), dtype=torch.bool, device=input_ids.device)
        new, feed = [], input_ids
        for _ in range(settings.max_new_tokens):
            lp = policy.step(feed, attention_mask) if policy else None
            lr = reference.step(feed, attention_mask) if reference else None
            logprobs = mixture_logprobs(lp if lp is not None else lr,
                                        lr if lr is not None else lp, self.coef)
            token = _pick(logprobs, settings, streams)
            token = torch.where(done, torch.full_like(token, pad), token)
            new.append(token)
            done = done | torch.isin(token, eos)
            if bool(done.all()):
                break
            feed = token[:, None]
            attention_mask = torch.cat([attention_mask, (~done).long()[:, None]], 1)
        return torch.stack(new, 1)


def _pick(logprobs: torch.Tensor, settings: GenerationSettings,
          streams: RowStreams | None = None) -> torch.Tensor:
    """Greedy at temperature 0; else a sample of ``softmax(logprobs / T)`` after top-p, from each
    row's own stream when ``streams`` is given."""
    if settings.temperature == 0:
        return logprobs.argmax(-1)
    if streams is not None:
        return streams.sample(warp(logprobs, settings.temperature, settings.top_p))
    scaled = torch.log_softmax(logprobs / settings.temperature, -1)
    return torch.multinomial(top_p_filter(scaled, settings.top_p).exp(), 1).squeeze(1)

