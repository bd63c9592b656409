"""Helpers of the GPU check (``check.sh``): the model, the reward, the FLOP counts and the report.

    python gpu_check.py model  --tokenizer DIR --out DIR [--size small|tiny]
    python gpu_check.py peak   --out peak.json                      (needs a GPU)
    python gpu_check.py flops  --model DIR --timing TIMING.json --out flops.json  (needs a GPU)
    python gpu_check.py report --work DIR --out DIR

- ``model``: a randomly initialised Llama (``SIZES``) with the vocabulary and chat template of the
  tokenizer in ``--tokenizer`` (SmolLM2's converted folder, or the gym's base model), saved as an
  ordinary Hugging Face folder in bf16 (so vLLM, ``dtype: auto``, serves it in bf16).
- ``reward``: the GRPO scorer (``kind: function``, ``gpu_check:reward``): prefers answers of
  ``TARGET_WORDS`` words. Any scorer would do; this one is cheap and deterministic.
- ``peak``: the bf16 dense-matmul limit of the device, measured with
  ``benchmarks/utilisation/run.py``'s ``matmul_limit`` (square matmuls, best FLOP/s).
- ``flops``: FLOPs per real token counted by ``torch.utils.flop_counter`` on the model: one
  training forward + backward through alignlab's ``TokenLogprobModule`` (the LM head only on the
  target share of positions, as training does) and one no-grad forward (generation's work per
  token, prefill-style). Rows of ``--seq-len`` tokens, no padding.
- ``report``: tokens/s from the runs' timing files (``timed_cli.py``) and metrics, and MFU =
  FLOPs per real token × real tokens/s / peak. Padding is not counted as useful work.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TARGET_WORDS = 16
SIZES = {  # Llama shapes; "small" ≈ 250 M body parameters, "tiny" for smoke tests
    "small": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 16,
              "num_attention_heads": 16, "num_key_value_heads": 8},
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2},
}


# ----------------------------------------------------------------------------- model and reward


def build_model(tokenizer_dir: str, out: str, size: str = "small", seed: int = 0) -> str:
    """A random Llama with ``tokenizer_dir``'s vocabulary, saved (bf16 safetensors) to ``out``."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         max_position_embeddings=2048, tie_word_embeddings=True,
                         **SIZES[size])
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    print(f"model: {size} Llama, {n / 1e6:.1f} M parameters, vocabulary {len(tokenizer)} -> {out}")
    return out


def reward(prompt, completion: str) -> float:
    """1 at exactly ``TARGET_WORDS`` words, falling linearly to 0 at none or twice as many."""
    words = len(completion.split())
    return max(0.0, 1.0 - abs(words - TARGET_WORDS) / TARGET_WORDS)


# ----------------------------------------------------------------------------- FLOPs and peak


def load_utilisation():
    """``benchmarks/utilisation/run.py`` as a module (for ``matmul_limit``)."""
    spec = importlib.util.spec_from_file_location("utilisation_run",
                                                  ROOT / "benchmarks" / "utilisation" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure_peak(device: str = "cuda", seconds: float = 1.0) -> dict:
    """The device's dense-matmul limit: bf16, n = 4096 and 8192 on a GPU; on the CPU (the CPU smoke
    test of the report) fp32, n = 512 and 1024, like ``benchmarks/utilisation``."""
    import torch

    util = load_utilisation()
    if device == "cpu":
        flops = util.matmul_limit(sizes=(512, 1024), seconds=seconds / 2)
        return {"device": "cpu", "peak_tflops": flops / 1e12, "dtype": "float32"}
    flops = util.matmul_limit(sizes=(4096, 8192), seconds=seconds, device=device,
                              dtype=torch.bfloat16)
    return {"device": torch.cuda.get_device_name(0), "peak_tflops": flops / 1e12,
            "dtype": "bfloat16"}


def batch_for_count(vocab: int, rows: int, seq_len: int, target_share: float, device):
    """Random token rows with the last ``target_share`` of positions marked as targets."""
    import torch

    ids = torch.randint(0, vocab, (rows, seq_len), device=device)
    loss_mask = torch.zeros_like(ids)
    first_target = max(1, round(seq_len * (1 - target_share)))
    loss_mask[:, first_target:] = 1
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "loss_mask": loss_mask}


