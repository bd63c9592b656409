"""One SFT benchmark run in its own process: alignlab's ``sft`` (its CLI) or TRL's SFTTrainer.

    python worker.py {alignlab,trl} --spec SPEC.json --mode {unpacked,packed,bfd} --out RESULT.json
                     [--profile]

Instrumented exactly like the DPO comparison (``benchmarks/trl_dpo/worker.py``, whose helpers are
reused): a global optimiser-step post-hook stamps the end of every step, a thread samples the RSS,
``--profile`` wraps the run in ``torch.profiler`` with a few named ranges added from outside.

Modes (the spec, written by ``run.py``, holds the data of each):

- ``unpacked``: one document per row, right-padded to the batch's longest. TRL reads the same
  documents as conversational prompt/completion rows and tokenises them itself; its tokens and
  target masks are compared with alignlab's encoding (``token_check``).
- ``packed``: alignlab's packing (first-fit rows of ``max_length``, per-document attention). TRL
  gets the very same rows, pre-tokenised with their ``seq_lengths``, and trains them with its
  padding-free collator (``padding_free=True``: the batch flattened into one row with restarting
  position ids, which is what TRL's ``packing_strategy="bfd"`` feeds the model too). Same rows in
  the same order at every step on both sides.
- ``bfd`` (TRL only): TRL's own ``packing=True, packing_strategy="bfd"`` over the raw conversations,
  one epoch; its rows differ from alignlab's, so its tokens per step are read from its dataset.

Every run reports ``step_tokens`` (non-pad input tokens and target tokens of each optimiser step)
read from what the tool itself trains on, so the parent can check that both sides saw the same
batches.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _load_dpo_worker():
    """``benchmarks/trl_dpo/worker.py`` as a module (RSS sampler, step clock, profiler helpers)."""
    path = HERE.parent / "trl_dpo" / "worker.py"
    spec = importlib.util.spec_from_file_location("trl_dpo_worker", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DPO = _load_dpo_worker()  # its T0 (process start, for the step stamps) is set here, first thing


def chunks(values: list, size: int) -> list[list]:
    return [values[i:i + size] for i in range(0, len(values), size)]


# ----------------------------------------------------------------------------- alignlab


ALIGNLAB_RANGES = [  # (module, function, label); names that do not exist are skipped
    ("alignlab.models.logprobs", "final_hidden_states", "## decoder body forward"),
    ("alignlab.models.logprobs", "hidden_target_logprobs", "## LM head + logsumexp (targets only)"),
    ("alignlab.models.logprobs", "_head_logprobs", "## LM head + logsumexp (targets only)"),
    ("alignlab.losses.sft", "nll_sum", "## loss"),
]


def alignlab_config(spec: dict, mode: str, run_dir: Path) -> dict:
    """The ``alignlab sft`` YAML of this run (same optimiser settings as the TRL side)."""
    info = spec["modes"][mode]
    return {
        "model": {"path": spec["model_path"], "dtype": "float32"},
        "data": {"path": spec["alignlab_data"], "format": spec["data_format"]},
        "packing": mode == "packed",
        "train": {"learning_rate": spec["lr"], "max_steps": info["steps"],
                  "batch_size": spec["batch_size"], "max_length": spec["max_length"],
                  "max_prompt_length": spec["max_length"] - 1, "seed": spec["seed"],
                  "log_every": info["steps"], "gradient_checkpointing": False,
                  "lr_schedule": "linear", "warmup_ratio": 0.0, "weight_decay": 0.0,
                  "max_grad_norm": 1.0},
        "out": str(run_dir),
    }


def run_alignlab(spec: dict, mode: str, profile_ranges: list[str] | None) -> dict:
    """alignlab's SFT through its CLI entry point (in this process, so the hooks see it)."""
    import yaml

    if mode == "bfd":
        raise ValueError("mode 'bfd' is TRL's own packing; alignlab runs 'unpacked' or 'packed'")
    run_dir = Path(spec["work"]) / f"alignlab_{spec['name']}_{mode}"
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg_path = Path(spec["work"]) / f"alignlab_{spec['name']}_{mode}.yaml"
    cfg_path.write_text(yaml.safe_dump(alignlab_config(spec, mode, run_dir), sort_keys=False))
    if profile_ranges is not None:
        import accelerate

        DPO.wrap_range(accelerate.Accelerator, "backward", "## backward", profile_ranges)
        for module, attr, label in ALIGNLAB_RANGES:
            try:
                DPO.wrap_range(importlib.import_module(module), attr, label, profile_ranges)
            except ImportError as exc:
                profile_ranges.append(f"MISSING {module}: {exc}")
    from alignlab.cli import app

    t_start = time.perf_counter() - DPO.T0
    try:
        app(["sft", "--config", str(cfg_path)], prog_name="alignlab", standalone_mode=False)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if line.strip()]
    last = [r for r in rows if r.get("step") == spec["modes"][mode]["steps"] and "loss" in r]
    return {"t_cli_start": t_start, "final_row": last[-1] if last else None,
            "step_tokens": spec["modes"][mode]["step_tokens"],
            "log": (run_dir / "log.txt").read_text().splitlines()}


