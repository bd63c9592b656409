"""Memory-lean token log-probabilities, sequence log-probabilities and reward scores.

``token_logprobs`` never holds the full ``[B, T, V]`` logits. It runs the decoder body once to get the
final hidden states ``[B, T, H]``, then applies the output projection, ``logsumexp`` and the gather in
chunks of ``chunk_size`` positions. With gradients enabled each chunk runs under
``torch.utils.checkpoint``, so backward recomputes that chunk's logits instead of storing them: peak
extra memory is one chunk's ``[B, chunk, V]`` logits (float32) instead of all of them, at the cost of
one more projection per chunk in backward. The result equals
``log_softmax(model(...).logits).gather(...)``; it departs from the plain HF forward only in that
logits are upcast to float32 before the softmax (as HF's loss does) for every dtype.

Logit transforms some architectures apply after the projection are honoured when the config names
them: ``final_logit_softcapping`` (Gemma 2/3: ``c·tanh(z/c)``), ``logit_scale`` (Cohere: ``z·s``) and
``logits_scaling`` (Granite: ``z/s``). Other custom heads are not supported.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint


def unwrap_peft(model):
    """The underlying transformers model of a peft model (the model itself otherwise)."""
    getter = getattr(model, "get_base_model", None)
    return getter() if callable(getter) else model


def decoder_body(model):
    """The transformer body (embeddings → final norm) of a HF causal LM or sequence classifier."""
    base = unwrap_peft(model)
    prefix = getattr(base, "base_model_prefix", None)
    body = getattr(base, prefix, None) if prefix else None
    if body is None or body is base:
        getter = getattr(base, "get_decoder", None)
        body = getter() if callable(getter) else None
    if body is None:
        raise TypeError(f"cannot find the decoder body of {type(base).__name__}; "
                        "expected a Hugging Face model with base_model_prefix or get_decoder()")
    return body


def default_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only (correct for left and right padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def final_hidden_states(model, input_ids, attention_mask, position_ids=None) -> torch.Tensor:
    """``[B, T, H]`` hidden states after the final norm, i.e. the input of the vocabulary head.
    ``attention_mask`` may be None only with ``position_ids`` (packed rows: transformers then
    derives per-document attention from the restarting positions)."""
    if position_ids is None:
        if attention_mask is None:
            raise ValueError("final_hidden_states needs attention_mask or position_ids")
        position_ids = default_position_ids(attention_mask)
    out = decoder_body(model)(input_ids=input_ids, attention_mask=attention_mask,
                              position_ids=position_ids, use_cache=False)
    return out[0] if isinstance(out, tuple) else out.last_hidden_state


def _transform_logits(logits: torch.Tensor, config) -> torch.Tensor:
    """Apply the config's post-projection logit transform, if any (see module docstring)."""
    scale = getattr(config, "logit_scale", None)
    if isinstance(scale, (int, float)) and scale != 1:
        logits = logits * scale
    divisor = getattr(config, "logits_scaling", None)
    if isinstance(divisor, (int, float)) and divisor != 1:
        logits = logits / divisor
    cap = getattr(config, "final_logit_softcapping", None)
    if isinstance(cap, (int, float)) and cap > 0:
        logits = torch.tanh(logits / cap) * cap
    return logits


def _upcast(logits: torch.Tensor) -> torch.Tensor:
    """Logits in float32 for the softmax (float64 models keep float64, for exact tests)."""
    return logits if logits.dtype == torch.float64 else logits.float()


def _chunk_logprobs(hidden: torch.Tensor, targets: torch.Tensor, head, config) -> torch.Tensor:
    logits = _transform_logits(_upcast(head(hidden)), config)
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def vocab_head(model):
    """``(base model, output embedding)`` of a HF causal LM (peft unwrapped)."""
    base = unwrap_peft(model)
    head = base.get_output_embeddings()
    if head is None:
        raise TypeError(f"{type(base).__name__} has no output embeddings (vocabulary head)")
    return base, head


def head_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """Vocabulary logits (upcast, with the config's logit transform) of final hidden states
    ``hidden`` [..., H], for callers that project only some positions."""
    base, head = vocab_head(model)
    return _transform_logits(_upcast(head(hidden)), base.config)


