"""Rollouts: sample k completions per prompt, encode them as training sequences, score them, and
record the policy's and the reference's token log-probs at sampling time.

The sequences are built here from the prompt's ids (``data.tokenize.encode_prompt``, the encoding
training uses) and each sample's token ids, plus eos when the sample ended on eos (a sample a stop
string cut to nothing becomes eos alone, so every row has a response token), so the log-probs
recorded now (``old_logp``) and those recomputed during the update are over exactly the same tokens.
``old_logp`` comes from a no-grad forward of the policy on these sequences, not from the generator's
internal scores, which would differ with temperature/top-p and sampling-kernel numerics. A trainer
that takes them from its update's own forward instead (one optimiser step per rollout, see
:mod:`alignlab.rl.trainer`) passes ``policy_logprobs=False`` and gets ``old_logp`` None.

``seeds`` (one per prompt) make each prompt's samples depend on its own seed only
(:mod:`alignlab.generation.seeded`), whichever process generates it and whatever shares its batch;
the opponent's samples of a prompt use :func:`opponent_seeds`.

Layout: group-major, rows ``[g*k:(g+1)*k]`` are the k samples of prompt g, right-padded. Token
tensors are in the shifted frame ``[N, L-1]`` (position t predicts token t+1); ``mask`` is 1 on
response tokens. With prompt sharing on (``rl.share_prompt``) the batch also holds
``prefix_group`` [N], each row's prompt index: the k rows of a prompt start with the same prompt
ids, and every forward over the batch or a subset of its rows (old and reference log-probs here,
the update's policy and critic forwards) packs each group into one row that holds the prompt once
(:mod:`alignlab.models.shared_prefix`).
Algorithms that play the policy against an *opponent* (Nash-MD's mixture, XPO's reference) sample the
opponent's k completions of each prompt too: a group is then the policy's k samples followed by the
opponent's k (``k`` = 2 × samples per prompt, ``opponent`` [N] is 1 on the opponent's rows).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch

from alignlab.config import GenerationSettings
from alignlab.data.collate import pad_encoded
from alignlab.data.records import Messages
from alignlab.data.step_tokenize import step_token_ends
from alignlab.data.tokenize import Encoded, encode_prompt
from alignlab.generation.base import Sample
from alignlab.generation.seeded import stream_seed
from alignlab.models.reference import adapter_disabled, eval_mode
from alignlab.models.shared_prefix import PREFIX_GROUP, batch_groups, grouped_token_logprobs


@dataclass
class Rollout:
    """One batch of sampled experience (group-major, k samples per prompt)."""

    prompts: list[Messages]
    samples: list[Sample]
    batch: dict[str, torch.Tensor]
    scores: torch.Tensor
    old_logp: torch.Tensor | None
    ref_logp: torch.Tensor | None
    k: int
    dense: torch.Tensor | None = None
    opponent: torch.Tensor | None = None

    @property
    def texts(self) -> list[str]:
        return [sample.text for sample in self.samples]

    @property
    def mask(self) -> torch.Tensor:
        """``[N, L-1]`` float, 1 on response tokens (the shifted loss mask)."""
        return self.batch["loss_mask"][:, 1:].float()


def encode_samples(tokenizer, prompts: Sequence[Messages], samples: Sequence[Sequence[Sample]],
                   max_prompt_length: int) -> tuple[list[Encoded], list[Messages], list[Sample]]:
    """Prompt ids + response ids (+ eos when the sample stopped on eos), group-major."""
    eos = getattr(tokenizer, "eos_token_id", None)
    rows, row_prompts, flat = [], [], []
    for prompt, group in zip(prompts, samples):
        head = encode_prompt(tokenizer, prompt, max_prompt_length)
        for sample in group:
            tail = list(sample.token_ids) + ([eos] if sample.stop_reason == "eos" and eos is not None
                                             else [])
            if not tail and eos is not None:  # cut to nothing by a stop string: train it as eos
                tail = [eos]
            rows.append(Encoded(head + tail, [0] * len(head) + [1] * len(tail)))
            row_prompts.append(prompt)
            flat.append(sample)
    return rows, row_prompts, flat


@torch.no_grad()
def sequence_token_logprobs(model, batch: dict, disable_adapter: bool = False) -> torch.Tensor:
    """``[N, L-1]`` token log-probs on response positions (0 elsewhere), eval mode, no grad; the
    prompt of each ``prefix_group`` computed once when the batch names them."""
    groups = batch_groups(batch)
    with adapter_disabled(model) if disable_adapter else nullcontext(), eval_mode(model):
        return grouped_token_logprobs(model, batch, 1, groups=groups)


def prompt_groups(prompts: int, k: int, device=None) -> torch.Tensor:
    """``[prompts * k]`` each group-major row's prompt index (``prefix_group``: the k rows of a
    prompt share its tokens, which the forwards then compute once)."""
    return torch.arange(prompts, device=device).repeat_interleave(k)


def collect_rollout(policy, tokenizer, generator, prompts: Sequence[Messages],
                    settings: GenerationSettings, scorer, max_prompt_length: int,
                    reference=None, reference_is_adapter_base: bool = False,
                    timings: dict[str, float] | None = None, opponent=None,
                    seeds: Sequence[int] | None = None, policy_logprobs: bool = True,
                    share_prompt: bool = True) -> Rollout:
    """Sample ``settings.num_samples`` completions per prompt, score them, record log-probs.

    ``reference``: a frozen model, or None with ``reference_is_adapter_base`` (the LoRA policy with
    its adapter disabled), or None for no reference log-probs (reference-free objectives).
    ``timings``, when given, receives the seconds spent in ``generate``, ``score`` and ``logprob``.
    ``opponent``: a second generator whose samples follow the policy's in each group (see the
    module docstring). ``seeds``: one sampling seed per prompt (module docstring).
    ``policy_logprobs=False`` skips the policy's no-grad forward (``old_logp`` None).
    ``share_prompt``: the batch labels each row with its prompt (``prefix_group``), so this
    module's forwards and the update's compute each prompt once for its k rows
    (:mod:`alignlab.models.shared_prefix`); off, every row runs whole.
    """
    clock = Clock(timings)
    with clock("generate"):
        samples = _generate(generator, prompts, settings, seeds)
        k, flags = settings.num_samples, None
        if opponent is not None:
            rivals = _generate(opponent, prompts, opponent_settings(settings),
                               None if seeds is None else opponent_seeds(seeds))
            samples = [own + other for own, other in zip(samples, rivals)]
            k, flags = 2 * k, torch.tensor(([0.0] * k + [1.0] * k) * len(prompts))
    rows, row_prompts, flat = encode_samples(tokenizer, prompts, samples, max_prompt_length)
    device = next(policy.parameters()).device
    batch = {k: v.to(device) for k, v in pad_encoded(rows, tokenizer.pad_token_id).items()}
    if share_prompt:
        batch[PREFIX_GROUP] = prompt_groups(len(prompts), k, device)
    with clock("score"):
        scores = torch.tensor(scorer.score(row_prompts, [s.text for s in flat]), dtype=torch.float32)
        dense = dense_rewards(getattr(scorer, "last_dense", None), tokenizer, flat, rows,
                              batch["input_ids"].shape[1] - 1)
    with clock("logprob"):
        old_logp = sequence_token_logprobs(policy, batch) if policy_logprobs else None
        ref_logp = None
        if reference is not None:
            ref_logp = sequence_token_logprobs(reference, batch)
        elif reference_is_adapter_base:
            ref_logp = sequence_token_logprobs(policy, batch, disable_adapter=True)
    return Rollout(row_prompts, flat, batch, scores.to(device), old_logp, ref_logp, k,
                   None if dense is None else dense.to(device),
                   None if flags is None else flags.to(device))


def _generate(generator, prompts: Sequence[Messages], settings: GenerationSettings,
              seeds: Sequence[int] | None) -> list[list[Sample]]:
    if seeds is None:
        return generator.generate(list(prompts), settings)
    return generator.generate(list(prompts), settings, seeds=list(seeds))


def opponent_seeds(seeds: Sequence[int]) -> list[int]:
    """The opponent's per-prompt seeds: distinct from the policy's, so that an opponent equal to
    the policy does not replay its draws."""
    return [stream_seed(seed, "opponent") for seed in seeds]


def opponent_settings(settings: GenerationSettings) -> GenerationSettings:
    """The opponent's sampling settings: its own seed, so that an opponent equal to the policy
    (the mixture at step one) does not replay the policy's random draws."""
    return settings.model_copy(update={"seed": (settings.seed + 7919) % (2 ** 31)})


def dense_rewards(weighted_parts, tokenizer, samples: Sequence[Sample], rows: Sequence[Encoded],
                  width: int) -> torch.Tensor | None:
    """``[N, L-1]`` (shifted frame) per-token rewards of the dense scorers: for each
    ``(weight, [(char_ends, values)] per sample)`` part, ``weight * value`` at the sampled token
    that completes each step (:func:`alignlab.data.step_tokenize.step_token_ends`). None when no
    scorer is dense."""
    if not weighted_parts:
        return None
    out = torch.zeros((len(samples), width), dtype=torch.float32)
    for weight, per_sample in weighted_parts:
        for b, ((ends, values), sample, row) in enumerate(zip(per_sample, samples, rows)):
            head = len(row.input_ids) - sum(row.loss_mask)
            last = len(row.input_ids) - 2
            ids = list(sample.token_ids) or [0]
            for t, value in zip(step_token_ends(tokenizer, ids, ends), values):
                out[b, min(head - 1 + t, last)] += weight * float(value)
    return out


class Clock:
    """``with clock(name):`` adds the block's wall time to ``timings[name]`` (no-op for None)."""

    def __init__(self, timings: dict[str, float] | None):
        self.timings = timings

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.timings is not None:
                self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start
