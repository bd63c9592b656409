"""One benchmark run in its own process: alignlab's DPO (through its CLI) or TRL's DPOTrainer.

    python worker.py {alignlab,trl} --spec SPEC.json --out RESULT.json [--precompute] [--profile]

Both runs are instrumented the same way, from outside the trainers:

- a global torch optimizer step post-hook stamps the end of every optimiser step
  (``torch.optim.optimizer.register_optimizer_step_post_hook``), so the training-loop time is measured
  identically for both tools: steady-state time = t_end[last step] - t_end[first step], over
  ``steps - 1`` steps (the first step is left out as warm-up for both);
- a sampler thread reads this process's RSS from /proc/self/statm every 20 ms, so the peak RSS can be
  split into "before the first optimiser step" (load, tokenise, reference pass) and "training";
- with ``--profile`` the whole run is wrapped in ``torch.profiler`` (CPU) and the self-time of the
  operators is written to the result, grouped into categories; a few named ranges are added by
  wrapping functions from outside (best effort: a missing name is skipped and reported).

The parent (run.py) measures the process's wall time and its ``ru_maxrss`` with ``os.wait4``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import threading
import time
from pathlib import Path

T0 = time.perf_counter()
PAGE = os.sysconf("SC_PAGE_SIZE")


class RssSampler(threading.Thread):
    """Peak RSS (bytes) seen so far, sampled from /proc/self/statm every ``interval`` seconds."""

    def __init__(self, interval: float = 0.02):
        super().__init__(daemon=True)
        self.interval, self.peak, self.stop = interval, 0, False
        self.peak_before_first_step = None

    def current(self) -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * PAGE

    def run(self) -> None:
        while not self.stop:
            self.peak = max(self.peak, self.current())
            time.sleep(self.interval)


def install_step_clock(sampler: RssSampler) -> list[float]:
    """Global optimizer-step post-hook; returns the list it appends step end times to."""

    stamps: list[float] = []

    def hook(optimizer, args, kwargs):
        if not stamps:
            sampler.peak_before_first_step = max(sampler.peak, sampler.current())
        stamps.append(time.perf_counter() - T0)

    from torch.optim.optimizer import register_optimizer_step_post_hook

    register_optimizer_step_post_hook(hook)
    return stamps


# ----------------------------------------------------------------------------- profiling helpers

CATEGORIES = [  # (category, substrings of the operator name), first match wins
    ("optimizer (AdamW)", ("Optimizer.step", "_foreach_", "adamw", "lerp", "addcdiv", "addcmul")),
    ("attention (SDPA)", ("scaled_dot_product", "_flash_attention", "attention")),
    ("matmul (linear layers, LM head)", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul",
                                         "aten::linear")),
    ("log-softmax / logsumexp / gather", ("logsumexp", "log_softmax", "softmax", "gather",
                                          "aten::exp", "aten::max", "amax")),
    ("copies / casts / cat / pad", ("aten::copy_", "aten::to", "aten::_to_copy", "aten::cat",
                                    "aten::clone", "aten::contiguous", "aten::index", "aten::fill_",
                                    "aten::zero_", "aten::zeros", "aten::empty", "aten::masked")),
    ("elementwise (norm, silu, rope, add, mul)", ("aten::mul", "aten::add", "aten::silu",
                                                  "aten::rsqrt", "aten::pow", "aten::mean",
                                                  "aten::neg", "aten::sub", "aten::div",
                                                  "aten::sum", "aten::sigmoid", "aten::cos",
                                                  "aten::sin", "aten::tanh", "aten::where")),
]


def categorise(name: str) -> str:
    low = name.lower()
    for category, keys in CATEGORIES:
        if any(k.lower() in low for k in keys):
            return category
    return "other"


def wrap_range(owner, attr: str, label: str, wrapped: list[str]) -> None:
    """Replace ``owner.attr`` by a version that runs inside ``record_function(label)``."""
    import functools

    import torch

    original = getattr(owner, attr, None)
    if original is None:
        wrapped.append(f"MISSING {getattr(owner, '__name__', owner)}.{attr}")
        return

    @functools.wraps(original)
    def inner(*args, **kwargs):
        with torch.profiler.record_function(label):
            return original(*args, **kwargs)

    setattr(owner, attr, inner)
    wrapped.append(f"{getattr(owner, '__name__', owner)}.{attr} -> {label}")


def profile_summary(prof, wrapped: list[str]) -> dict:
    """Self CPU time per operator category, top operators, and the named ranges' total time."""
    events = prof.key_averages()
    total_self = sum(e.self_cpu_time_total for e in events) or 1.0
    by_category: dict[str, float] = {}
    for e in events:
        if e.key.startswith("##"):
            continue
        cat = categorise(e.key)
        by_category[cat] = by_category.get(cat, 0.0) + e.self_cpu_time_total
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:25]
    ranges = {e.key: {"calls": e.count, "total_s": e.cpu_time_total / 1e6}
              for e in events if e.key.startswith("##") or e.key.startswith("Optimizer.step")
              or e.key.startswith("autograd::engine::evaluate_function: torch::autograd::AccumulateGrad")}
    return {
        "total_self_cpu_s": total_self / 1e6,
        "self_cpu_by_category_s": {k: v / 1e6 for k, v in sorted(by_category.items(),
                                                                  key=lambda kv: -kv[1])},
        "top_ops_self_cpu": [{"op": e.key, "calls": e.count, "self_s": e.self_cpu_time_total / 1e6}
                             for e in top],
        "ranges": ranges,
        "wrapped": wrapped,
    }


