"""Generation with ``transformers``' ``model.generate`` (KV cache, left padding, batched sampling).

Prompts are rendered with the tokenizer's chat template (:func:`alignlab.data.tokenize.render_prompt`),
sorted by length (longest first) into batches of ``batch_size // num_samples`` prompts so that little
padding is wasted, generated, and returned in the original prompt order. ``temperature == 0`` is greedy
decoding (one decode per prompt, repeated ``num_samples`` times); otherwise multinomial sampling with ``temperature`` and nucleus ``top_p`` (top-k is off, and
no repetition penalty is applied, whatever the model's ``generation_config`` says). Generation stops at
eos (the tokenizer's and the model's) and at any ``stop`` string; the text is cut before the stop string
and ``token_ids`` are trimmed so that they decode to exactly the returned text.

Sampling is reproducible: the RNG is seeded with ``settings.seed`` inside ``torch.random.fork_rng`` so
the caller's global RNG state is left untouched. Sampled outputs depend on batch composition; greedy
outputs do not (up to floating-point ties). With ``seeds`` (one per prompt) each sample instead draws
from its own stream seeded by its prompt's seed and its sample number
(:mod:`alignlab.generation.seeded`): a prompt's samples are then the same in any batch and on any
process (up to floating-point ties), which multi-process online RL relies on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from alignlab.config import GenerationSettings
from alignlab.data.records import Messages
from alignlab.generation.base import Sample, cut_at_stop
from alignlab.progress import progress


def _default_render() -> Callable:
    from alignlab.data.tokenize import render_prompt

    return render_prompt


def encode_prompt_text(tokenizer, text: str) -> list[int]:
    """Token ids of a rendered prompt, exactly as training encodes prompts (bos added if missing)."""
    from alignlab.data.tokenize import prompt_ids

    return prompt_ids(tokenizer, text)


class HFGenerator:
    """Batched generation from a (possibly peft-wrapped) HF causal LM; see the module docstring."""

    def __init__(self, model, tokenizer, render_prompt: Callable | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.render = render_prompt or _default_render()
        if tokenizer.pad_token_id is None:
            raise ValueError("tokenizer has no pad token; load it with alignlab.models.loading")
        self.eos_ids = _eos_ids(model, tokenizer)

    def generate(self, prompts: Sequence[Messages], settings: GenerationSettings,
                 seeds: Sequence[int] | None = None) -> list[list[Sample]]:
        """``settings.num_samples`` samples for each prompt, in prompt order; ``seeds``: one
        sampling seed per prompt (see the module docstring)."""
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        encoded = [encode_prompt_text(self.tokenizer, self.render(self.tokenizer, p)) for p in prompts]
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        per_batch = max(1, settings.batch_size // settings.num_samples)
        results: list[list[Sample]] = [[] for _ in encoded]
        device = next(self.model.parameters()).device
        rng_devices = [device] if device.type == "cuda" else []
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.random.fork_rng(devices=rng_devices), torch.no_grad(), \
                    progress(len(order), "generating") as bar:
                torch.manual_seed(settings.seed)
                for start in range(0, len(order), per_batch):
                    chosen = order[start:start + per_batch]
                    rows = self._generate_batch([encoded[i] for i in chosen], settings, device,
                                                None if seeds is None else [seeds[i] for i in chosen])
                    n = settings.num_samples
                    for j, i in enumerate(chosen):
                        results[i] = rows[j * n:(j + 1) * n]
                    bar.advance(len(chosen))
        finally:
            self.model.train(was_training)
        return results

    def _generate_batch(self, prompt_ids: list[list[int]], settings: GenerationSettings,
                        device, seeds: Sequence[int] | None = None) -> list[Sample]:
        """Left-pad one batch, run ``model.generate`` and turn each output row into a Sample."""
        input_ids, attention_mask = left_pad(prompt_ids, self.tokenizer.pad_token_id)
        seeded = seeds is not None and settings.temperature > 0
        config = self._generation_config(settings, seeded)
        extra = {"tokenizer": self.tokenizer} if settings.stop else {}
        if seeded:
            input_ids, attention_mask, extra["logits_processor"] = seeded_inputs(
                input_ids, attention_mask, seeds, settings)
        output = self.model.generate(input_ids=input_ids.to(device),
                                     attention_mask=attention_mask.to(device),
                                     generation_config=config, **extra)
        new_tokens = output[:, input_ids.shape[1]:].tolist()
        samples = [self._to_sample(row, settings.stop) for row in new_tokens]
        if settings.temperature == 0:  # greedy: one decode per prompt, repeated num_samples times
            samples = [s for s in samples for _ in range(settings.num_samples)]
        return samples

    def _generation_config(self, settings: GenerationSettings, seeded: bool = False):
        """``seeded``: greedy decoding over one row per sample, the sampling done by
        :class:`~alignlab.generation.seeded.SeededSampling`."""
        from transformers import GenerationConfig

        sampling = settings.temperature > 0 and not seeded
        kwargs = {"max_new_tokens": settings.max_new_tokens, "do_sample": sampling, "num_beams": 1,
                  "num_return_sequences": settings.num_samples if sampling else 1,
                  "use_cache": True, "pad_token_id": self.tokenizer.pad_token_id,
                  "eos_token_id": list(self.eos_ids), "repetition_penalty": 1.0}
        if sampling:
            kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=0)
        if settings.stop:
            kwargs["stop_strings"] = list(settings.stop)
        return GenerationConfig(**kwargs)

    def _to_sample(self, ids: list[int], stops: Sequence[str]) -> Sample:
        """Cut at eos/padding, then before the earliest stop string (keeping ids and text in step)."""
        ends = set(self.eos_ids) | {self.tokenizer.pad_token_id}
        reason = "length"
        for k, token in enumerate(ids):
            if token in ends:
                reason = "eos" if token in self.eos_ids else "stop"
                ids = ids[:k]
                break
        return cut_at_stop(self._decode, ids, reason, stops)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def seeded_inputs(input_ids: torch.Tensor, attention_mask: torch.Tensor, seeds: Sequence[int],
                  settings: GenerationSettings):
    """Each prompt row repeated ``num_samples`` times, and the logits processor that samples row
    (prompt i, sample j) from the stream of ``seeds[i]`` and j."""
    from transformers import LogitsProcessorList

    from alignlab.generation.seeded import RowStreams, SeededSampling

    n = settings.num_samples
    streams = RowStreams.for_prompts(seeds, n, settings.max_new_tokens)
    processor = SeededSampling(streams, settings.temperature, settings.top_p)
    return (input_ids.repeat_interleave(n, 0), attention_mask.repeat_interleave(n, 0),
            LogitsProcessorList([processor]))


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` with every row right-aligned (padding on the left)."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            input_ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, width - len(row):] = 1
    return input_ids, attention_mask


def _eos_ids(model, tokenizer) -> tuple[int, ...]:
    """Every eos id the tokenizer or the model's generation config names."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos:
        ids.update(int(i) for i in gen_eos)
    return tuple(sorted(ids))
