"""Reward over-optimisation with best-of-N on the alignment gym (Gao et al. 2022, best-of-n half).

    nice -n 5 python benchmarks/overoptimisation/run.py              # resumable; finished steps skipped
    nice -n 5 python benchmarks/overoptimisation/run.py --collect    # only curves, tables and plot

Steps, each skipped when its output exists:

1. proxy reward models: the ``rm`` stage from the league SFT model on the first L of the gym's noisy
   preference pairs (L in LABELS), each for about 125 optimiser steps (``epochs = 4000 / L``), lr 1e-3,
   batch 32, max length 96 / prompt 64 (the quickstart's RM settings); ``<out>/rm_<L>/``.
2. samples: N_MAX = 256 completions per prompt from the SFT model (T = 1, 48 new tokens) on the first
   ``--prompts`` held-out gym prompts, in chunks of CHUNK prompts, each chunk written atomically with
   its gold rewards: ``<out>/samples/chunk_XXXX.json``. A killed run keeps every finished chunk.
3. proxy scores: each RM scores every distinct (prompt, completion) of a chunk once;
   ``<out>/scores/rm_<L>/chunk_XXXX.json``.
4. curves: best-of-N for N = 1, 2, 4, ..., 256 (:mod:`alignlab.eval.best_of_n`) for each RM, and for
   the gold reward itself as the proxy (the ceiling); ``results/bon.json``, ``results/bon.md`` and
   ``results/overoptimisation.png`` (with PPO points from ``results/ppo.json`` when it exists).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).parent
RESULTS = HERE / "results"
SFT = "runs/league/sft/model"
GYM = "runs/league/gym"
DATA = f"{GYM}/data"
LABELS = (250, 1000, 4000)
STEP_BUDGET_PAIRS = 4000  # every RM sees 4000 pairs (125 steps of 32): epochs = 4000 / labels
N_MAX = 256
NS = tuple(2 ** k for k in range(9))  # 1 .. 256
CHUNK = 20
MAX_NEW_TOKENS = 48
GOLD_NAME = "gold (oracle)"


def rm_name(labels: int) -> str:
    return f"rm_{labels}"


# ----------------------------------------------------------------------------- 1. reward models


def rm_recipe(out: Path) -> dict:
    """One ``rm`` stage per label budget (quickstart RM settings, equal step budget)."""
    stages = []
    for labels in LABELS:
        stages.append({
            "name": rm_name(labels), "stage": "rm", "model": {"path": SFT},
            "data": {"path": f"{DATA}/prefs.jsonl", "limit": labels},
            "eval_data": {"path": f"{DATA}/prefs_eval.jsonl"},
            "train": {"learning_rate": 1.0e-3, "epochs": STEP_BUDGET_PAIRS / labels, "batch_size": 32,
                      "max_length": 96, "max_prompt_length": 64, "log_every": 20,
                      "warmup_ratio": 0.05, "seed": 0}})
    return {"out": str(out), "stages": stages}


def train_rms(out: Path) -> None:
    """Run the RM recipe (the recipe runner skips stages with a DONE marker)."""
    out.mkdir(parents=True, exist_ok=True)
    recipe = out / "rms.yaml"
    recipe.write_text(yaml.safe_dump(rm_recipe(out), sort_keys=False))
    subprocess.run([sys.executable, "-m", "alignlab.cli", "run", str(recipe)], check=True)


# ----------------------------------------------------------------------------- 2. samples


def load_eval_prompts(count: int) -> list:
    from alignlab.config import DataSettings
    from alignlab.data.loading import load_prompts

    prompts = load_prompts(DataSettings(path=f"{DATA}/eval_prompts.jsonl"))
    if len(prompts) < count:
        raise ValueError(f"{DATA}/eval_prompts.jsonl: {len(prompts)} prompts, --prompts asks {count}")
    return prompts[:count]


def write_atomic(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def chunk_path(out: Path, kind: str, index: int) -> Path:
    return out / kind / f"chunk_{index:04d}.json"


def sample_chunks(out: Path, prompts: list, batch_size: int) -> None:
    """Generate every missing chunk (seed = chunk index) and store texts, token counts and gold."""
    from alignlab.config import GenerationSettings, ModelSettings
    from alignlab.generation.hf import HFGenerator
    from alignlab.gym import load_gym
    from alignlab.models.loading import load_causal_lm

    missing = [i for i in range(math.ceil(len(prompts) / CHUNK))
               if not chunk_path(out, "samples", i).is_file()]
    if not missing:
        return
    model, tokenizer = load_causal_lm(ModelSettings(path=SFT), for_training=False)
    generator, gym = HFGenerator(model, tokenizer), load_gym(GYM)
    for index in missing:
        start = time.time()
        chunk = prompts[index * CHUNK:(index + 1) * CHUNK]
        settings = GenerationSettings(num_samples=N_MAX, max_new_tokens=MAX_NEW_TOKENS,
                                      temperature=1.0, batch_size=batch_size, seed=index)
        groups = generator.generate(chunk, settings)
        rows = [{"prompt_index": index * CHUNK + k, "texts": [s.text for s in group],
                 "tokens": [len(s.token_ids) for s in group],
                 "gold": [gym.score(prompt, s.text).reward for s in group]}
                for k, (prompt, group) in enumerate(zip(chunk, groups))]
        write_atomic(chunk_path(out, "samples", index),
                     {"seconds": time.time() - start, "rows": rows})
        print(f"samples chunk {index}: {len(chunk)} prompts in {time.time() - start:.1f}s", flush=True)


# ----------------------------------------------------------------------------- 3. proxy scores


def load_judge(rm_dir: Path):
    from alignlab.config import ModelSettings
    from alignlab.eval.winrate import RewardJudge, rm_lengths
    from alignlab.models.loading import load_reward_model

    path = str(rm_dir / "model")
    model, tokenizer = load_reward_model(ModelSettings(path=path), for_training=False)
    max_length, max_prompt = rm_lengths(path)
    return RewardJudge(model, tokenizer, max_length, max_prompt, batch_size=256)


def score_chunks(out: Path, prompts: list, name: str) -> None:
    """Proxy scores of every sample by RM ``name``; each distinct completion of a prompt scored once."""
    chunks = sorted((out / "samples").glob("chunk_*.json"))
    todo = [c for c in chunks if not (out / "scores" / name / c.name).is_file()]
    if not todo:
        return
    judge = load_judge(out / name)
    for path in todo:
        start = time.time()
        rows = json.loads(path.read_text())["rows"]
        keys = sorted({(r["prompt_index"], t) for r in rows for t in r["texts"]})
        values = judge.score([prompts[i] for i, _ in keys], [t for _, t in keys])
        table = dict(zip(keys, values))
        scores = [[table[(r["prompt_index"], t)] for t in r["texts"]] for r in rows]
        write_atomic(out / "scores" / name / path.name, scores)
        print(f"{name} {path.name}: {len(keys)} distinct in {time.time() - start:.1f}s", flush=True)


# ----------------------------------------------------------------------------- 4. curves


def load_pool(out: Path, names: list[str]) -> tuple[list[dict], dict[str, list[list[float]]]]:
    """Sample rows of every chunk and, per RM, the proxy scores of the chunks every RM has scored."""
    rows, scores = [], {name: [] for name in names}
    for path in sorted((out / "samples").glob("chunk_*.json")):
        if not all((out / "scores" / n / path.name).is_file() for n in names):
            continue
        rows.extend(json.loads(path.read_text())["rows"])
        for name in names:
            scores[name].extend(json.loads((out / "scores" / name / path.name).read_text()))
    return rows, scores


def paired_change(pairs, n_from: int, n_to: int) -> dict:
    """Gold at n_to minus gold at n_from, paired by prompt (mean ± se)."""
    from alignlab.eval.best_of_n import expected_best_of_n
    from alignlab.eval.stats import mean_se

    stat = mean_se(expected_best_of_n(p, g, n_to).gold - expected_best_of_n(p, g, n_from).gold
                   for p, g in pairs)
    return {"from": n_from, "to": n_to, "mean": stat.mean, "se": stat.se}


def rm_info(out: Path, name: str) -> dict:
    config = yaml.safe_load((out / name / "config.yaml").read_text())
    metrics = [json.loads(x) for x in (out / name / "metrics.jsonl").read_text().splitlines() if x]
    steps = max((m.get("step", 0) for m in metrics), default=0)
    return {"labels": config["data"]["limit"], "epochs": config["train"]["epochs"], "steps": steps,
            "eval": json.loads((out / name / "eval.json").read_text())}


def styles_of(rows: list[dict]) -> list[list[str]]:
    """The gym's style label (correct, verbose, harmful_compliance, ...) of every sample."""
    from alignlab.gym import load_gym

    gym = load_gym(GYM)
    prompts = load_eval_prompts(1 + max(r["prompt_index"] for r in rows))
    return [[gym.score(prompts[r["prompt_index"]], t).style for t in r["texts"]] for r in rows]