def hidden_target_logprobs(hidden: torch.Tensor, targets: torch.Tensor, head, config,
                           chunk: int) -> torch.Tensor:
    """Log-probs of ``targets`` [M] from ``hidden`` [M, H], ``chunk`` rows at a time (checkpointed
    when gradients are needed, so backward recomputes each chunk's logits instead of storing them)."""
    use_checkpoint = torch.is_grad_enabled() and (
        hidden.requires_grad or any(p.requires_grad for p in head.parameters()))
    pieces = []
    for start in range(0, hidden.shape[0], chunk):
        args = (hidden[start:start + chunk], targets[start:start + chunk], head, config)
        if use_checkpoint:
            pieces.append(checkpoint(_chunk_logprobs, *args, use_reentrant=False))
        else:
            pieces.append(_chunk_logprobs(*args))
    if not pieces:
        return hidden.new_zeros(0, dtype=torch.float32)
    return torch.cat(pieces)


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                   position_ids: torch.Tensor | None = None, chunk_size: int = 64,
                   target_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, T-1]`` float32 log p(input_ids[:, t+1] | input_ids[:, ≤t]), chunked over positions.

    ``position_ids`` default to positions counted over real tokens (``cumsum(attention_mask) - 1``).
    Values at padded positions are meaningless; mask them with ``attention_mask``/``loss_mask``.

    ``target_mask`` ([B, T-1], the shifted loss mask), when given, selects the positions whose
    log-probs are wanted: only those hidden states go through the vocabulary head (the other
    entries are 0). Losses that read completion tokens only skip the head's forward, recompute and
    backward on prompt and padding positions, which on chat data are most of the sequence.
    """
    base, head = vocab_head(model)
    hidden = final_hidden_states(model, input_ids, attention_mask, position_ids)[:, :-1]
    targets = input_ids[:, 1:]
    rows, width = targets.shape
    chunk = chunk_size * max(rows, 1)
    if target_mask is None:
        flat = hidden_target_logprobs(hidden.reshape(rows * width, -1), targets.reshape(-1), head,
                              base.config, chunk)
        return flat.reshape(rows, width)
    selected = target_mask.bool()
    values = hidden_target_logprobs(hidden[selected], targets[selected], head, base.config, chunk)
    out = torch.zeros(rows, width, dtype=values.dtype, device=values.device)
    return out.masked_scatter(selected, values)


def sequence_logprobs(model, batch: dict, average: bool = False, chunk_size: int = 64):
    """``[B]`` sum (or mean, with ``average``) of token log-probs over ``loss_mask[:, 1:]``.

    ``batch`` holds ``input_ids``, ``attention_mask``, ``loss_mask`` and optionally ``position_ids``
    (as produced by :func:`alignlab.data.collate.pad_encoded`). A row with no target tokens gives 0.
    """
    mask = batch["loss_mask"][:, 1:]
    per_token = token_logprobs(model, batch["input_ids"], batch["attention_mask"],
                               batch.get("position_ids"), chunk_size=chunk_size, target_mask=mask)
    return masked_sequence_sum(per_token, mask, average)


def masked_sequence_sum(per_token: torch.Tensor, mask: torch.Tensor, average: bool = False):
    """``[B]`` sum (or mean, with ``average``) of ``per_token`` [B, T-1] over ``mask``."""
    mask = mask.to(per_token.dtype)
    total = (per_token * mask).sum(-1)
    if average:
        return total / mask.sum(-1).clamp(min=1.0)
    return total


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """``[B]`` index of the last real (mask == 1) token of each row, for any padding side."""
    length = attention_mask.shape[1]
    flipped_first = attention_mask.flip(-1).long().argmax(-1)
    return length - 1 - flipped_first


def score_head(model):
    """The scalar head of a HF sequence classifier (``score``, ``classifier`` or ``v_head``)."""
    base = unwrap_peft(model)
    for name in ("score", "classifier", "v_head"):
        head = getattr(base, name, None)
        if head is not None:
            return head
    raise TypeError(f"{type(base).__name__} has no score head (looked for score, classifier, v_head)")


def reward_scores(rm_model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """``[B]`` reward: the score head applied to the hidden state of each row's last real token.

    Pooling uses ``attention_mask`` rather than ``pad_token_id``, so it stays right when pad == eos and
    the text itself ends with eos (HF's built-in pooling would skip that eos). Works with any padding side.
    """
    hidden = final_hidden_states(rm_model, input_ids, attention_mask, position_ids)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    pooled = hidden[rows, last_token_index(attention_mask).to(hidden.device)]
    scores = score_head(rm_model)(pooled)
    return scores[:, 0].float()


def position_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``[S, C]`` score-head outputs at S chosen ``(rows[s], positions[s])`` token positions, from ONE
    forward over the batch (a process reward model scores every step of every solution at once;
    an every-token outcome model reads every completion position)."""
    hidden = final_hidden_states(model, input_ids, attention_mask)
    picked = hidden[rows.to(hidden.device), positions.to(hidden.device)]
    return score_head(model)(picked).float()


def token_log_softmax(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, T-1, V]`` float32 log-softmax of the next-token distribution at every position.

    The full-distribution counterpart of :func:`token_logprobs` for objectives that need more than
    the target token's log-prob (TDPO's per-token KL, CRINGE's top-k candidates). It holds all
    logits at once, so its memory is ``B * T * V * 4`` bytes (plus autograd's copy); use it only for
    those objectives.
    """
    base, head = vocab_head(model)
    hidden = final_hidden_states(model, input_ids, attention_mask, position_ids)[:, :-1]
    logits = _transform_logits(_upcast(head(hidden)), base.config)
    return torch.log_softmax(logits, dim=-1)