# ----------------------------------------------------------------------------- the two tools


ALIGNLAB_RANGES = [  # (module, function, label); names that do not exist are skipped
    ("alignlab.models.logprobs", "final_hidden_states", "## decoder body forward (policy + ref)"),
    ("alignlab.models.logprobs", "_chunk_logprobs",
     "## LM head + logsumexp chunk (fwd + ckpt recompute)"),
    ("alignlab.train.preference", "attach_reference", "## reference pass (attach_reference)"),
    ("alignlab.train.preference", "collate_examples", "## collate"),
    ("alignlab.models.shared_prefix", "packed_hidden_states",
     "## decoder body forward, prompt-shared (policy + ref)"),
]


def run_alignlab(spec: dict, profile_ranges: list[str] | None) -> dict:
    """alignlab's DPO through its CLI entry point (in this process, so the hooks see it)."""
    import yaml

    run_dir = Path(spec["work"]) / f"alignlab_{spec['name']}"
    if run_dir.exists():
        import shutil
        shutil.rmtree(run_dir)
    cfg = {
        "model": {"path": spec["model_path"], "dtype": "float32"},
        "data": {"path": spec["alignlab_data"], "format": "hh"},
        "train": {"learning_rate": spec["lr"], "max_steps": spec["steps"],
                  "batch_size": spec["batch_size"], "max_length": spec["max_length"],
                  "max_prompt_length": spec["max_prompt_length"], "seed": spec["seed"],
                  "log_every": spec["steps"], "gradient_checkpointing": False,
                  "lr_schedule": "linear", "warmup_ratio": 0.0, "weight_decay": 0.0,
                  "max_grad_norm": 1.0},
        "out": str(run_dir),
    }
    cfg["loss"] = [{"name": "dpo", "beta": spec["beta"]}]
    cfg["reference_cache"] = "none"  # no on-disk reference cache: the pass is timed every run
    if "share_prompt" in spec:
        cfg["share_prompt"] = spec["share_prompt"]
    if spec.get("lora"):
        cfg["model"]["lora"] = {"r": spec["lora"]["r"], "alpha": spec["lora"]["alpha"]}
    cfg_path = Path(spec["work"]) / f"alignlab_{spec['name']}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    if profile_ranges is not None:
        import accelerate
        wrap_range(accelerate.Accelerator, "backward", "## backward", profile_ranges)
        for module, attr, label in ALIGNLAB_RANGES:
            try:
                wrap_range(importlib.import_module(module), attr, label, profile_ranges)
            except ImportError as exc:  # the stage's modules move while the lead edits
                profile_ranges.append(f"MISSING {module}: {exc}")
    from alignlab.cli import app
    from alignlab.heap import fix_mmap_threshold

    fix_mmap_threshold()  # what the ``alignlab`` console script does at start-up (alignlab.heap)

    t_start = time.perf_counter() - T0
    try:
        app(["dpo", "--config", str(cfg_path)], prog_name="alignlab", standalone_mode=False)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if line.strip()]
    last = [r for r in rows if r.get("step") == spec["steps"] and "loss" in r]
    return {"t_cli_start": t_start, "final_row": last[-1] if last else None,
            "log": (run_dir / "log.txt").read_text().splitlines()}


def trl_dataset(spec: dict):
    from datasets import Dataset

    rows = [json.loads(line) for line in Path(spec["trl_data"]).read_text().splitlines()]
    return Dataset.from_list(rows)


def check_tokens(trainer, spec: dict) -> dict:
    """Compare TRL's tokenised pairs with alignlab's encoding of the same pairs (same order)."""
    expected = json.loads(Path(spec["expected_tokens"]).read_text())
    ds = trainer.train_dataset
    same_ids = same_mask = 0
    mismatches = []
    for k, (row, exp) in enumerate(zip(ds, expected)):
        ok_ids = ok_mask = True
        for side in ("chosen", "rejected"):
            ids = row["prompt_ids"] + row[f"{side}_ids"]
            mask = [0] * len(row["prompt_ids"]) + [1] * len(row[f"{side}_ids"])
            ok_ids &= ids == exp[side]["input_ids"]
            ok_mask &= mask == exp[side]["loss_mask"]
        same_ids += ok_ids
        same_mask += ok_mask
        if not (ok_ids and ok_mask) and len(mismatches) < 3:
            mismatches.append({"index": k, "trl_len": len(row["prompt_ids"] + row["chosen_ids"]),
                               "alignlab_len": len(exp["chosen"]["input_ids"])})
    return {"pairs": len(ds), "identical_input_ids": same_ids, "identical_loss_mask": same_mask,
            "examples_of_mismatch": mismatches}