def style_shares(proxy: list[list[float]], styles: list[list[str]], rows: list[dict],
                 n: int) -> dict:
    """Share of each gold style, and mean length in tokens, of the best-of-n choice (the unbiased
    subset weights of :func:`~alignlab.eval.best_of_n.bon_weights`, averaged over prompts)."""
    from alignlab.eval.best_of_n import bon_weights

    shares: dict[str, float] = {}
    tokens = 0.0
    for p, s, row in zip(proxy, styles, rows):
        for w, style, length in zip(bon_weights(p, n), s, row["tokens"]):
            shares[style] = shares.get(style, 0.0) + w / len(proxy)
            tokens += w * length / len(proxy)
    return {"n": n, "tokens": tokens,
            "styles": dict(sorted(shares.items(), key=lambda kv: -kv[1]))}


def curves(out: Path, names: list[str]) -> dict:
    """Best-of-N rows for each RM and the gold oracle, the gold peak, the drop after it, and what
    the best-of-N choice is (gold style shares and length) at N = 1, the peak and N_MAX."""
    from alignlab.eval.best_of_n import best_of_n_curve

    rows, scores = load_pool(out, names)
    if not rows:
        raise SystemExit(f"{out}: no chunk has samples and scores from every RM yet")
    gold = [r["gold"] for r in rows]
    styles = styles_of(rows)
    result = {"prompts": len(rows), "samples_per_prompt": N_MAX, "ns": list(NS),
              "distinct_per_prompt": sum(len(set(r["texts"])) for r in rows) / len(rows),
              "mean_tokens": sum(sum(r["tokens"]) for r in rows) / (N_MAX * len(rows)),
              "by_rm": {}}
    for name in names + [GOLD_NAME]:
        proxy = gold if name == GOLD_NAME else scores[name]
        pairs = list(zip(proxy, gold))
        curve = best_of_n_curve(pairs, NS)
        peak = max(curve, key=lambda r: r["gold_mean"])["n"]
        entry = {"rows": curve, "gold_peak_n": peak,
                 "peak_vs_1": paired_change(pairs, 1, peak),
                 "max_vs_peak": paired_change(pairs, peak, NS[-1]),
                 "choice": [style_shares(proxy, styles, rows, n) for n in sorted({1, peak, NS[-1]})]}
        if name != GOLD_NAME:
            entry["rm"] = rm_info(out, name)
        result["by_rm"][name] = entry
    return result


