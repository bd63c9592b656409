"""Run one ``alignlab`` command in this process and record when each optimiser step ended and how
many tokens each step's batches held.

    [accelerate launch ...] timed_cli.py --timing OUT.json -- dpo --config x.yaml [key=value ...]

- **Step clock**: a global ``torch.optim`` step post-hook stamps every optimiser step (for the
  online stage, one per update; GRPO with one PPO epoch and no minibatches makes one per iteration).
- **Token counter**: ``alignlab.data.collate.pad_encoded`` is wrapped *before* any alignlab stage is
  imported (stages bind it with ``from ... import``), so every batch alignlab collates is counted:
  rows, real (non-pad) tokens, target tokens (``loss_mask[:, 1:]``) and padded tokens
  (rows × width). The tokens of step k are those collated after step k-1 ended and before step k
  ended (for DPO: step k's pairs; step 1 also holds the reference pass; for the online stage: the
  iteration's rollout batch of prompt + response rows).

Only the main process (``RANK`` 0) writes the file. Nothing in alignlab is changed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

T0 = time.perf_counter()


class Counter:
    """Running totals of what ``pad_encoded`` produced, snapshotted at every optimiser step."""

    KEYS = ("rows", "real", "target", "padded")

    def __init__(self):
        self.total = dict.fromkeys(self.KEYS, 0)
        self.at_last_step = dict(self.total)
        self.steps: list[dict] = []
        self.stamps: list[float] = []

    def add(self, batch: dict) -> None:
        mask = batch["attention_mask"]
        self.total["rows"] += int(mask.shape[0])
        self.total["real"] += int(mask.sum())
        self.total["target"] += int(batch["loss_mask"][:, 1:].sum())
        self.total["padded"] += int(mask.numel())

    def step_ended(self) -> None:
        self.stamps.append(time.perf_counter() - T0)
        self.steps.append({k: self.total[k] - self.at_last_step[k] for k in self.KEYS})
        self.at_last_step = dict(self.total)


def install(counter: Counter) -> None:
    """Wrap ``pad_encoded`` and hook every optimiser step (before alignlab's stages import)."""
    import functools

    from torch.optim.optimizer import register_optimizer_step_post_hook

    from alignlab.data import collate

    original = collate.pad_encoded

    @functools.wraps(original)
    def counted(items, pad_id):
        batch = original(items, pad_id)
        counter.add(batch)
        return batch

    collate.pad_encoded = counted
    register_optimizer_step_post_hook(lambda optimizer, args, kwargs: counter.step_ended())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        raise SystemExit("usage: timed_cli.py --timing OUT.json -- <alignlab arguments>")
    split = argv.index("--")
    parser = argparse.ArgumentParser()
    parser.add_argument("--timing", required=True)
    opts = parser.parse_args(argv[:split])
    counter = Counter()
    install(counter)
    from alignlab.cli import app

    code = 0
    try:
        app(argv[split + 1:], prog_name="alignlab", standalone_mode=False)
    except SystemExit as exc:
        code = exc.code or 0
    if os.environ.get("RANK", "0") == "0":
        Path(opts.timing).write_text(json.dumps(
            {"command": argv[split + 1:], "step_end_times_s": counter.stamps,
             "steps": counter.steps,
             "process_s": time.perf_counter() - T0, "exit_code": code}, indent=2))
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
