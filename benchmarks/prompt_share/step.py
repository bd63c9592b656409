"""What prompt sharing buys per DPO step: tokens, saved activations, forward+backward and reference time.

    OMP_NUM_THREADS=2 python benchmarks/prompt_share/step.py [--batches 4] [--lora] [--out result.json]

SmolLM2-135M-Instruct, HH harmless-base pairs (the first ``4 * batches`` pairs whose rows fit 256
tokens, prompt ≤ 192: the ``benchmarks/trl_dpo`` selection), batch 4 pairs, fp32. For every batch,
with ``share_prompt`` off (each row separate) and on (``models.shared_prefix``), this measures:

- tokens the model runs over, padding included (rows × padded width);
- bytes of tensors autograd saves for backward (``torch.autograd.graph.saved_tensors_hooks``,
  de-duplicated by storage; parameters excluded) — deterministic, unlike RSS;
- wall time of the policy's forward + backward of the DPO loss, and of the no-grad reference pass,
  alternating the two layouts batch by batch so machine load hits both alike.

Run it alone on the machine for the times (the load average is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "trl_dpo"))


def saved_bytes(fn) -> tuple[torch.Tensor, int]:
    """``fn()`` under a hook that adds up the storage of every tensor saved for backward."""
    seen: dict[int, int] = {}

    def pack(tensor):
        if not isinstance(tensor, torch.nn.Parameter) and tensor.layout == torch.strided:
            storage = tensor.untyped_storage()
            seen.setdefault(storage.data_ptr(), storage.nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = fn()
    return out, sum(seen.values())


def dpo_loss(logps: torch.Tensor, pairs: int) -> torch.Tensor:
    return -torch.nn.functional.logsigmoid(0.1 * (logps[:pairs] - logps[pairs:])).mean()


def measure(model, batch: dict, pairs: int, share: bool) -> dict:
    from alignlab.models.shared_prefix import grouped_sequence_logprobs, pack_groups

    slots = 2 if share else 1
    tokens = (pack_groups(batch["input_ids"], batch["attention_mask"], 2).input_ids.numel()
              if share else batch["input_ids"].numel())
    start = time.perf_counter()
    with torch.no_grad():
        grouped_sequence_logprobs(model, batch, slots)
    reference_s = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    loss, saved = saved_bytes(lambda: dpo_loss(grouped_sequence_logprobs(model, batch, slots), pairs))
    loss.backward()
    step_s = time.perf_counter() - start
    return {"tokens": tokens, "saved_gb": saved / 1e9, "step_s": step_s,
            "reference_s": reference_s, "loss": float(loss)}


def batches(tokenizer, count: int, size: int) -> list[dict]:
    from run import select_pairs  # benchmarks/trl_dpo/run.py: the same pair selection

    from alignlab.data.collate import collate_pairs

    _, _, encoded = select_pairs(tokenizer, count * size, 256, 192)
    return [collate_pairs(encoded[i * size:(i + 1) * size], tokenizer.pad_token_id)
            for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--lora", action="store_true")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    from run import smol_folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    folder = smol_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    if args.lora:
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                 target_modules="all-linear"))
    model.train()
    rows = {True: [], False: []}
    load = os.getloadavg()
    for batch in batches(tokenizer, args.batches, 4):
        for share in (False, True):
            rows[share].append(measure(model, batch, 4, share))
    summary = {}
    for share, runs in rows.items():
        key = "shared" if share else "separate"
        summary[key] = {"tokens": sum(r["tokens"] for r in runs),
                        "saved_gb_max": max(r["saved_gb"] for r in runs),
                        "step_s_median": statistics.median(r["step_s"] for r in runs),
                        "reference_s_median": statistics.median(r["reference_s"] for r in runs),
                        "losses": [r["loss"] for r in runs]}
    summary["max_loss_difference"] = max(abs(a - b) for a, b in zip(
        summary["shared"]["losses"], summary["separate"]["losses"], strict=True))
    summary.update({"lora": args.lora, "batches": args.batches, "threads": torch.get_num_threads(),
                    "loadavg_before": load, "loadavg_after": os.getloadavg()})
    print(json.dumps(summary, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