def fmt(mean: float, se: float, digits: int = 3) -> str:
    return f"{mean:+.{digits}f} ± {se:.{digits}f}"


def markdown(result: dict) -> str:
    """The RM table and the best-of-N table (one row per RM and N)."""
    lines = [(f"{result['prompts']} held-out prompts × {result['samples_per_prompt']} samples "
             f"(mean {result['distinct_per_prompt']:.1f} distinct completions per prompt, "
             f"{result['mean_tokens']:.1f} tokens per completion)."), "",
             ("| proxy RM | labels | epochs | steps | eval accuracy (noisy prefs) | gold peak N | "
             "gold gain N=1→peak | gold change peak→256 |"), "|---|---|---|---|---|---|---|---|"]
    for name, entry in result["by_rm"].items():
        rm = entry.get("rm")
        acc = f"{rm['eval']['accuracy']:.3f}" if rm else "–"
        head = (f"{rm['labels']} | {rm['epochs']:g} | {rm['steps']}" if rm else "– | – | –")
        up, down = entry["peak_vs_1"], entry["max_vs_peak"]
        lines.append(f"| {name} | {head} | {acc} | {entry['gold_peak_n']} | "
                     f"{fmt(up['mean'], up['se'])} | {fmt(down['mean'], down['se'])} |")
    lines += ["", ("| proxy RM | N | KL (analytic) | KL (empirical) | gold | gold − gold(N=1) | "
              "proxy | proxy − proxy(N=1) |"), "|---|---|---|---|---|---|---|---|"]
    for name, entry in result["by_rm"].items():
        for r in entry["rows"]:
            lines.append(f"| {name} | {r['n']} | {r['kl']:.3f} | {r['kl_empirical']:.3f} | "
                         f"{fmt(r['gold_mean'], r['gold_se'])} | "
                         f"{fmt(r['gold_gain_mean'], r['gold_gain_se'])} | "
                         f"{fmt(r['proxy_mean'], r['proxy_se'])} | "
                         f"{fmt(r['proxy_gain_mean'], r['proxy_gain_se'])} |")
    lines += ["", ("What best-of-N picks (share of gold styles, mean length), estimated with the same "
              "subset weights:"), "", "| proxy RM | N | tokens | styles |", "|---|---|---|---|"]
    for name, entry in result["by_rm"].items():
        for choice in entry["choice"]:
            shown = ", ".join(f"{k} {v:.2f}" for k, v in choice["styles"].items() if v >= 0.005)
            lines.append(f"| {name} | {choice['n']} | {choice['tokens']:.1f} | {shown} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- plot


def load_ppo(path: Path) -> dict | None:
    """``{rm name: [{kl, gold, proxy, label}, ...]}`` from ``path``, or None when it does not exist."""
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise TypeError(f"{path}: expected {{rm name: [{{kl, gold, proxy, label}}, ...]}}")
    for name, rows in data.items():
        for i, row in enumerate(rows):
            missing = {"kl", "gold", "proxy", "label"} - set(row)
            if missing:
                raise ValueError(f"{path}: {name}[{i}] lacks {sorted(missing)}")
    return data


def plot(bon_rows_by_rm: dict, ppo_rows_by_rm: dict | None = None,
         path: str | Path = RESULTS / "overoptimisation.png") -> None:
    """Gold (solid) and proxy (dashed) reward vs sqrt(KL), one colour per proxy RM.

    Left: change from N = 1 (proxy offsets are arbitrary; Gao et al. 2022 plot rewards relative to the
    initial policy too). Right: absolute gold reward. PPO points ``{kl, gold, proxy, label}`` are
    plotted at sqrt(kl): gold as filled circles, proxy as open circles, relative to the same RM's
    best-of-N N = 1 values (the SFT policy on these prompts). The gold-oracle curve (gold reward as
    its own proxy, the ceiling) is drawn at its empirical KL: the gold reward takes a handful of
    values, so the analytic KL would overstate it by up to 2.5x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rel, absolute) = plt.subplots(1, 2, figsize=(12, 4.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (name, rows) in enumerate(bon_rows_by_rm.items()):
        oracle = name == GOLD_NAME
        colour = "0.45" if oracle else colours[k % len(colours)]
        # the gold reward takes few values, so the analytic KL overstates the oracle's KL
        x = [math.sqrt(r["kl_empirical"]) if oracle else r["sqrt_kl"] for r in rows]
        name = f"{name}, x = empirical KL" if oracle else name
        rel.errorbar(x, [r["gold_gain_mean"] for r in rows], [r["gold_gain_se"] for r in rows],
                     color=colour, ls="-", marker=".", capsize=2, label=f"{name}: gold")
        if not oracle:
            rel.plot(x, [r["proxy_gain_mean"] for r in rows], color=colour, ls="--",
                     label=f"{name}: proxy")
        absolute.errorbar(x, [r["gold_mean"] for r in rows], [r["gold_se"] for r in rows],
                          color=colour, ls="-", marker=".", capsize=2, label=name)
    _plot_ppo(rel, absolute, bon_rows_by_rm, ppo_rows_by_rm or {}, colours)
    rel.set(xlabel="sqrt(KL) (nats^0.5)", ylabel="reward − reward at N = 1",
            title="best-of-N: gold (solid) and proxy (dashed), change from N = 1")
    absolute.set(xlabel="sqrt(KL) (nats^0.5)", ylabel="gold reward",
                 title="best-of-N: gold reward")
    for ax in (rel, absolute):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_ppo(rel, absolute, bon_rows_by_rm: dict, ppo_rows_by_rm: dict, colours: list) -> None:
    names = list(bon_rows_by_rm)
    for name, rows in ppo_rows_by_rm.items():
        if name not in bon_rows_by_rm:
            raise ValueError(f"ppo.json: RM {name!r} has no best-of-N curve ({names})")
        colour = colours[names.index(name) % len(colours)]
        base = bon_rows_by_rm[name][0]
        if base["n"] != 1:
            raise ValueError(f"best-of-N rows of {name!r} must start at N = 1 to plot PPO points")
        x = [math.sqrt(max(float(r["kl"]), 0.0)) for r in rows]
        rel.scatter(x, [r["gold"] - base["gold_mean"] for r in rows], color=colour, marker="o",
                    label=f"{name}: PPO gold")
        rel.scatter(x, [r["proxy"] - base["proxy_mean"] for r in rows], facecolors="none",
                    edgecolors=colour, marker="o", label=f"{name}: PPO proxy")
        absolute.scatter(x, [r["gold"] for r in rows], color=colour, marker="o",
                         label=f"{name}: PPO")
        for xi, r in zip(x, rows):
            absolute.annotate(str(r["label"]), (xi, r["gold"]), fontsize=6)


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/overopt", help="run folder (RMs, samples, scores)")
    parser.add_argument("--prompts", type=int, default=200, help="held-out prompts to sample")
    parser.add_argument("--batch-size", type=int, default=256, help="generation rows per batch")
    parser.add_argument("--collect", action="store_true", help="only curves, tables and plot")
    args = parser.parse_args()
    out = Path(args.out)
    names = [rm_name(labels) for labels in LABELS]
    if not args.collect:
        import torch

        torch.set_num_threads(min(2, torch.get_num_threads()))
        train_rms(out)
        prompts = load_eval_prompts(args.prompts)
        sample_chunks(out, prompts, args.batch_size)
        for name in names:
            score_chunks(out, prompts, name)
    result = curves(out, names)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bon.json").write_text(json.dumps(result, indent=1))
    (RESULTS / "bon.md").write_text(markdown(result))
    plot({name: entry["rows"] for name, entry in result["by_rm"].items()},
         load_ppo(RESULTS / "ppo.json"), RESULTS / "overoptimisation.png")
    print(markdown(result))


if __name__ == "__main__":
    main()