# ----------------------------------------------------------------------------- TRL


def trl_dataset(spec: dict, mode: str):
    """The TRL training set of ``mode`` (rows in alignlab's sampler order, except ``bfd``)."""
    from datasets import Dataset

    path = spec["modes"][mode]["trl_data"]
    return Dataset.from_list([json.loads(line) for line in Path(path).read_text().splitlines()])


def trl_args(spec: dict, mode: str, out_dir: Path):
    """SFTConfig with alignlab's optimiser settings, fp32, no gradient checkpointing (TRL's SFT
    defaults are bf16 and checkpointing on), sequential sampling."""
    import torch
    from trl import SFTConfig

    common = {
        "output_dir": str(out_dir), "per_device_train_batch_size": spec["batch_size"],
        "gradient_accumulation_steps": 1, "learning_rate": spec["lr"], "seed": spec["seed"],
        "lr_scheduler_type": "linear", "warmup_steps": 0, "weight_decay": 0.0, "max_grad_norm": 1.0,
        "optim": "adamw_torch", "save_strategy": "no", "eval_strategy": "no", "report_to": "none",
        "use_cpu": True, "bf16": False, "fp16": False, "dataloader_num_workers": 0,
        "gradient_checkpointing": False, "train_sampling_strategy": "sequential",
        "model_init_kwargs": {"dtype": torch.float32}, "disable_tqdm": True, "loss_type": "nll",
    }
    if mode == "unpacked":
        return SFTConfig(**common, max_steps=spec["modes"][mode]["steps"],
                         logging_steps=spec["modes"][mode]["steps"], max_length=spec["max_length"],
                         packing=False, completion_only_loss=True)
    if mode == "packed":  # pre-packed rows, TRL's padding-free collator; rows already fit
        return SFTConfig(**common, max_steps=spec["modes"][mode]["steps"],
                         logging_steps=spec["modes"][mode]["steps"], max_length=None,
                         packing=False, padding_free=True)
    return SFTConfig(**common, max_steps=-1, num_train_epochs=1, logging_steps=1,
                     max_length=spec["max_length"], packing=True, packing_strategy="bfd",
                     completion_only_loss=True)


def documents_of(row: dict) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(ids, target mask) of each document of a TRL row (one, or several with ``seq_lengths``)."""
    ids, labels = row["input_ids"], row["labels"]
    lengths = row.get("seq_lengths") or [len(ids)]
    out, start = [], 0
    for n in lengths:
        piece = slice(start, start + n)
        out.append((tuple(ids[piece]), tuple(int(v != -100) for v in labels[piece])))
        start += n
    return out


def check_tokens(dataset, spec: dict, mode: str) -> dict:
    """Compare what TRL will train on with alignlab's encoding of the same documents.

    ``unpacked``: TRL's own tokenisation, row by row (same order). ``packed``: the rows given to
    TRL (alignlab's packing of alignlab's encoding) survive TRL's preparation unchanged. ``bfd``:
    TRL's own rows hold exactly alignlab's documents (as a multiset); the first target of a
    document is masked by both (TRL masks every position-0 label in a packed row, like alignlab's
    packing), so masks are compared from each document's second token on."""
    expected = json.loads(Path(spec["expected_tokens"]).read_text())
    ours = [(tuple(e["input_ids"]), tuple(e["loss_mask"])) for e in expected]
    theirs = [doc for row in dataset for doc in documents_of(row)]
    if mode == "bfd":
        ours = sorted((ids, mask[1:]) for ids, mask in ours)
        theirs = sorted((ids, mask[1:]) for ids, mask in theirs)
    elif mode == "packed":  # the rows alignlab's packer made (run.py), as given to TRL
        def as_row(row):
            return tuple(row["input_ids"]), tuple(int(v != -100) for v in row["labels"])

        given = Path(spec["modes"]["packed"]["trl_data"]).read_text().splitlines()
        ours = [as_row(json.loads(line)) for line in given]
        theirs = [as_row(row) for row in dataset]
    same_ids = sum(a[0] == b[0] for a, b in zip(ours, theirs))
    same_mask = sum(a[1] == b[1] for a, b in zip(ours, theirs))
    return {"compared": len(ours), "trl_items": len(theirs), "identical_input_ids": same_ids,
            "identical_masks": same_mask}


