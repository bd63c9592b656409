"""alignlab SFT vs TRL 1.16 SFTTrainer: same model, documents, batches, lengths and optimiser.

    benchmarks/trl_dpo/.venv/bin/python benchmarks/trl_sft/run.py [--models tiny,smol]
        [--runs alignlab:unpacked,trl:unpacked,alignlab:packed,trl:packed,trl:bfd]
        [--data alpaca|hh] [--threads 2] [--batch-size B --steps S --max-length L]
        [--profile alignlab,trl] [--out-dir DIR] [--report-only]

For each model it prepares the data once, then runs each (tool, mode) in its own process
(``worker.py``; the modes are described there). Results go to ``<out-dir>/<model>.json`` and
``<out-dir>/results.md`` (default ``results/``).

Fairness: the N = batch_size * steps documents are the first single-turn conversations of the data
file (file order) that fit ``max_length`` under the chat template, so neither tool truncates. TRL
reads them in alignlab's sampler order with sequential sampling, so step k of both unpacked runs is
the same B documents; the packed runs train the same packed rows in the same order (alignlab's
first-fit packing, given to TRL pre-tokenised). Token identity is checked inside the TRL runs.

Metrics (``metrics()``): *tokens* are real tokens, never padding: input tokens = the non-pad tokens
of the step's rows (every document token, prompt and completion); target tokens = the tokens the
loss is taken on. train-loop tokens/s = tokens of steps 2..S / (t_end[S] - t_end[1]) (the first
step is warm-up for both); end-to-end tokens/s = all trained tokens / wall time of the process.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DATA = {"alpaca": (ROOT.parent / "shared" / "data" / "formats" / "alpaca_demo.json", "alpaca"),
        "hh": (ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base.dev.jsonl", "hh")}
SETTINGS = {  # name -> run settings; N documents = batch_size * steps, each seen once unpacked
    "tiny": {"batch_size": 8, "steps": 8, "max_length": 512},
    "smol": {"batch_size": 4, "steps": 8, "max_length": 512},
}
COMMON = {"lr": 2e-5, "seed": 0}
DEFAULT_RUNS = "alignlab:unpacked,trl:unpacked,alignlab:packed,trl:packed,trl:bfd"
PROFILE_STEPS = 3


def _load_dpo_run():
    """``benchmarks/trl_dpo/run.py`` as a module: SmolLM2's folder, the tiny model, the sampler."""
    spec = importlib.util.spec_from_file_location("trl_dpo_run", HERE.parent / "trl_dpo" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DPO = _load_dpo_run()


# ----------------------------------------------------------------------------- preparation


def raw_rows(path: Path) -> list[dict]:
    """The data file's records as dicts (a JSON list or JSON lines), in file order."""
    text = path.read_text()
    if path.suffix == ".json":
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def select_documents(tokenizer, data: str, n: int, max_length: int):
    """First ``n`` single-turn conversations (file order) that fit ``max_length``: (raw rows,
    conversations, alignlab encodings). Single-turn, so that alignlab's SFT (every assistant turn a
    target) and TRL's prompt/completion SFT (the completion a target) train on the same tokens."""
    from alignlab.config import DataSettings
    from alignlab.data.loading import load_records
    from alignlab.data.tokenize import encode_conversation

    path, fmt = DATA[data]
    raw = raw_rows(path)
    records = load_records(DataSettings(path=str(path), format=fmt), "conversation").records
    if len(records) != len(raw):
        raise RuntimeError(f"{path}: the reader skipped records; row/record alignment lost")
    rows, convs, encoded = [], [], []
    for row, conv in zip(raw, records):
        roles = [m.role for m in conv.messages]
        if roles.count("assistant") != 1 or roles[-1] != "assistant":
            continue
        enc = encode_conversation(tokenizer, conv, max_length=10**6, max_prompt_length=10**6)
        if len(enc) <= max_length and sum(enc.loss_mask[1:]) > 0:
            rows.append(row)
            convs.append(conv)
            encoded.append(enc)
        if len(rows) == n:
            return rows, convs, encoded
    raise RuntimeError(f"only {len(rows)} documents of {path} fit max_length={max_length}")


def step_tokens(items: list, order: list[int], batch_size: int) -> list[dict]:
    """Non-pad input tokens, target tokens and padded tokens ([B, longest]) of each step."""
    out = []
    for s in range(0, len(order), batch_size):
        batch = [items[i] for i in order[s:s + batch_size]]
        out.append({"input": sum(len(e.input_ids) for e in batch),
                    "target": sum(sum(e.loss_mask[1:]) for e in batch),
                    "padded": len(batch) * max(len(e.input_ids) for e in batch)})
    return out


def trl_conversation(conv) -> dict:
    """A conversational prompt/completion row for TRL (the last message is the completion)."""
    messages = [{"role": m.role, "content": m.content} for m in conv.messages]
    return {"prompt": messages[:-1], "completion": messages[-1:]}


def trl_packed_row(row) -> dict:
    """A packed alignlab row, pre-tokenised for TRL: labels -100 off target, document lengths."""
    starts = [i for i, p in enumerate(row.position_ids) if p == 0] + [len(row.input_ids)]
    return {"input_ids": row.input_ids,
            "labels": [t if m else -100 for t, m in zip(row.input_ids, row.loss_mask)],
            "seq_lengths": [b - a for a, b in itertools.pairwise(starts)]}


def write_jsonl(path: Path, rows: list) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def prepare(name: str, model_path: str, work: Path, settings: dict, data: str,
            threads: int) -> dict:
    """Write the alignlab data, the TRL data of each mode (alignlab's order) and the spec."""
    from transformers import AutoTokenizer

    from alignlab.data.packing import pack_encoded

    B, L = settings["batch_size"], settings["max_length"]
    n = B * settings["steps"]
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    rows, convs, encoded = select_documents(tokenizer, data, n, L)
    seed = COMMON["seed"]
    alignlab_data = write_jsonl(work / f"{name}_{data}_alignlab.jsonl", rows)
    order = DPO.sampler_order(n, B, seed)
    unpacked_trl = write_jsonl(work / f"{name}_{data}_trl_unpacked.jsonl",
                               [trl_conversation(convs[i]) for i in order])
    expected = [{"input_ids": encoded[i].input_ids, "loss_mask": encoded[i].loss_mask}
                for i in order]
    (work / f"{name}_{data}_expected_tokens.json").write_text(json.dumps(expected))
    packed = pack_encoded(encoded, L)  # what alignlab's sft stage builds from the same file
    packed_order = DPO.sampler_order(len(packed), B, seed)
    packed_trl = write_jsonl(work / f"{name}_{data}_trl_packed.jsonl",
                             [trl_packed_row(packed[i]) for i in packed_order])
    modes = {
        "unpacked": {"steps": settings["steps"], "trl_data": unpacked_trl,
                     "step_tokens": step_tokens(encoded, order, B)},
        "packed": {"steps": math.ceil(len(packed) / B), "rows": len(packed),
                   "trl_data": packed_trl, "step_tokens": step_tokens(packed, packed_order, B)},
        "bfd": {"steps": None, "trl_data": unpacked_trl, "step_tokens": None},
    }
    spec = {**COMMON, **settings, "name": name, "data": data, "data_format": DATA[data][1],
            "threads": threads, "work": str(work), "model_path": model_path,
            "alignlab_data": alignlab_data, "documents": n,
            "expected_tokens": str(work / f"{name}_{data}_expected_tokens.json"),
            "document_tokens": sum(len(e) for e in encoded),
            "document_targets": sum(sum(e.loss_mask[1:]) for e in encoded), "modes": modes}
    (work / f"{name}_spec.json").write_text(json.dumps(spec, indent=2))
    return spec


# ----------------------------------------------------------------------------- running


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


def run_worker(label: str, args: list[str], out: Path, env: dict) -> dict:
    """One worker process: wall time and ru_maxrss from ``os.wait4``; its JSON result merged in."""
    cmd = [sys.executable, str(HERE / "worker.py"), *args, "--out", str(out)]
    load_before = loadavg()
    start = time.perf_counter()
    with open(out.with_suffix(".log"), "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    print(f"  {label}: exit {code}, {wall:.1f}s, peak RSS {usage.ru_maxrss / 1e6:.2f} GB, "
          f"load before {load_before}", flush=True)
    if code != 0:
        tail = out.with_suffix(".log").read_text().splitlines()[-30:]
        raise RuntimeError(f"{label} failed (exit {code}); log tail:\n" + "\n".join(tail))
    result = json.loads(out.read_text())
    result.update({"label": label, "wall_s": wall, "ru_maxrss_gb": usage.ru_maxrss / 1e6,
                   "cpu_user_s": usage.ru_utime, "cpu_sys_s": usage.ru_stime,
                   "loadavg_before": load_before, "loadavg_after": loadavg()})
    return result


def metrics(result: dict) -> dict:
    """Real-token throughput (train loop and end to end), wall, CPU and memory of one run."""
    stamps, tokens = result["step_end_times_s"], result["detail"]["step_tokens"]
    if len(stamps) != len(tokens):
        raise RuntimeError(f"{result['label']}: {len(stamps)} optimiser steps but token counts "
                           f"for {len(tokens)}")
    steady = stamps[-1] - stamps[0] if len(stamps) > 1 else float("nan")
    cpu = result.get("step_end_cpu_s") or []
    loop_cpu = cpu[-1] - cpu[0] if len(cpu) > 1 else float("nan")
    loop_input = sum(t["input"] for t in tokens[1:])
    loop_target = sum(t["target"] for t in tokens[1:])
    all_input = sum(t["input"] for t in tokens)
    return {
        "label": result["label"], "steps": len(stamps),
        "train_input_tokens_per_s": loop_input / steady,
        "train_target_tokens_per_s": loop_target / steady,
        "train_input_tokens_per_cpu_s": loop_input / loop_cpu,
        "train_step_s": steady / (len(stamps) - 1) if len(stamps) > 1 else float("nan"),
        "end_to_end_input_tokens_per_s": all_input / result["wall_s"],
        "input_tokens": all_input, "target_tokens": sum(t["target"] for t in tokens),
        "wall_s": result["wall_s"], "time_to_first_step_end_s": result["first_step_end_s"],
        "peak_rss_gb": result["ru_maxrss_gb"],
        "peak_rss_before_first_step_gb": result["rss_peak_before_first_step_gb"],
        "cpu_s": result["cpu_user_s"] + result["cpu_sys_s"],
        "loadavg_before": result["loadavg_before"],
    }


def grad_norm(result: dict):
    """The last step's gradient norm as the tool logged it (comparable when the batches are)."""
    detail = result["detail"]
    row = detail.get("final_row") if result["tool"] == "alignlab" else detail.get("final_log")
    return (row or {}).get("grad_norm")


def ratio(ours: dict, theirs: dict) -> dict:
    return {"train_tokens_per_s": (ours["train_input_tokens_per_s"]
                                   / theirs["train_input_tokens_per_s"]),
            "train_tokens_per_cpu_s": (ours["train_input_tokens_per_cpu_s"]
                                       / theirs["train_input_tokens_per_cpu_s"]),
            "end_to_end_tokens_per_s": (ours["end_to_end_input_tokens_per_s"]
                                        / theirs["end_to_end_input_tokens_per_s"]),
            "peak_rss": ours["peak_rss_gb"] / theirs["peak_rss_gb"]}


RATIO_PAIRS = [("alignlab:unpacked", "trl:unpacked"), ("alignlab:packed", "trl:packed"),
               ("alignlab:packed", "trl:bfd")]


def bench_model(name: str, model_path: str, work: Path, out_dir: Path, env: dict, opts) -> dict:
    settings = {**SETTINGS[name]}
    for key in ("batch_size", "steps", "max_length"):
        if getattr(opts, key) is not None:
            settings[key] = getattr(opts, key)
    spec = prepare(name, model_path, work, settings, opts.data, opts.threads)
    spec_path = work / f"{name}_spec.json"
    print(f"{name}: {spec['documents']} documents ({spec['document_tokens']} tokens, "
          f"{spec['document_targets']} targets), batch {spec['batch_size']}, unpacked "
          f"{spec['modes']['unpacked']['steps']} steps, packed "
          f"{spec['modes']['packed']['rows']} rows "
          f"/ {spec['modes']['packed']['steps']} steps, max_length {spec['max_length']}, "
          f"model {model_path}", flush=True)
    runs = {}
    for key in [k for k in opts.runs.split(",") if k]:
        tool, mode = key.split(":")
        runs[key] = run_worker(key, [tool, "--spec", str(spec_path), "--mode", mode],
                               work / f"{name}_{tool}_{mode}.json", env)
    table = {key: metrics(r) for key, r in runs.items()}
    same_batches = {mode: runs[f"trl:{mode}"]["detail"]["step_tokens"]
                    == [{k: t[k] for k in ("input", "target")}
                        for t in spec["modes"][mode]["step_tokens"]]
                    for mode in ("unpacked", "packed") if f"trl:{mode}" in runs}
    summary = {"model": name, "spec": spec, "metrics": table,
               "ratios": {f"{a} / {b}": ratio(table[a], table[b]) for a, b in RATIO_PAIRS
                          if a in table and b in table},
               "token_check": {k: r["detail"]["token_check"] for k, r in runs.items()
                               if "token_check" in r["detail"]},
               "trl_batches_equal_alignlab": same_batches,
               "last_grad_norm": {k: grad_norm(r) for k, r in runs.items()},
               "runs": runs}
    (out_dir / f"{name}.json").write_text(json.dumps(summary, indent=2, default=str))
    for tool in [t for t in opts.profile.split(",") if t]:
        prof_spec = {**spec, "name": f"{name}_profile"}
        for info in prof_spec["modes"].values():
            if info["steps"]:
                info["steps"] = min(info["steps"], PROFILE_STEPS)
                info["step_tokens"] = info["step_tokens"][:PROFILE_STEPS]
        prof_path = work / f"{name}_profile_spec.json"
        prof_path.write_text(json.dumps(prof_spec))
        mode = opts.profile_mode
        res = run_worker(f"profile {tool}:{mode}", [tool, "--spec", str(prof_path), "--mode", mode,
                                                    "--profile"],
                         work / f"{name}_profile_{tool}.json", env)
        (out_dir / f"profile_{name}_{tool}_{mode}.json").write_text(json.dumps(
            {"wall_s": res["wall_s"], "step_end_times_s": res["step_end_times_s"],
             "profile": res["profile"]}, indent=2))
    return summary


# ----------------------------------------------------------------------------- report


def markdown(summaries: list[dict], info: dict) -> str:
    lines = [(f"Measured {info['date']} on {info['machine']}; torch {info['torch']}, transformers "
             f"{info['transformers']}, trl {info['trl']}, {info['threads']} torch threads; "
             f"/proc/loadavg at start: {info['loadavg_start']}."), ""]
    lines += [("| model | run | steps | train-loop input tok/s | target tok/s | input tok per "
              "loop CPU-s | step s | end-to-end input tok/s | wall s | CPU s | peak RSS GB | "
              "load avg before |"),
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        for m in s["metrics"].values():
            lines.append(f"| {s['model']} | {m['label']} | {m['steps']} | "
                         f"{m['train_input_tokens_per_s']:.0f} | "
                         f"{m['train_target_tokens_per_s']:.0f} | "
                         f"{m.get('train_input_tokens_per_cpu_s', float('nan')):.0f} | "
                         f"{m['train_step_s']:.2f} | {m['end_to_end_input_tokens_per_s']:.0f} | "
                         f"{m['wall_s']:.1f} | {m['cpu_s']:.0f} | {m['peak_rss_gb']:.2f} | "
                         f"{m['loadavg_before'].split()[0]} |")
    lines += ["", ("| model | alignlab / TRL | train-loop tok/s | tok per loop CPU-s | "
              "end-to-end tok/s | peak RSS |"), "|---|---|---|---|---|---|"]
    for s in summaries:
        shown = {f"{a} / {b}" for a, b in RATIO_PAIRS}
        for key, r in s["ratios"].items():
            if key not in shown:
                continue
            lines.append(f"| {s['model']} | {key} | {r['train_tokens_per_s']:.2f}× | "
                         f"{r.get('train_tokens_per_cpu_s', float('nan')):.2f}× | "
                         f"{r['end_to_end_tokens_per_s']:.2f}× | {r['peak_rss']:.2f}× |")
    lines += ["", "Token check (TRL's training rows vs alignlab's encoding): " + "; ".join(
        f"{s['model']} {mode}: {c['identical_input_ids']}/{c['compared']} identical ids, "
        f"{c['identical_masks']}/{c['compared']} identical masks"
        for s in summaries for mode, c in s["token_check"].items())]
    lines += ["", "Same per-step token counts on both sides: " + "; ".join(
        f"{s['model']} {mode}: {ok}" for s in summaries
        for mode, ok in s["trl_batches_equal_alignlab"].items())]
    lines += ["", "Last step's gradient norm (same rows and weights → should agree): " + "; ".join(
        f"{s['model']}: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                      for k, v in s["last_grad_norm"].items())
        for s in summaries)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,smol")
    parser.add_argument("--runs", default=DEFAULT_RUNS, help="comma list of tool:mode")
    parser.add_argument("--data", default="alpaca", choices=sorted(DATA))
    parser.add_argument("--threads", type=int, default=2, help="torch / OMP threads of each run")
    parser.add_argument("--batch-size", type=int, default=None, help="override for every model")
    parser.add_argument("--steps", type=int, default=None, help="unpacked steps, every model")
    parser.add_argument("--max-length", type=int, default=None, help="override for every model")
    parser.add_argument("--profile", default="", help="tools to profile after the timed runs "
                        "(alignlab,trl), on every model, 3 steps; empty: none")
    parser.add_argument("--profile-mode", default="unpacked", choices=["unpacked", "packed", "bfd"])
    parser.add_argument("--work", default="/tmp/alignlab_trl_sft")
    parser.add_argument("--out-dir", default=str(HERE / "results"))
    parser.add_argument("--report-only", action="store_true",
                        help="rebuild results.md from <out-dir>/<model>.json, run nothing")
    opts = parser.parse_args()
    work, out_dir = Path(opts.work), Path(opts.out_dir)
    work.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    threads = str(opts.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
           "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1", "CUDA_VISIBLE_DEVICES": "",
           "HF_DATASETS_CACHE": str(work / "hf_datasets"), "ALIGNLAB_BENCH": "1"}
    import torch
    import transformers
    import trl

    info = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, "
            f"{os.cpu_count()} CPUs", "torch": torch.__version__,
            "transformers": transformers.__version__, "trl": trl.__version__,
            "threads": opts.threads, "loadavg_start": loadavg()}
    summaries = []
    names = [] if opts.report_only else opts.models.split(",")
    if names:
        smol = DPO.smol_folder()
        paths = {"smol": smol, "tiny": DPO.build_tiny(work, smol)}
    for name in names:
        summary = {**bench_model(name, paths[name], work, out_dir, env, opts), "info": info}
        (out_dir / f"{name}.json").write_text(json.dumps(summary, indent=2, default=str))
        summaries.append(summary)
    done = {s["model"] for s in summaries}  # models measured earlier keep their rows
    summaries += [json.loads((out_dir / f"{m}.json").read_text()) for m in SETTINGS
                  if m not in done and (out_dir / f"{m}.json").is_file()]
    summaries.sort(key=lambda s: list(SETTINGS).index(s["model"]))
    if opts.report_only and summaries:  # the measurement's own date, versions and load
        info = summaries[0].get("info", info)
    table = markdown(summaries, info)
    (out_dir / "results.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
