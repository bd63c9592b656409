"""Sampling with one random stream per generated row.

``model.generate`` draws every row of a batch from one global RNG, so a row's tokens depend on which
other rows share its batch (and, with several processes, on which process generated it). Here each
row has its own ``torch.Generator``, seeded from its prompt's seed and its sample number
(:func:`stream_seed`), which draws the row's uniforms for every decoding step up front; step t
uses the t-th, so row r's t-th token is a function of its own seed and the model's probabilities
only (drawing them up front keeps the per-step cost to one indexing, about 3 % of a decoding step
on the gym policy when drawn step by step). The token is read from the inverse
CDF of the row's (temperature-scaled, nucleus-filtered) distribution. Batch composition can still
change a token through floating-point differences in the logits, when a draw lands within rounding
of a CDF boundary (a probability of the order of 1e-7 per token in float32).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

_SEED_SPACE = 2 ** 63


def stream_seed(*parts: object) -> int:
    """A seed in [0, 2**63) hashed from ``parts`` (e.g. run seed, iteration, prompt position)."""
    digest = hashlib.blake2b("/".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % _SEED_SPACE


def top_p_filter(logprobs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering (Holtzman et al. 2020): keep the smallest set of most likely tokens whose
    probability reaches ``top_p`` (always at least the top token); the rest get −inf."""
    if top_p >= 1.0:
        return logprobs
    sorted_lp, order = logprobs.sort(-1, descending=True)
    before = sorted_lp.exp().cumsum(-1) - sorted_lp.exp()
    drop_sorted = before >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logprobs.masked_fill(drop, float("-inf"))


def warp(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Log-probs of ``softmax(logits / temperature)`` after nucleus filtering (float32)."""
    return top_p_filter(torch.log_softmax(logits.float() / temperature, -1), top_p)


def inverse_cdf_sample(logprobs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """``[B]`` token ids: for each row the first token whose cumulative probability exceeds
    ``u * total`` (``uniforms`` in [0, 1)); tokens of probability 0 are never picked. Float64
    cumulative sums, so the draw's resolution does not depend on the vocabulary size."""
    probs = logprobs.double().exp()
    cdf = probs.cumsum(-1)
    target = (uniforms.to(cdf) * cdf[:, -1]).unsqueeze(1)
    picked = torch.searchsorted(cdf, target, right=True).squeeze(1)
    last_possible = probs.shape[-1] - 1 - (probs > 0).flip(-1).int().argmax(-1)
    return torch.minimum(picked, last_possible)


class RowStreams:
    """One RNG stream per row, ``steps`` uniforms in [0, 1) each: ``draw()`` returns the next one
    of every row, on ``device``."""

    def __init__(self, seeds: Sequence[int], steps: int):
        self.uniforms = torch.stack([
            torch.rand(steps, generator=torch.Generator().manual_seed(int(s)), dtype=torch.float64)
            for s in seeds]) if seeds else torch.zeros(0, steps, dtype=torch.float64)
        self.step = 0

    @classmethod
    def for_prompts(cls, prompt_seeds: Sequence[int], samples: int, steps: int) -> RowStreams:
        """Rows prompt-major (``samples`` per prompt), sample j of a prompt seeded by
        ``stream_seed(prompt_seed, j)``; ``steps``: the most decoding steps (max_new_tokens)."""
        return cls([stream_seed(s, j) for s in prompt_seeds for j in range(samples)], steps)

    def __len__(self) -> int:
        return self.uniforms.shape[0]

    def draw(self, device) -> torch.Tensor:
        if self.step >= self.uniforms.shape[1]:
            raise RuntimeError(f"more than {self.uniforms.shape[1]} decoding steps drawn")
        self.step += 1
        return self.uniforms[:, self.step - 1].to(device)

    def sample(self, logprobs: torch.Tensor) -> torch.Tensor:
        """``[B]`` tokens of the (already warped) ``logprobs``, one draw from each row's stream."""
        if logprobs.shape[0] != len(self):
            raise ValueError(f"{logprobs.shape[0]} rows but {len(self)} random streams")
        return inverse_cdf_sample(logprobs, self.draw(logprobs.device))


class SeededSampling:
    """A ``generate`` logits processor that samples each row from its own stream and returns scores
    that are 0 at the chosen token and −inf elsewhere, so greedy decoding emits the sample.

    Use with ``do_sample=False`` and one input row per sample (no ``num_return_sequences``), so
    ``generate``'s own temperature / top-p warpers are off and this is the only sampler."""

    def __init__(self, streams: RowStreams, temperature: float, top_p: float):
        if not temperature > 0:
            raise ValueError(f"seeded sampling needs temperature > 0, got {temperature}")
        self.streams = streams
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        tokens = self.streams.sample(warp(scores, self.temperature, self.top_p))
        out = torch.full_like(scores, float("-inf"))
        return out.scatter(1, tokens[:, None], 0.0)
