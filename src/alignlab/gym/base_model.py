"""The gym's tiny Llama base model: pretrained on the base corpus for a wall-clock budget.

Plain next-token prediction on packed documents (documents end in ``</s>``; a training row may span
two documents — standard packed pretraining), AdamW, linear warm-up then a cosine decay driven by
the fraction of the time budget used (so a shorter budget still ends at a low learning rate). With a
time budget the number of steps depends on the machine; pass ``max_steps`` for a run that is
reproducible step for step (as far as torch's CPU kernels are).
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from alignlab.data.records import Messages


@dataclass(frozen=True)
class BaseModelSpec:
    """Architecture and optimisation of the gym base model."""

    hidden_size: int = 96
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 256
    max_positions: int = 256
    seq_len: int = 128
    batch_size: int = 16
    learning_rate: float = 3e-3
    warmup_steps: int = 30
    weight_decay: float = 0.01


def make_model(spec: BaseModelSpec, tokenizer, seed: int = 0) -> Any:
    """A freshly initialised ``LlamaForCausalLM`` sized by ``spec`` (tied embeddings); the
    initialisation is drawn from ``torch.manual_seed(seed)``, so one seed gives one base model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size, num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_heads,
        intermediate_size=spec.intermediate_size, max_position_embeddings=spec.max_positions,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def pack_documents(token_docs: Sequence[list[int]], seq_len: int, rng: random.Random) -> torch.Tensor:
    """Shuffle documents, concatenate them and cut the stream into rows of ``seq_len`` tokens."""
    order = list(range(len(token_docs)))
    rng.shuffle(order)
    stream = [t for i in order for t in token_docs[i]]
    rows = len(stream) // seq_len
    return torch.tensor(stream[: rows * seq_len], dtype=torch.long).view(rows, seq_len)


def pick_threads() -> int:
    """CPU threads for pretraining: the cores not already busy (1-minute load average), at least 1.

    Tiny models on a shared CPU slow down several-fold when torch's threads compete with other
    processes (threads wait on each other at every barrier), so a busy machine gets fewer threads."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = round(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0
    return max(1, min(cores, cores - busy))


def _lr_at(spec: BaseModelSpec, step: int, progress: float) -> float:
    warm = min(1.0, (step + 1) / spec.warmup_steps)
    cosine = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return spec.learning_rate * warm * cosine


def pretrain(model, token_docs: Sequence[list[int]], spec: BaseModelSpec, seconds: float,
             seed: int = 0, max_steps: int | None = None, log=print) -> dict[str, float]:
    """Train ``model`` with next-token loss until ``seconds`` pass (or ``max_steps``); returns stats."""
    torch.manual_seed(seed)
    threads_before = torch.get_num_threads()
    # A step budget asks for the same model on every machine: one thread, so reductions run in one
    # order whatever the load; a time budget takes the idle cores.
    torch.set_num_threads(1 if max_steps else pick_threads())
    try:
        return _pretrain_loop(model, token_docs, spec, seconds, seed, max_steps, log)
    finally:
        torch.set_num_threads(threads_before)


def _pretrain_loop(model, token_docs: Sequence[list[int]], spec: BaseModelSpec, seconds: float,
                   seed: int, max_steps: int | None, log) -> dict[str, float]:
    rng = random.Random(f"pack-{seed}")
    opt = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, betas=(0.9, 0.95),
                            weight_decay=spec.weight_decay)
    model.train()
    start, step, tokens, rows, cursor, loss_ema = time.time(), 0, 0, None, 0, None
    bad = 0  # consecutive non-finite steps: skipped (no update), three in a row stop pretraining
    while True:
        elapsed = time.time() - start
        progress = step / max_steps if max_steps else elapsed / seconds
        if progress >= 1.0:
            break
        if rows is None or cursor + spec.batch_size > len(rows):
            rows, cursor = pack_documents(token_docs, spec.seq_len, rng), 0
        batch = rows[cursor: cursor + spec.batch_size]
        cursor += spec.batch_size
        for group in opt.param_groups:
            group["lr"] = _lr_at(spec, step, progress)
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if not (math.isfinite(loss.item()) and math.isfinite(float(norm))):
            bad += 1
            opt.zero_grad(set_to_none=True)
            if bad >= 3:
                raise RuntimeError(f"gym pretraining: {bad} consecutive non-finite steps (step "
                                   f"{step + 1}: loss {loss.item()}, gradient norm {float(norm)})")
            continue
        bad = 0
        opt.step()
        loss_ema = loss.item() if loss_ema is None else 0.95 * loss_ema + 0.05 * loss.item()
        step, tokens = step + 1, tokens + batch.numel()
        if step % 100 == 0:
            log(f"pretrain step {step} loss {loss_ema:.3f} ({time.time() - start:.0f}s)")
    model.eval()
    return {"steps": step, "tokens": tokens, "threads": torch.get_num_threads(), "seconds": round(time.time() - start, 1),
            "final_loss": round(loss_ema or float("nan"), 4)}


@torch.no_grad()
def sample_responses(model, tokenizer, prompts: Sequence[Messages], max_new_tokens: int = 48,
                     temperature: float = 1.0, batch_size: int = 64, seed: int = 0) -> list[str]:
    """One sampled assistant response per prompt (plain HF ``generate``, left padding)."""
    from alignlab.gym.tokenizer import render_messages

    torch.manual_seed(seed)
    tokenizer.padding_side = "left"
    out: list[str] = []
    for i in range(0, len(prompts), batch_size):
        texts = [render_messages(p, add_generation_prompt=True) for p in prompts[i: i + batch_size]]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        gen = model.generate(**enc, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                             max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id)
        new = gen[:, enc["input_ids"].shape[1]:]
        out += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    tokenizer.padding_side = "right"
    return out


def spec_dict(spec: BaseModelSpec) -> dict[str, Any]:
    """The spec as a plain dict (for gym_build.json)."""
    return asdict(spec)


def save_base_model(model, tokenizer, out_dir: Path, meta: dict[str, Any]) -> Path:
    """Save as an ordinary HF folder (safetensors) plus ``gym_build.json`` with ``meta``."""
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "gym_build.json").write_text(json.dumps(meta, indent=2))
    return out_dir