def run_trl(spec: dict, precompute: bool, profile_ranges: list[str] | None) -> dict:
    import torch
    from transformers import AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    out_dir = Path(spec["work"]) / f"trl_{spec['name']}{'_pre' if precompute else ''}"
    args = DPOConfig(
        output_dir=str(out_dir), per_device_train_batch_size=spec["batch_size"],
        gradient_accumulation_steps=1, max_steps=spec["steps"], learning_rate=spec["lr"],
        beta=spec["beta"], loss_type=["sigmoid"], max_length=spec["max_length"], seed=spec["seed"],
        lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        optim="adamw_torch", logging_steps=spec["steps"], save_strategy="no", eval_strategy="no",
        report_to="none", use_cpu=True, bf16=False, fp16=False, dataloader_num_workers=0,
        gradient_checkpointing=False, train_sampling_strategy="sequential",
        precompute_ref_log_probs=precompute, model_init_kwargs={"dtype": torch.float32},
        disable_tqdm=True,
    )
    tokenizer = AutoTokenizer.from_pretrained(spec["model_path"])
    peft_config = None
    if spec.get("lora"):
        from peft import LoraConfig
        peft_config = LoraConfig(r=spec["lora"]["r"], lora_alpha=spec["lora"]["alpha"],
                                 lora_dropout=0.0, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    if profile_ranges is not None:
        import accelerate
        wrap_range(accelerate.Accelerator, "backward", "## backward", profile_ranges)
        wrap_range(DPOTrainer, "_compute_loss", "## policy forward + inline ref forward + loss",
                   profile_ranges)
        wrap_range(DPOTrainer, "_precompute_ref_logps", "## reference pass (precompute)",
                   profile_ranges)
        wrap_range(DPOTrainer, "compute_ref_log_probs", "## reference forward (no grad)",
                   profile_ranges)
    marks = {}

    class Marks(TrainerCallback):
        def on_train_begin(self, *a, **k):
            marks["train_begin"] = time.perf_counter() - T0

        def on_train_end(self, *a, **k):
            marks["train_end"] = time.perf_counter() - T0

    marks["init_start"] = time.perf_counter() - T0
    trainer = DPOTrainer(model=spec["model_path"], args=args, train_dataset=trl_dataset(spec),
                         processing_class=tokenizer, peft_config=peft_config, callbacks=[Marks()])
    marks["init_end"] = time.perf_counter() - T0
    tokens = check_tokens(trainer, spec)
    output = trainer.train()
    marks["save_start"] = time.perf_counter() - T0
    trainer.save_model(str(out_dir / "model"))  # alignlab always saves; so does this run
    marks["save_end"] = time.perf_counter() - T0
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return {"marks": marks, "token_check": tokens, "train_output": output.metrics,
            "final_log": logs[-1] if logs else None, "ref_model_loaded": trainer.ref_model is not None}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("tool", choices=["alignlab", "trl"])
    parser.add_argument("--spec", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--precompute", action="store_true", help="TRL precompute_ref_log_probs")
    parser.add_argument("--profile", action="store_true")
    opts = parser.parse_args()
    spec = json.loads(Path(opts.spec).read_text())

    import torch
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    sampler = RssSampler()
    sampler.start()
    stamps = install_step_clock(sampler)
    ranges: list[str] | None = [] if opts.profile else None
    prof = None
    if opts.profile:
        prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
        prof.__enter__()
    if opts.tool == "alignlab":
        detail = run_alignlab(spec, ranges)
    else:
        detail = run_trl(spec, opts.precompute, ranges)
    if prof is not None:
        prof.__exit__(None, None, None)
    sampler.stop = True
    steps = len(stamps)
    result = {
        "tool": opts.tool, "precompute_ref_log_probs": opts.precompute, "spec": spec,
        "torch_threads": torch.get_num_threads(), "optimizer_steps": steps,
        "step_end_times_s": stamps,
        "steady_state_s": stamps[-1] - stamps[0] if steps > 1 else None,
        "steady_state_steps": steps - 1,
        "first_step_end_s": stamps[0] if stamps else None,
        "rss_peak_sampled_gb": sampler.peak / 1e9,
        "rss_peak_before_first_step_gb": (sampler.peak_before_first_step or 0) / 1e9,
        "process_time_to_exit_s": time.perf_counter() - T0,
        "detail": detail,
    }
    if prof is not None:
        result["profile"] = profile_summary(prof, ranges)
    Path(opts.out).write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    sys.exit(main())
