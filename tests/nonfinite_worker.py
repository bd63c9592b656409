"""Two-process check of the non-finite step guard, launched by ``tests/test_nonfinite.py``.

Run as ``python nonfinite_worker.py OUT`` under ``accelerate launch`` with 2 processes. Two runs of
the tiny-Llama loop, each process with batch 2 (global batch 4, as one process with batch 4):

1. ``OUT/skip``: rank 1 alone gets a NaN loss at step 2 (1-based); every rank must skip that step.
   The main process writes the final parameters to ``OUT/params.safetensors``.
2. ``OUT/stop``: rank 0 alone gets a NaN loss at step 3, with ``max_bad_steps`` 1; every rank must
   stop there with the same message (a rank that went on would hang in the next collective call).

Each rank writes ``OUT/rank<r>.json``: its skipped-step count of run 1 and its stop message of run 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from accelerate import Accelerator
from dist_worker import count_tokens, make_items, pad_items, settings, sft_step, tiny_lm
from safetensors.torch import save_file

from alignlab.runs import RunFolder
from alignlab.train.forward import TokenLogprobModule
from alignlab.train.loop import train_loop
from alignlab.train.nonfinite import NonFiniteError


def nan_on(rank: int, step: int, acc: Accelerator):
    """``sft_step`` whose loss is NaN at optimiser step ``step`` (0-based) on process ``rank`` only."""
    calls = {"n": 0}

    def step_fn(model, batch):
        k = calls["n"]
        calls["n"] += 1
        total, n, metrics = sft_step(model, batch)
        if k == step and acc.process_index == rank:
            total = total * float("nan")
        return total, n, metrics
    return step_fn


def main(out: Path) -> None:
    acc = Accelerator(cpu=True)
    result = train_loop(TokenLogprobModule(tiny_lm()), make_items(), pad_items, nan_on(1, 1, acc),
                        count_tokens, settings(2, 1, steps=4), RunFolder(out / "skip", echo=False),
                        acc)
    if acc.is_main_process:
        params = {k: v.detach().contiguous() for k, v in result.model.state_dict().items()}
        save_file(params, str(out / "params.safetensors"))
    second = Accelerator(cpu=True)
    stop = ""
    try:
        train_loop(TokenLogprobModule(tiny_lm()), make_items(), pad_items, nan_on(0, 2, second),
                   count_tokens, settings(2, 1, steps=4, max_bad_steps=1),
                   RunFolder(out / "stop", echo=False), second)
    except NonFiniteError as exc:
        stop = str(exc)
    (out / f"rank{acc.process_index}.json").write_text(
        json.dumps({"skipped_steps": result.skipped_steps, "stop": stop}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
