"""alignlab side of the online-RL speed comparison: one ``alignlab online`` run through the CLI.

    benchmarks/trl_dpo/.venv/bin/python benchmarks/trl_online/worker_alignlab.py {grpo,rloo} \
        --out benchmarks/trl_online/results/alignlab_grpo.jsonl

Writes the stage config (the same setup as worker_trl.py gives TRL), runs
``python -m alignlab.cli online --config CFG.yaml`` in a child process (this interpreter, so the same
torch), waits for it with ``os.wait4`` (peak RSS = the child's ``ru_maxrss``, CPU = its user + sys
time) and reads the run's ``metrics.jsonl``: one row per iteration with ``step`` and
``time/generate``, ``time/score``, ``time/logprob``, ``time/update``, ``time/iteration`` (seconds).

Speed over the timed iterations (2 warm-up + 20 timed by default: steps 3..22):

- ``steps_per_s`` = timed steps / sum of their ``time/iteration``;
- ``steps_per_s_wall`` = timed steps / (row ``time`` of the last step - row ``time`` of the last
  warm-up step), the wall clock between log rows (like TRL's step-end stamps, it includes whatever
  happens between iterations, such as logging); present when the rows carry ``time``.

If the ``online`` command is not there yet, one line with ``status: unavailable`` is written instead
and the exit status is 3.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml
from common import shared_parser

KL_DEFAULT = {"grpo": 0.04, "rloo": 0.05}  # rloo: TRL RLOOConfig's default beta, to match it
TIME_KEYS = ("generate", "score", "logprob", "update", "iteration")


def stage_config(opts, out_dir: Path) -> dict:
    """The ``online`` stage config of the shared setup."""
    kl = KL_DEFAULT[opts.algo] if opts.kl_coef is None else opts.kl_coef
    return {
        "stage": "online", "algorithm": opts.algo,
        "model": {"path": opts.model},
        "prompts": {"path": opts.prompts},
        "reward": [{"kind": "gym_gold", "gym": opts.gym}],
        "generation": {"num_samples": opts.k, "max_new_tokens": opts.max_new_tokens,
                       "temperature": 1.0, "batch_size": 256},
        "train": {"learning_rate": opts.lr, "max_steps": opts.warmup + opts.steps,
                  "batch_size": opts.prompts_per_step, "log_every": 1, "seed": opts.seed},
        "rl": {"kl_coef": kl},
        "out": str(out_dir),
    }


def cli_command(config_path: Path | None) -> list[str]:
    tail = ["--config", str(config_path)] if config_path else ["--help"]
    return [sys.executable, "-m", "alignlab.cli", "online", *tail]


def online_available(env: dict) -> tuple[bool, str]:
    """Whether ``alignlab online`` exists (its ``--help`` exits 0)."""
    proc = subprocess.run(cli_command(None), env=env, capture_output=True, text=True,
                          check=False)
    if proc.returncode == 0:
        return True, ""
    reason = (proc.stderr or proc.stdout).strip().splitlines()
    return False, f"`alignlab online --help` exited {proc.returncode}: " + " | ".join(reason[-3:])


def child_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a live process (all its threads), from /proc/PID/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def count_iteration_rows(metrics_path: Path) -> int:
    try:
        text = metrics_path.read_text()
    except OSError:
        return 0
    return sum('"time/iteration"' in line for line in text.splitlines())


def run_cli(config_path: Path, log_path: Path, metrics_path: Path, env: dict) -> dict:
    """Run the CLI in a child process; its wall time, peak RSS and CPU time, plus the child's CPU
    time when each iteration row appeared in metrics.jsonl (polled every 50 ms)."""
    start = time.perf_counter()
    cpu_at_row: list[float | None] = []
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cli_command(config_path), stdout=log, stderr=subprocess.STDOUT,
                                env=env)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            cpu = child_cpu_s(proc.pid)
            while count_iteration_rows(metrics_path) > len(cpu_at_row):
                cpu_at_row.append(cpu)
            time.sleep(0.05)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = log_path.read_text().splitlines()[-25:]
        raise RuntimeError(f"alignlab online failed (exit {code}); {log_path} ends:\n"
                           + "\n".join(tail))
    return {"wall_s": time.perf_counter() - start, "peak_rss_gb": usage.ru_maxrss * 1024 / 1e9,
            "cpu_s": usage.ru_utime + usage.ru_stime, "cpu_s_at_iteration_row": cpu_at_row}


def iteration_rows(metrics_path: Path) -> list[dict]:
    """Rows of metrics.jsonl that carry ``time/iteration``, by step (1-based)."""
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path}: the run wrote no metrics")
    rows = []
    for number, line in enumerate(metrics_path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{metrics_path}:{number}: not JSON ({exc})") from None
        if "time/iteration" in row:
            if not isinstance(row.get("step"), int):
                raise ValueError(f"{metrics_path}:{number}: iteration row without an integer 'step'")
            rows.append(row)
    rows.sort(key=lambda r: r["step"])
    if rows and rows[0]["step"] == 0:  # 0-based steps: shift so warm-up counting is the same
        rows = [{**r, "step": r["step"] + 1} for r in rows]
    return rows


def summarise(rows: list[dict], warmup: int, steps: int, metrics_path: Path) -> dict:
    """steps/s over steps warmup+1 .. warmup+steps and the mean per-iteration split."""
    timed = [r for r in rows if warmup < r["step"] <= warmup + steps]
    if len(timed) != steps:
        raise ValueError(f"{metrics_path}: expected iteration rows for steps {warmup + 1}.."
                         f"{warmup + steps}, found {len(timed)}")
    split = {k: sum(float(r.get(f"time/{k}", 0.0)) for r in timed) / steps for k in TIME_KEYS}
    split["other"] = split["iteration"] - sum(split[k] for k in TIME_KEYS[:-1])
    out = {"timed_steps": steps, "window_s": split["iteration"] * steps,
           "steps_per_s": 1.0 / split["iteration"], "time_split_s": split}
    before = [r for r in rows if r["step"] == warmup]
    if before and "time" in before[0] and all("time" in r for r in timed):
        wall = timed[-1]["time"] - before[0]["time"]
        out.update(window_wall_s=wall, steps_per_s_wall=steps / wall)
    numeric = [k for k in timed[0] if isinstance(timed[0][k], (int, float)) and k != "step"
               and not k.startswith("time")]
    out["log_means"] = {k: sum(float(r[k]) for r in timed) / steps for k in numeric
                        if all(isinstance(r.get(k), (int, float)) for r in timed)}
    out["steps"] = [{k: v for k, v in r.items() if k == "step" or k.startswith("time")}
                    for r in rows]
    return out


def versions() -> dict:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    info = {"python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count()}
    for name in ("alignlab", "torch", "transformers", "accelerate"):
        try:
            info[name] = version(name)
        except PackageNotFoundError:
            info[name] = None
    return info


def run(opts) -> tuple[dict, int]:
    work = Path(opts.work) / f"alignlab_{opts.algo}"
    work.mkdir(parents=True, exist_ok=True)
    threads = str(opts.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
           "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}
    base = {"tool": "alignlab", "algo": opts.algo}
    ok, reason = online_available(env)
    if not ok:
        return {**base, "status": "unavailable", "reason": reason}, 3
    out_dir = work / "run"
    if out_dir.exists():
        shutil.rmtree(out_dir)  # a fresh run folder: metrics.jsonl must hold this run only
    config = stage_config(opts, out_dir)
    config_path = work / "config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    load_start = list(os.getloadavg())
    metrics_path = out_dir / "metrics.jsonl"
    proc = run_cli(config_path, work / "cli.log", metrics_path, env)
    summary = summarise(iteration_rows(metrics_path), opts.warmup, opts.steps, metrics_path)
    cpu = proc["cpu_s_at_iteration_row"]
    last = opts.warmup + opts.steps - 1  # 0-based index of the last timed iteration row
    if len(cpu) > last and None not in (cpu[opts.warmup - 1], cpu[last]):
        summary["cpu_s_window"] = cpu[last] - cpu[opts.warmup - 1]
        summary["steps_per_cpu_s"] = opts.steps / summary["cpu_s_window"]
    return {**base, "status": "ok", **summary, **proc, "config": config,
            "loadavg": {"start": load_start, "end": list(os.getloadavg())}}, 0


def parse_args(argv=None):
    parser = shared_parser(__doc__.splitlines()[0])
    parser.add_argument("--kl-coef", type=float, default=None,
                        help="default: 0.04 for grpo, 0.05 (TRL's RLOO default) for rloo")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    opts = parse_args(argv)
    result, code = run(opts)
    result.update({"date": time.strftime("%Y-%m-%d %H:%M:%S"), "versions": versions(),
                   "command": " ".join([sys.executable, *sys.argv])})
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as fh:
        fh.write(json.dumps(result, default=str) + "\n")
    if code:
        print(f"alignlab {opts.algo}: not run ({result['reason']})", flush=True)
        return code
    s = result["time_split_s"]
    print(f"alignlab {opts.algo}: {result['steps_per_s']:.3f} steps/s over {opts.steps} steps; "
          f"per step generate {s['generate']:.2f}s score {s['score']:.3f}s logprob "
          f"{s['logprob']:.2f}s update {s['update']:.2f}s other {s['other']:.2f}s; "
          f"peak RSS {result['peak_rss_gb']:.2f} GB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
