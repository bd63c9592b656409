"""KL(policy ‖ reference) estimated from the policy's own samples.

For a completion ``y = (y_1..y_T)`` sampled from the policy π given prompt ``x``,

    k(y) = Σ_t [log π(y_t | x, y_<t) − log π_ref(y_t | x, y_<t)]

is the standard Monte-Carlo estimator of the sequence-level KL: ``E_{y~π}[k(y)] = KL(π(·|x) ‖ π_ref(·|x))``
exactly (it is the "k1" estimator in Schulman's note "Approximating KL divergence", 2020, and the
per-sequence penalty of Ziegler et al., 2019 / Ouyang et al., 2022). We report its mean over prompts and
samples with the standard error of that mean.

Caveats, stated rather than hidden:

- Unbiased but noisy: a single ``k(y)`` can be negative and its variance grows with the length of ``y``
  and with the KL itself; the se tells you how much to trust the mean. Averages over few samples may
  even be negative when the true KL is small.
- Unbiased only when ``y`` really is a sample from π: temperature 1 and top-p 1. With other sampling
  settings this estimates ``E_q[log π − log π_ref]`` under the modified sampler ``q``, which is not a KL
  (:func:`exact_sampling` says whether the settings qualify; ``run_eval`` records it).
- Completions cut at ``max_new_tokens`` give the KL of the truncated sequence distribution; the
  eos that ended a sample is scored (``alignlab.eval.run`` appends it), text cut at a stop string is
  scored up to the cut only.
- Both models score the same token ids, so they must share the vocabulary (checked).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from alignlab.eval.stats import Stat, mean_se


def exact_sampling(settings: Any) -> bool:
    """True when generation ``settings`` sample from the model itself (temperature 1, top-p 1)."""
    return float(settings.temperature) == 1.0 and float(settings.top_p) == 1.0


def kl_estimate(policy, reference, prompt_ids: Sequence[Sequence[int]],
                completion_ids: Sequence[Sequence[int]], pad_id: int, batch_size: int = 8) -> Stat:
    """Mean and se over samples of the Monte-Carlo sequence KL ``k(y)`` (module docstring)."""
    return mean_se(kl_per_sample(policy, reference, prompt_ids, completion_ids, pad_id, batch_size))


def kl_per_sample(policy, reference, prompt_ids: Sequence[Sequence[int]],
                  completion_ids: Sequence[Sequence[int]], pad_id: int,
                  batch_size: int = 8) -> list[float]:
    """``k(y)`` for each (prompt, completion) pair of token ids; ``prompt_ids[i]`` goes with
    ``completion_ids[i]``. Rows are batched by length to save padding on CPU."""
    if len(prompt_ids) != len(completion_ids):
        raise ValueError(f"kl: {len(prompt_ids)} prompts vs {len(completion_ids)} completions")
    check_same_vocab(policy, reference)
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]) + len(completion_ids[i]))
    values = [0.0] * len(order)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        batch = completion_batch([prompt_ids[i] for i in chunk], [completion_ids[i] for i in chunk],
                                 pad_id)
        for i, value in zip(chunk, _batch_kl(policy, reference, batch)):
            values[i] = value
    return values


def completion_batch(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
                     pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``/``attention_mask`` of prompt+completion rows, and ``target_mask``
    ``[B, T-1]`` marking the completion tokens among the targets ``input_ids[:, 1:]``."""
    rows = [list(p) + list(c) for p, c in zip(prompts, completions)]
    width = max(2, max(len(r) for r in rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    target = torch.zeros((len(rows), width - 1), dtype=torch.float32)
    for b, (p, row) in enumerate(zip(prompts, rows)):
        if len(p) == 0:
            raise ValueError("kl: empty prompt; the first completion token needs a context")
        ids[b, :len(row)] = torch.tensor(row, dtype=torch.long)
        attn[b, :len(row)] = 1
        target[b, len(p) - 1:len(row) - 1] = 1.0
    return {"input_ids": ids, "attention_mask": attn, "target_mask": target}


@torch.no_grad()
def _batch_kl(policy, reference, batch: dict[str, torch.Tensor]) -> list[float]:
    from alignlab.models.logprobs import token_logprobs

    ids = batch["input_ids"].to(_device(policy))
    attn = batch["attention_mask"].to(ids.device)
    lp_policy = token_logprobs(policy, ids, attn).float()
    ref_ids, ref_attn = ids.to(_device(reference)), attn.to(_device(reference))
    lp_ref = token_logprobs(reference, ref_ids, ref_attn).float().to(lp_policy.device)
    mask = batch["target_mask"].to(lp_policy.device)
    return ((lp_policy - lp_ref) * mask).sum(-1).tolist()


def _device(model) -> torch.device:
    return next(model.parameters()).device


def check_same_vocab(policy, reference) -> None:
    """Raise a clear error when the two models cannot score the same token ids."""
    a, b = _vocab_size(policy), _vocab_size(reference)
    if a is not None and b is not None and a != b:
        raise ValueError(f"kl: policy vocabulary has {a} entries, reference {b}; KL needs the same "
                         "tokenizer for both models")


def _vocab_size(model) -> int | None:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return None if head is None else int(head.weight.shape[0])
