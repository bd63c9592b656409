"""PRM scoring throughput: one forward per solution (all steps at once) vs one forward per step.

Scores the same solutions two ways with the same model and batch size:

- ``per_solution``: alignlab's way — each solution is one sequence, every step read at its last
  token (``alignlab.models.verifier.score_encoded``);
- ``per_step``: the naive way — one sequence per step prefix (prompt + steps 1..k), scored at its
  last token, as a scorer that calls a sequence classifier once per step would.

Both give the same step scores (checked here to 1e-4). Run alone on a quiet machine:

    OMP_NUM_THREADS=2 python benchmarks/verification/prm_speed.py --model runs/verification/prm/model \
        --data runs/league/gym/data/reasoning/test_steps.jsonl --n 512
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from alignlab.data.step_readers import StepDataSettings, load_step_solutions
from alignlab.data.step_tokenize import EncodedSteps
from alignlab.models.verifier import encode_solution, load_verifier, score_encoded


def per_step_items(items: list[EncodedSteps]) -> list[EncodedSteps]:
    """One causal prefix per scored step, scored at its last token."""
    return [EncodedSteps(item.input_ids[: p + 1], item.completion_start, [p])
            for item in items for p in item.positions]


def timed(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "prm_speed.json"))
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    verifier = load_verifier(args.model, args.batch_size)
    solutions = load_step_solutions(StepDataSettings(path=args.data, limit=args.n)).records
    items = [encode_solution(verifier.tokenizer, verifier.spec, s.prompt, s.steps) for s in solutions]
    prefixes = per_step_items(items)
    pad = verifier.tokenizer.pad_token_id
    t_solution, together = timed(lambda: score_encoded(verifier.model, items, pad, args.batch_size),
                                 args.repeats)
    t_step, alone = timed(lambda: score_encoded(verifier.model, prefixes, pad, args.batch_size),
                          args.repeats)
    flat = [v for scores in together for v in scores]
    worst = max(abs(a - b[0]) for a, b in zip(flat, alone))
    result = {"solutions": len(items), "steps": len(prefixes),
              "tokens_per_solution": sum(len(i.input_ids) for i in items) / len(items),
              "per_solution_s": round(t_solution, 3), "per_step_s": round(t_step, 3),
              "per_solution_solutions_per_s": round(len(items) / t_solution, 1),
              "per_step_solutions_per_s": round(len(items) / t_step, 1),
              "speedup": round(t_step / t_solution, 2), "max_abs_score_difference": worst,
              "batch_size": args.batch_size, "threads": torch.get_num_threads(),
              "load_average": os.getloadavg(), "model": args.model}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if worst > 1e-4:
        raise SystemExit(f"step scores differ by {worst}")


if __name__ == "__main__":
    main()
