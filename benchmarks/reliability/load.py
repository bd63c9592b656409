"""Long-run load (issue 19, part 6): a long labelling job and a long online run, watched for memory
growth and slowdown.

    OMP_NUM_THREADS=1 python benchmarks/reliability/load.py            # both runs, then load.json/.md
    OMP_NUM_THREADS=1 python benchmarks/reliability/load.py --only label --pairs 2000   # a short probe

Needs the preference league's gym and SFT model (``python benchmarks/league/run.py``, or just
``alignlab run benchmarks/league/base.yaml``); the labelling judge is the gym feedback model
(``alignlab gym feedback --gym runs/league/gym --out runs/cai/feedback``) when it exists, else the
gym's base model.

* **label**: ``alignlab label`` on ``--pairs`` distinct gym preference pairs (two base-distribution
  replies to a training prompt, drawn with the gym's own sampler; ``data_label`` = the gold
  preference), both option orders, one gym principle per pair, batch 64, 64 pairs per flushed chunk.
* **online**: ``alignlab online``, RLOO from the league's SFT model against the gym's gold reward,
  ``--iterations`` iterations of 4 prompts x 2 samples (32 new tokens, T = 1), a checkpoint every
  100 iterations, metrics every 10.

Each run is a child process. The parent samples, once a second, the child's ``VmRSS`` and ``VmHWM``
(``/proc/<pid>/status``), the 1-minute load average and how far the child is (the last row of its
``metrics.jsonl``). The run is cut into ``--windows`` equal windows of items (pairs or iterations);
for each window: the wall time per item (from the child's own metrics timestamps) and the peak RSS
sampled while the child was in it. ``load.json`` keeps every sample; ``load.md`` the window table;
``load.png`` the curves (when matplotlib is installed).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def alignlab_command() -> list[str]:
    """The ``alignlab`` console script of this interpreter's environment."""
    script = Path(sys.executable).parent / "alignlab"
    return [str(script)] if script.exists() else [sys.executable, "-c",
                                                   "from alignlab.cli import app; app()"]


# ----------------------------------------------------------------------------- inputs