def count_flops(model_dir: str, seq_len: int, target_share: float, rows: int = 2,
                device: str = "cuda") -> dict:
    """FLOPs per real token of a training step (forward + backward) and of a no-grad forward."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoModelForCausalLM

    from alignlab.train.forward import TokenLogprobModule

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to(device)
    module = TokenLogprobModule(model)
    batch = batch_for_count(model.config.vocab_size, rows, seq_len, target_share, device)
    tokens = rows * seq_len
    with FlopCounterMode(display=False) as train:
        module(batch).sum().backward()
    with torch.no_grad(), FlopCounterMode(display=False) as forward:
        model(input_ids=batch["input_ids"])
    return {"seq_len": seq_len, "target_share": target_share,
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_flops_per_token": train.get_total_flops() / tokens,
            "forward_flops_per_token": forward.get_total_flops() / tokens}


# ----------------------------------------------------------------------------- report


def steady(timing: dict) -> dict:
    """Steady-state real tokens/s of a timed run: steps 2..S over t_end[S] - t_end[1]."""
    stamps, steps = timing["step_end_times_s"], timing["steps"]
    if len(stamps) < 2:
        return {"steps": len(stamps), "tokens_per_s": None}
    seconds = stamps[-1] - stamps[0]
    real = sum(s["real"] for s in steps[1:])
    return {"steps": len(stamps), "seconds": seconds, "tokens_per_s": real / seconds,
            "rows_per_s": sum(s["rows"] for s in steps[1:]) / seconds,
            "mean_row_tokens": real / max(1, sum(s["rows"] for s in steps[1:])),
            "target_share": sum(s["target"] for s in steps[1:]) / max(1, real),
            "padding_share": 1 - real / max(1, sum(s["padded"] for s in steps[1:]))}


def online_rates(rows: list[dict], timing: dict, flops: dict, peak: float | None) -> dict:
    """Generation and update rates of an online run (iterations 2..N): the tokens of each
    iteration's rollout batch (prompt + response rows, counted by ``timed_cli.py`` when the batch is
    collated; responses = its target tokens) over the iteration's ``time/generate`` and
    ``time/update`` from metrics.jsonl."""
    rows = [r for r in rows if "time/iteration" in r][1:]
    steps = timing["steps"][1:]
    if not rows or not steps:
        return {}

    def mean(values):
        values = [v for v in values if v is not None]
        return statistics.fmean(values) if values else None

    real, response = mean([s["real"] for s in steps]), mean([s["target"] for s in steps])
    generate_s, update_s = mean([r.get("time/generate") for r in rows]), mean(
        [r.get("time/update") for r in rows])
    out = {"iterations_timed": len(rows), "iteration_s": mean([r["time/iteration"] for r in rows]),
           "generate_s": generate_s, "update_s": update_s,
           "logprob_s": mean([r.get("time/logprob") for r in rows]),
           "rollout_tokens": real, "response_tokens": response}
    if generate_s:
        out["generated_tokens_per_s"] = response / generate_s
        out["generate_mfu_approx"] = mfu(flops.get("forward_flops_per_token"),
                                         real / generate_s, peak)
    if update_s:
        out["update_tokens_per_s"] = real / update_s
        out["update_mfu"] = mfu(flops.get("train_flops_per_token"), real / update_s, peak)
    return out


def mfu(flops_per_token: float | None, tokens_per_s: float | None,
        peak_tflops: float | None) -> float | None:
    """Model FLOPs utilisation: useful FLOPs per second over the peak (None when one is missing)."""
    if not flops_per_token or not tokens_per_s or not peak_tflops:
        return None
    return flops_per_token * tokens_per_s / (peak_tflops * 1e12)


def read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def report(work: Path, out: Path) -> dict:
    """results.json / results.md from what check.sh left in ``work``."""
    peak = (read_json(work / "peak.json") or {}).get("peak_tflops")
    result = {"peak": read_json(work / "peak.json"), "status": read_json(work / "status.json"),
              "stages": {}}
    for stage in ("dpo", "grpo", "grpo_plain"):
        timing = read_json(work / f"{stage}_timing.json")
        if timing is None:
            continue
        flops = read_json(work / f"{stage}_flops.json") or {}
        rate = steady(timing)
        entry = {"train": rate, "flops": flops,
                 "train_mfu": mfu(flops.get("train_flops_per_token"), rate.get("tokens_per_s"),
                                  peak)}
        if stage != "dpo":
            entry["online"] = online_rates(read_metrics(work / stage), timing, flops, peak)
        result["stages"][stage] = entry
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2))
    (out / "results.md").write_text(markdown(result))
    return result


def _fmt(value, spec: str = ".3g") -> str:
    return "—" if value is None else format(value, spec)


def markdown(result: dict) -> str:
    peak = result.get("peak") or {}
    lines = [(f"Device: {peak.get('device', '?')}; measured {peak.get('dtype', '?')} matmul "
              f"peak {_fmt(peak.get('peak_tflops'))} TFLOP/s."), "",
             ("| stage | steps timed | real tokens/s (loop) | MFU (loop) | padding | "
             "update tokens/s | MFU (update) | generated tokens/s | MFU (generate, approx.) | "
             "iteration s |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for stage, e in result["stages"].items():
        train, online = e["train"], e.get("online", {})
        lines.append(f"| {stage} | {train.get('steps', 0) - 1} | "
                     f"{_fmt(train.get('tokens_per_s'), '.0f')} | {_fmt(e.get('train_mfu'))} | "
                     f"{_fmt(train.get('padding_share'), '.2f')} | "
                     f"{_fmt(online.get('update_tokens_per_s'), '.0f')} | "
                     f"{_fmt(online.get('update_mfu'))} | "
                     f"{_fmt(online.get('generated_tokens_per_s'), '.0f')} | "
                     f"{_fmt(online.get('generate_mfu_approx'))} | "
                     f"{_fmt(online.get('iteration_s'))} |")
    status = result.get("status") or {}
    lines += ["", "Stage status: " + ", ".join(f"{k}: {v}" for k, v in status.items())]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- CLI


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("model")
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--size", default="small", choices=sorted(SIZES))
    p = sub.add_parser("peak")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", required=True)
    p = sub.add_parser("flops")
    p.add_argument("--model", required=True)
    p.add_argument("--timing", help="a timed_cli.py file: its mean row length and target share")
    p.add_argument("--seq-len", type=int, help="instead of --timing")
    p.add_argument("--target-share", type=float, help="instead of --timing")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", required=True)
    p = sub.add_parser("report")
    p.add_argument("--work", required=True)
    p.add_argument("--out", required=True)
    opts = parser.parse_args()
    if opts.command == "model":
        build_model(opts.tokenizer, opts.out, opts.size)
    elif opts.command == "peak":
        Path(opts.out).write_text(json.dumps(measure_peak(opts.device), indent=2))
    elif opts.command == "flops":
        seq_len, share = opts.seq_len, opts.target_share
        if opts.timing:
            rate = steady(json.loads(Path(opts.timing).read_text()))
            seq_len, share = round(rate["mean_row_tokens"]), rate["target_share"]
        if not seq_len or share is None:
            parser.error("flops needs --timing, or --seq-len and --target-share")
        Path(opts.out).write_text(json.dumps(count_flops(opts.model, seq_len, share,
                                                         device=opts.device), indent=2))
    else:
        print(markdown(report(Path(opts.work), Path(opts.out))))


if __name__ == "__main__":
    main()
