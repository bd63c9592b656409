"""Online RL speed: alignlab's ``online`` stage vs TRL 1.16 ``GRPOTrainer`` / ``RLOOTrainer``.

    benchmarks/trl_dpo/.venv/bin/python benchmarks/trl_online/run.py             # all four runs
    benchmarks/trl_dpo/.venv/bin/python benchmarks/trl_online/run.py --algos grpo --tools trl
    benchmarks/trl_dpo/.venv/bin/python benchmarks/trl_online/run.py --report-only

Runs the workers one after the other, each in its own process (for each algorithm: alignlab, then
TRL), appending each result to ``results/<tool>_<algo>.jsonl``; then rebuilds ``results/results.json``
and ``results/results.md`` from the newest line of every such file (so a partial rerun keeps the
other rows; each row carries its own date and load average).
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
RESULTS = HERE / "results"
TRL_PYTHON = HERE.parent / "trl_dpo" / ".venv" / "bin" / "python"
WORKERS = {"trl": "worker_trl.py", "alignlab": "worker_alignlab.py"}
UNAVAILABLE = 3  # worker_alignlab.py's exit status when `alignlab online` does not exist


def result_file(tool: str, algo: str) -> Path:
    return RESULTS / f"{tool}_{algo}.jsonl"


def run_worker(tool: str, algo: str, work: Path, threads: int) -> None:
    """One worker process; its output goes to WORK/<tool>_<algo>.log."""
    python = str(TRL_PYTHON) if tool == "trl" and TRL_PYTHON.is_file() else sys.executable
    cmd = [python, str(HERE / WORKERS[tool]), algo, "--out", str(result_file(tool, algo)),
           "--work", str(work), "--threads", str(threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": "", "TQDM_DISABLE": "1"}
    log_path = work / f"{tool}_{algo}.log"
    print(f"{tool} {algo}: load avg {os.getloadavg()[0]:.2f}, running ...", flush=True)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                              check=False).returncode
    print(f"{tool} {algo}: exit {code} after {time.perf_counter() - start:.0f}s", flush=True)
    if code not in (0, UNAVAILABLE):
        tail = "\n".join(log_path.read_text().splitlines()[-30:])
        raise RuntimeError(f"{tool} {algo} failed (exit {code}); {log_path} ends:\n{tail}")


def latest(tool: str, algo: str) -> dict | None:
    """The newest result line of one tool/algorithm, or None."""
    path = result_file(tool, algo)
    if not path.is_file():
        return None
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return json.loads(lines[-1]) if lines else None


def comparable_steps_per_s(row: dict) -> float:
    """Wall-clock steps/s between step ends (TRL: optimiser-step stamps; alignlab: log-row times,
    or the sum of ``time/iteration`` when the rows carry no ``time``)."""
    return row.get("steps_per_s_wall") or row["steps_per_s"]


def ratios(ours: dict, theirs: dict) -> dict:
    out = {"steps_per_s": comparable_steps_per_s(ours) / comparable_steps_per_s(theirs),
           "peak_rss": ours["peak_rss_gb"] / theirs["peak_rss_gb"]}
    if ours.get("steps_per_cpu_s") and theirs.get("steps_per_cpu_s"):
        out["steps_per_cpu_s"] = ours["steps_per_cpu_s"] / theirs["steps_per_cpu_s"]
    return out


def collect(algos: list[str]) -> dict:
    runs, compare = {}, {}
    for algo in algos:
        rows = {tool: latest(tool, algo) for tool in WORKERS}
        runs[algo] = rows
        al, trl = rows["alignlab"], rows["trl"]
        if al and trl and al.get("status") == "ok" and trl.get("status") == "ok":
            compare[algo] = ratios(al, trl)
    return {"runs": runs, "alignlab_over_trl": compare}


def fmt(value, spec: str = ".2f") -> str:
    return "–" if value is None else format(value, spec)


def table_row(algo: str, row: dict) -> str:
    if row.get("status") != "ok":
        return f"| {algo} | {row['tool']} | not run: {row.get('reason', row.get('status'))} |" \
               + " |" * 11
    s = row["time_split_s"]
    trl_like = comparable_steps_per_s(row)
    load = row.get("loadavg", {})
    loads = [v[0] for v in load.values() if isinstance(v, list) and v]
    label = row["tool"]
    if row["tool"] == "trl":
        label += f" ({'GRPOTrainer' if algo == 'grpo' else 'RLOOTrainer'}, beta "
        label += f"{row.get('settings', {}).get('beta')})"
    else:
        label += f" (kl_coef {row.get('config', {}).get('rl', {}).get('kl_coef')})"
    means = row.get("log_means", {})
    length = means.get("completions/mean_length", means.get("response_length"))
    return (f"| {algo} | {label} | {trl_like:.3f} | {1 / trl_like:.2f} | {fmt(length, '.1f')} | "
            f"{fmt(row.get('steps_per_cpu_s'), '.3f')} | {s['generate']:.2f} | {s['score']:.3f} | "
            f"{s['logprob']:.2f} | {s['update']:.2f} | {s['other']:.2f} | "
            f"{row['peak_rss_gb']:.2f} | {fmt(min(loads) if loads else None, '.1f')}–"
            f"{fmt(max(loads) if loads else None, '.1f')} | {row.get('date', '')} |")


def markdown(report: dict) -> str:
    header = ("| algo | run | steps/s | s/step | mean completion tokens | steps per CPU-s | "
              "generate s | score s | logprob s | update s | other s | peak RSS GB | "
              "load avg (1 min) | date |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for algo, rows in report["runs"].items():
        for tool in ("alignlab", "trl"):
            if rows.get(tool):
                lines.append(table_row(algo, rows[tool]))
    legend = ("Time split: mean seconds per timed step. generate = prompt rendering/tokenising + "
              "`model.generate` + decoding; score = the gold reward; logprob = no-grad forwards "
              "(reference; RLOO/alignlab also the policy's old log-probs); update = grad forward + "
              "loss + backward + optimiser; other = the rest of the step.")
    lines += ["", legend, ""]
    if report["alignlab_over_trl"]:
        lines += ["| algo | alignlab / TRL steps/s | steps per CPU-s | peak RSS |", "|---|---|---|---|"]
        for algo, r in report["alignlab_over_trl"].items():
            lines.append(f"| {algo} | {r['steps_per_s']:.2f}× | "
                         f"{fmt(r.get('steps_per_cpu_s'))}{'×' if r.get('steps_per_cpu_s') else ''}"
                         f" | {r['peak_rss']:.2f}× |")
    versions = {}
    for rows in report["runs"].values():
        for row in rows.values():
            if row and row.get("versions"):
                versions.update({k: v for k, v in row["versions"].items() if v is not None})
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))]
    trl_rows = [r for rows in report["runs"].values() for r in rows.values()
                if r and r.get("tool") == "trl" and r.get("status") == "ok"]
    checks = [f"{r['algo']}: {r['token_check']['identical']}/{r['token_check']['rows']}"
              for r in trl_rows]
    if checks:
        lines += ["", "Token check (TRL's prompt ids vs alignlab's `encode_prompt`, every generated "
                  "row): " + "; ".join(checks)]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algos", default="grpo,rloo")
    parser.add_argument("--tools", default="alignlab,trl")
    parser.add_argument("--work", default="/tmp/alignlab_trl_online")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--report-only", action="store_true")
    opts = parser.parse_args()
    algos = [a for a in opts.algos.split(",") if a]
    tools = [t for t in opts.tools.split(",") if t]
    bad = [a for a in algos if a not in ("grpo", "rloo")] + [t for t in tools if t not in WORKERS]
    if bad:
        parser.error(f"unknown algorithm/tool {bad}; algos: grpo, rloo; tools: alignlab, trl")
    work = Path(opts.work)
    work.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(exist_ok=True)
    if not opts.report_only:
        for algo in algos:
            for tool in [t for t in ("alignlab", "trl") if t in tools]:
                run_worker(tool, algo, work, opts.threads)
    report = collect(["grpo", "rloo"])
    (RESULTS / "results.json").write_text(json.dumps(report, indent=2, default=str))
    text = markdown(report)
    (RESULTS / "results.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
