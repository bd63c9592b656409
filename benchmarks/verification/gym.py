"""Verification in the gym's reasoning world: ORM vs PRM vs majority voting, accuracy vs N.

Trains an outcome and a process reward model from the gym base model on the reasoning world's
labelled solutions (``data/reasoning/train_steps.jsonl``: 600 problems x 4 sampled solutions with
gold step labels), then runs ``alignlab verify`` on the 100 held-out problems x 64 solutions
(``test_steps.jsonl``): majority vote, ORM best-of-N, PRM best-of-N (product and min), verifier-
weighted voting and the oracle, N = 1..64, plus the trace-error rate among correct picks.

    python benchmarks/verification/gym.py --gym runs/league/gym --out runs/verification

Writes ``<out>/verify/`` (curve.json, verify.md, accuracy_vs_n.png) and copies the table and plot
to ``benchmarks/verification/results/``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from alignlab.stages import build_stage_config, is_done, run_stage

HERE = Path(__file__).parent


def train_config(kind: str, gym: Path, data: Path, out: Path, steps: int, lr: float) -> dict:
    return {"stage": kind, "model": {"path": str(gym / "base_model")},
            "data": {"path": str(data / "train_steps.jsonl"), "format": "steps"},
            "eval_fraction": 0.1, "aggregation": "product", "out": str(out / kind),
            "train": {"max_steps": steps, "batch_size": 16, "learning_rate": lr,
                      "warmup_ratio": 0.05, "lr_schedule": "cosine", "max_length": 128,
                      "max_prompt_length": 64, "log_every": 25, "seed": 0}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gym", default="runs/league/gym")
    parser.add_argument("--out", default="runs/verification")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--train-problems", type=int, default=None,
                        help="write a training set of this many problems x 4 solutions instead of "
                             "using the gym's (600); the held-out test problems stay the same")
    parser.add_argument("--tag", default="gym", help="prefix of the files in results/")
    args = parser.parse_args()
    gym, out = Path(args.gym), Path(args.out)
    data = gym / "data" / "reasoning"
    if args.train_problems or not (data / "train_steps.jsonl").is_file():
        from alignlab.gym.reasoning import write_reasoning_data

        data = out / "data"
        write_reasoning_data(data, seed=0, **({"n_train": args.train_problems}
                                              if args.train_problems else {}))
    timings = {}
    for kind in ("orm", "prm"):
        cfg = build_stage_config(train_config(kind, gym, data, out, args.steps, args.lr), kind)
        if not is_done(cfg):
            start = time.time()
            run_stage(cfg)
            timings[kind] = round(time.time() - start, 1)
    verify = build_stage_config({
        "stage": "verify", "out": str(out / "verify"),
        "data": {"path": str(data / "test_steps.jsonl"), "format": "steps"},
        "verifiers": [{"path": str(out / "orm" / "model"), "name": "orm"},
                      {"path": str(out / "prm" / "model"), "name": "prm",
                       "aggregations": ["product", "min"]}],
        "convincing_wrong": 50, "draws": 512}, "verify")
    start = time.time()
    run_stage(verify)
    timings["verify"] = round(time.time() - start, 1)
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    shutil.copy(out / "verify" / "accuracy_vs_n.png", results / f"{args.tag}_accuracy_vs_n.png")
    shutil.copy(out / "verify" / "curve.json", results / f"{args.tag}_curve.json")
    shutil.copy(out / "verify" / "verify.md", results / f"{args.tag}_verify.md")
    evals = {kind: json.loads((out / kind / "eval.json").read_text()) for kind in ("orm", "prm")}
    (results / f"{args.tag}_run.json").write_text(json.dumps(
        {"timings_s": timings, "held_out_eval": evals, "steps": args.steps, "lr": args.lr,
         "train_problems": args.train_problems or 600, "load_average": os.getloadavg()},
        indent=2) + "\n")
    print(json.dumps(evals, indent=2))
    print((out / "verify" / "verify.md").read_text())


if __name__ == "__main__":
    main()