def write_pairs(gym_dir: Path, n: int, path: Path, seed: int = 0) -> int:
    """``n`` distinct gym preference pairs (chosen = the gold-preferred reply) as alignlab JSONL."""
    from alignlab.config import DataSettings
    from alignlab.data.loading import load_prompts
    from alignlab.data.records import PreferencePair, record_to_dict
    from alignlab.gym.corpus import draw_pair
    from alignlab.gym.loader import load_gym

    gym = load_gym(gym_dir)
    prompts = load_prompts(DataSettings(path=str(gym_dir / "data" / "train_prompts.jsonl")))
    rng = random.Random(f"load-{seed}")
    seen, rows = set(), []
    tries = 0
    while len(rows) < n:
        tries += 1
        if tries > 50 * n:
            raise RuntimeError(f"only {len(rows)} distinct pairs after {tries} draws")
        pair = draw_pair(rng, gym.world, prompts[tries % len(prompts)], 0.0)
        if pair.a == pair.b:
            continue
        chosen, rejected = (pair.a, pair.b) if pair.gold_a.reward >= pair.gold_b.reward else (pair.b, pair.a)
        key = (repr(pair.prompt), chosen, rejected)
        if key in seen:
            continue
        seen.add(key)
        label = 0.5 if pair.gold_a.reward == pair.gold_b.reward else 1.0
        rows.append(record_to_dict(PreferencePair(pair.prompt, chosen, rejected, label)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tries


def label_config(judge: Path, pairs: Path, out: Path) -> dict:
    return {"stage": "label", "judge": {"model": {"path": str(judge)}, "max_length": 256,
                                        "batch_size": 64},
            "data": {"path": str(pairs)}, "constitution": "gym", "flush_every": 64, "out": str(out)}


def online_config(league: Path, iterations: int, out: Path) -> dict:
    gym = league / "gym"
    return {"stage": "online", "algorithm": "rloo", "model": {"path": str(league / "sft" / "model")},
            "prompts": {"path": str(gym / "data" / "train_prompts.jsonl")},
            "reward": [{"kind": "gym_gold", "gym": str(gym)}],
            "generation": {"max_new_tokens": 32, "temperature": 1.0, "batch_size": 64,
                           "num_samples": 2},
            "train": {"max_steps": iterations, "batch_size": 4, "learning_rate": 5.0e-5,
                      "lr_schedule": "constant", "max_length": 128, "max_prompt_length": 64,
                      "log_every": 10, "save_every": 100, "seed": 0},
            "rl": {"kl_coef": 0.1}, "out": str(out)}


# ----------------------------------------------------------------------------- watching a child


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of ``pid`` in MiB (empty once it has exited)."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return out


def progress_of(row: dict, key: str) -> float | None:
    """Items done at a metrics row: ``labelled`` (label), or the iteration ``step`` (online; rows
    at step 0, such as the data report, do not count)."""
    value = row.get(key)
    if value is None or (key == "step" and value <= 0):
        return None
    return float(value)


def last_progress(metrics: Path, key: str) -> float | None:
    """Items done at the last row of ``metrics.jsonl`` that says."""
    try:
        lines = metrics.read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            done = progress_of(json.loads(line), key)
        except json.JSONDecodeError:
            continue
        if done is not None:
            return done
    return None


def watch(command: list[str], out: Path, progress_key: str, interval: float = 1.0) -> dict:
    """Run ``command``, sampling its memory, the load and its progress every ``interval`` s."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS", "1")}
    out.parent.mkdir(parents=True, exist_ok=True)
    samples = []
    with open(out.parent / f"{out.name}.console.txt", "w") as console:
        start = time.time()
        child = subprocess.Popen(command, stdout=console, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        while child.poll() is None:
            status = proc_status(child.pid)
            if status:
                samples.append({"t": round(time.time() - start, 2),
                                "rss_mb": round(status.get("VmRSS", 0.0), 1),
                                "hwm_mb": round(status.get("VmHWM", 0.0), 1),
                                "load1": round(os.getloadavg()[0], 2),
                                "done": last_progress(out / "metrics.jsonl", progress_key)})
            time.sleep(interval)
        wall = time.time() - start
    return {"command": command, "returncode": child.returncode, "wall_s": round(wall, 1),
            "samples": samples}


# ----------------------------------------------------------------------------- analysis


def progress_rows(metrics: Path, key: str) -> list[tuple[float, float]]:
    """``(items done, child seconds)`` at each logged row that says how far the child is."""
    rows = []
    for line in metrics.read_text().splitlines():
        row = json.loads(line)
        done = progress_of(row, key)
        if done is not None and row.get("time") is not None:
            rows.append((done, float(row["time"])))
    rows.sort()
    return rows


def windows(rows: list[tuple[float, float]], samples: list[dict], total: float, count: int) -> list[dict]:
    """Per window of items: seconds per item (child clock) and the peak RSS sampled in it."""
    result = []
    for k in range(count):
        low, high = total * k / count, total * (k + 1) / count
        inside = [(n, t) for n, t in rows if low <= n <= high]
        before = [(n, t) for n, t in rows if n <= low]
        first = before[-1] if before else (inside[0] if inside else None)
        last = inside[-1] if inside else None
        per_item = None
        if first is not None and last is not None and last[0] > first[0]:
            per_item = (last[1] - first[1]) / (last[0] - first[0])
        in_window = [s for s in samples if s["done"] is not None and low <= s["done"] < high] or \
                    ([s for s in samples if s["done"] is not None and s["done"] >= high]
                     if k == count - 1 else [])
        result.append({"items": [round(low), round(high)],
                       "s_per_item": round(per_item, 5) if per_item is not None else None,
                       "peak_rss_mb": max((s["rss_mb"] for s in in_window), default=None),
                       "median_rss_mb": round(statistics.median([s["rss_mb"] for s in in_window]), 1)
                       if in_window else None,
                       "median_load1": round(statistics.median([s["load1"] for s in in_window]), 2)
                       if in_window else None})
    return result


def rss_slope(samples: list[dict]) -> float | None:
    """Least-squares RSS slope (MiB per minute) over the second half of the run's samples."""
    half = samples[len(samples) // 2:]
    if len(half) < 3:
        return None
    ts = [s["t"] for s in half]
    ys = [s["rss_mb"] for s in half]
    mt, my = statistics.fmean(ts), statistics.fmean(ys)
    var = sum((t - mt) ** 2 for t in ts)
    return round(60 * sum((t - mt) * (y - my) for t, y in zip(ts, ys)) / var, 3) if var else None


def summarise(name: str, result: dict, out: Path, key: str, total: int, count: int) -> dict:
    rows = progress_rows(out / "metrics.jsonl", key)
    win = windows(rows, result["samples"], total, count)
    rss = [s["rss_mb"] for s in result["samples"]]
    loads = [s["load1"] for s in result["samples"]]
    speeds = [w["s_per_item"] for w in win if w["s_per_item"] is not None]
    summary = {"name": name, "items": total, "returncode": result["returncode"],
               "wall_s": result["wall_s"], "peak_rss_mb": max(rss, default=None),
               "final_hwm_mb": result["samples"][-1]["hwm_mb"] if result["samples"] else None,
               "rss_first_window_mb": win[0]["peak_rss_mb"], "rss_last_window_mb": win[-1]["peak_rss_mb"],
               "median_rss_first_window_mb": win[0]["median_rss_mb"],
               "median_rss_last_window_mb": win[-1]["median_rss_mb"],
               "rss_slope_second_half_mb_per_min": rss_slope(result["samples"]),
               "s_per_item_first_window": speeds[0] if speeds else None,
               "s_per_item_last_window": speeds[-1] if speeds else None,
               "last_over_first_speed": round(speeds[-1] / speeds[0], 3) if len(speeds) > 1 else None,
               "load1_min_median_max": [min(loads), round(statistics.median(loads), 2), max(loads)]
               if loads else None,
               "windows": win}
    return summary


# ----------------------------------------------------------------------------- report


def markdown(report: dict) -> str:
    lines = ["## Long-run load (issue 19, part 6)", "",
             f"Measured {report['date']} with `{report['command']}` on the shared 2-core machine "
             f"(`OMP_NUM_THREADS=1`; the other core and part of this one were used by other jobs: "
             f"1-minute load per run below).", ""]
    for run in report["runs"]:
        unit = "pair" if run["name"].startswith("label") else "iteration"
        lines += [f"### {run['name']}: {run['items']} {unit}s, {run['wall_s']} s wall, exit {run['returncode']}",
                  "", f"- config: `{run['config']}`",
                  f"- peak RSS {run['peak_rss_mb']} MiB (VmHWM at the end {run['final_hwm_mb']} MiB); "
                  f"peak RSS in the first window {run['rss_first_window_mb']} MiB, in the last "
                  f"{run['rss_last_window_mb']} MiB; RSS slope over the second half "
                  f"{run['rss_slope_second_half_mb_per_min']} MiB/min",
                  f"- time per {unit}: first window {run['s_per_item_first_window']} s, last "
                  f"{run['s_per_item_last_window']} s (last / first {run['last_over_first_speed']})",
                  f"- 1-minute load during the run (min / median / max): {run['load1_min_median_max']}",
                  "", f"| window ({unit}s) | s per {unit} | peak RSS (MiB) | median RSS (MiB) | "
                      "median load |", "|---|---|---|---|---|"]
        for w in run["windows"]:
            lines.append(f"| {w['items'][0]}–{w['items'][1]} | {w['s_per_item']} | {w['peak_rss_mb']} | "
                         f"{w.get('median_rss_mb')} | {w['median_load1']} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    runs = report["runs"]
    fig, axes = plt.subplots(2, len(runs), figsize=(5 * len(runs), 6), squeeze=False)
    for col, run in enumerate(runs):
        samples = report["samples"][run["name"]]
        axes[0][col].plot([s["t"] for s in samples], [s["rss_mb"] for s in samples], lw=1)
        axes[0][col].set_title(f"{run['name']}: RSS (MiB) vs seconds")
        mids = [(w["items"][0] + w["items"][1]) / 2 for w in run["windows"] if w["s_per_item"]]
        axes[1][col].plot(mids, [w["s_per_item"] for w in run["windows"] if w["s_per_item"]], "o-")
        axes[1][col].set_title(f"{run['name']}: seconds per item, by window")
        axes[1][col].set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return True


def resummarise(path: Path, out: Path, count: int) -> None:
    """Recompute the window tables of a finished report (``path``) from its samples and the run
    folders under ``out`` (after a change to the analysis); rewrites the .json and .md."""
    report = json.loads(path.read_text())
    for i, run in enumerate(report["runs"]):
        key = "labelled" if run["name"].startswith("label") else "step"
        result = {"returncode": run["returncode"], "wall_s": run["wall_s"],
                  "samples": report["samples"][run["name"]]}
        summary = summarise(run["name"], result, out / run["name"], key, run["items"], count)
        report["runs"][i] = {**summary, "config": run["config"]}
    path.write_text(json.dumps(report, indent=1))
    path.with_suffix(".md").write_text(markdown(report))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--league", default="runs/league", help="the league folder (gym + sft)")
    parser.add_argument("--judge", default="runs/cai/feedback/model",
                        help="labelling judge (falls back to the gym base model)")
    parser.add_argument("--out", default="runs/reliability/load")
    parser.add_argument("--pairs", type=int, default=10_000)
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--windows", type=int, default=10)
    parser.add_argument("--only", choices=["label", "online"])
    parser.add_argument("--results", default=str(HERE), help="where load.json / load.md go")
    parser.add_argument("--stem", help="output file name without suffix (default load, or "
                                       "load_<only> with --only)")
    args = parser.parse_args()
    league, out = ROOT / args.league, ROOT / args.out
    judge = ROOT / args.judge if (ROOT / args.judge).is_dir() else league / "gym" / "base_model"
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "command": "OMP_NUM_THREADS=1 python benchmarks/reliability/load.py " + " ".join(sys.argv[1:]),
              "runs": [], "samples": {}}
    plans = []
    if args.only in (None, "label"):
        pairs = out / "pairs.jsonl"
        draws = write_pairs(league / "gym", args.pairs, pairs)
        print(f"{args.pairs} distinct pairs from {draws} draws -> {pairs}", flush=True)
        plans.append(("label", label_config(judge, pairs, out / "label"), "labelled", args.pairs))
    if args.only in (None, "online"):
        plans.append(("online", online_config(league, args.iterations, out / "online"), "step",
                      args.iterations))
    for name, config, key, total in plans:
        run_out = Path(config["out"])
        shutil.rmtree(run_out, ignore_errors=True)  # a fresh run, not a resumed one
        config_path = out / f"{name}.yaml"
        config_path.parent.mkdir(parents=True, exist_ok=True)
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        command = alignlab_command() + [config["stage"], "--config", str(config_path)]
        print(f"{name}: {' '.join(command)}", flush=True)
        result = watch(command, run_out, key)
        summary = summarise(name, result, run_out, key, total, args.windows)
        summary["config"] = str(config_path.relative_to(ROOT) if config_path.is_relative_to(ROOT)
                                else config_path)
        report["runs"].append(summary)
        report["samples"][name] = result["samples"]
        print(json.dumps({k: v for k, v in summary.items() if k != "windows"}), flush=True)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    stem = args.stem or ("load" if args.only is None else f"load_{args.only}")
    (results / f"{stem}.json").write_text(json.dumps(report, indent=1))
    (results / f"{stem}.md").write_text(markdown(report))
    if plot(report, results / f"{stem}.png"):
        print(f"plot: {results / f'{stem}.png'}")
    print(f"wrote {results / f'{stem}.json'} and {stem}.md")


if __name__ == "__main__":
    main()