def trl_step_tokens(dataset, batch_size: int, steps: int) -> list[dict]:
    """Non-pad input tokens and target tokens (shifted labels within each document) per step,
    from TRL's dataset read sequentially in batches of ``batch_size`` rows."""
    rows = [row for row in dataset]
    per_step = []
    for batch in chunks(rows, batch_size)[:steps]:
        n_input = sum(len(r["input_ids"]) for r in batch)
        n_target = sum(sum(m[1:]) for r in batch for _, m in documents_of(r))
        per_step.append({"input": n_input, "target": n_target})
    return per_step


def run_trl(spec: dict, mode: str, profile_ranges: list[str] | None) -> dict:
    from transformers import AutoTokenizer, TrainerCallback
    from trl import SFTTrainer

    out_dir = Path(spec["work"]) / f"trl_{spec['name']}_{mode}"
    shutil.rmtree(out_dir, ignore_errors=True)
    args = trl_args(spec, mode, out_dir)
    tokenizer = AutoTokenizer.from_pretrained(spec["model_path"])
    if profile_ranges is not None:
        import accelerate

        DPO.wrap_range(accelerate.Accelerator, "backward", "## backward", profile_ranges)
        DPO.wrap_range(SFTTrainer, "compute_loss", "## forward + fused LM head + loss",
                       profile_ranges)
    marks = {}

    class Marks(TrainerCallback):
        def on_train_begin(self, *a, **k):
            marks["train_begin"] = time.perf_counter() - DPO.T0

        def on_train_end(self, *a, **k):
            marks["train_end"] = time.perf_counter() - DPO.T0

    marks["init_start"] = time.perf_counter() - DPO.T0
    trainer = SFTTrainer(model=spec["model_path"], args=args, train_dataset=trl_dataset(spec, mode),
                         processing_class=tokenizer, callbacks=[Marks()])
    marks["init_end"] = time.perf_counter() - DPO.T0
    tokens = check_tokens(trainer.train_dataset, spec, mode)
    steps = -(-len(trainer.train_dataset) // spec["batch_size"]) if mode == "bfd" \
        else spec["modes"][mode]["steps"]
    step_tokens = trl_step_tokens(trainer.train_dataset, spec["batch_size"], steps)
    output = trainer.train()
    marks["save_start"] = time.perf_counter() - DPO.T0
    trainer.save_model(str(out_dir / "model"))  # alignlab always saves; so does this run
    marks["save_end"] = time.perf_counter() - DPO.T0
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return {"marks": marks, "token_check": tokens, "train_output": output.metrics,
            "final_log": logs[-1] if logs else None, "step_tokens": step_tokens,
            "trl_rows": len(trainer.train_dataset)}


# ----------------------------------------------------------------------------- main


def install_cpu_clock() -> list[float]:
    """Process CPU time (all threads, user + sys) at the end of every optimiser step: the loop's CPU
    seconds, which other jobs on the machine inflate much less than its wall time."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    stamps: list[float] = []
    register_optimizer_step_post_hook(lambda *args: stamps.append(time.process_time()))
    return stamps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("tool", choices=["alignlab", "trl"])
    parser.add_argument("--spec", required=True)
    parser.add_argument("--mode", required=True, choices=["unpacked", "packed", "bfd"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--profile", action="store_true")
    opts = parser.parse_args()
    spec = json.loads(Path(opts.spec).read_text())

    import torch

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    sampler = DPO.RssSampler()
    sampler.start()
    stamps = DPO.install_step_clock(sampler)
    cpu_stamps = install_cpu_clock()
    ranges: list[str] | None = [] if opts.profile else None
    prof = None
    if opts.profile:
        prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
        prof.__enter__()
    run = run_alignlab if opts.tool == "alignlab" else run_trl
    detail = run(spec, opts.mode, ranges)
    if prof is not None:
        prof.__exit__(None, None, None)
    sampler.stop = True
    result = {
        "tool": opts.tool, "mode": opts.mode, "spec_name": spec["name"],
        "torch_threads": torch.get_num_threads(), "optimizer_steps": len(stamps),
        "step_end_times_s": stamps, "step_end_cpu_s": cpu_stamps,
        "first_step_end_s": stamps[0] if stamps else None,
        "rss_peak_sampled_gb": sampler.peak / 1e9,
        "rss_peak_before_first_step_gb": (sampler.peak_before_first_step or 0) / 1e9,
        "process_time_to_exit_s": time.perf_counter() - DPO.T0,
        "detail": detail,
    }
    if prof is not None:
        result["profile"] = DPO.profile_summary(prof, ranges)
    Path(opts.out).write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    sys.exit(main())
