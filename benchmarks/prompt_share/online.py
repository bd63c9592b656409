"""What prompt sharing buys the online stage: tokens and CPU time of the rollout's and the update's
forwards, with ``rl.share_prompt`` on and off.

    OMP_NUM_THREADS=1 python benchmarks/prompt_share/online.py [--iterations 4] [--out runs/prompt_share_online]

The league's gym and SFT model (``runs/league/{gym,sft}``), the online league's recipe
(``benchmarks/online``): 16 prompts × 4 samples per iteration, 48 new tokens at T = 1, KL
coefficient 0.1 (so the reference runs over every rollout), the gym's gold reward (no reward model
to train). Cases: RLOO with one update per rollout (the update's forward gives the old log-probs),
RLOO with 2 epochs × 2 minibatches (a separate no-grad policy pass, then shuffled minibatches), and
PPO with 4 samples per prompt (a critic, whose forwards share the prompt too). Each case runs with
sharing on, then off, in this process.

Measured per iteration (the first, which warms up, is left out):

- positions the decoder ran over in the ``logprob`` phase (the rollout's no-grad passes: old
  log-probs, reference, PPO's critic values) and in the ``update`` phase (forwards with gradients),
  padding included (rows × width), and the real tokens among them;
- CPU seconds of this process in those phases (``time.process_time``, which the machine's other
  load does not inflate the way it does wall time), next to the trainer's wall times.

The load average is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

ITERATIONS = 4
CASES = {
    "rloo (one update per rollout)": ("rloo", {"kl_coef": 0.1}),
    "rloo (2 epochs x 2 minibatches)": ("rloo", {"kl_coef": 0.1, "ppo_epochs": 2,
                                                 "minibatch_size": 32}),
    "ppo (k = 4, 2 epochs x 2 minibatches)": ("ppo", {"kl_coef": 0.1, "ppo_epochs": 2,
                                                      "minibatch_size": 32}),
}


class Meter:
    """Per-phase counts of decoder forwards: positions (rows × width) and real tokens."""

    def __init__(self):
        self.phase = "other"
        self.counts: dict[str, dict[str, float]] = {}

    def add(self, key: str, value: float) -> None:
        phase = self.counts.setdefault(self.phase, {})
        phase[key] = phase.get(key, 0.0) + value


METER = Meter()


def install_probes() -> None:
    """Count every decoder forward (per-row and packed) and time every trainer phase in CPU
    seconds as well as wall seconds (``time/cpu_<phase>`` in the metrics)."""
    from alignlab.models import logprobs, shared_prefix
    from alignlab.rl import rollout

    for module in (logprobs, shared_prefix):
        real_body = module.decoder_body

        def body(model, real_body=real_body):
            inner = real_body(model)

            def run(**kwargs):
                mask = kwargs["attention_mask"]
                METER.add("positions", kwargs["input_ids"].numel())
                if mask is not None and mask.dim() == 2:
                    METER.add("tokens", float(mask.sum()))
                return inner(**kwargs)
            return run

        module.decoder_body = body
    real_pack = shared_prefix.pack_groups

    def pack(*args, **kwargs):
        layout = real_pack(*args, **kwargs)
        METER.add("tokens", layout.packed_tokens)
        return layout

    shared_prefix.pack_groups = pack

    @contextmanager
    def timed(self, name):
        previous, METER.phase = METER.phase, name
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            if self.timings is not None:
                for key, start, now in ((name, wall, time.perf_counter()),
                                        (f"cpu_{name}", cpu, time.process_time())):
                    self.timings[key] = self.timings.get(key, 0.0) + now - start
            METER.phase = previous

    rollout.Clock.__call__ = timed


def config(algorithm: str, rl: dict, share: bool, iterations: int, out: Path, league: Path):
    from alignlab.config import build_config
    from alignlab.rl.trainer import OnlineConfig

    gym = league / "gym"
    raw = {"algorithm": algorithm, "model": {"path": str(league / "sft" / "model")},
           "prompts": {"path": str(gym / "data" / "train_prompts.jsonl")},
           "reward": [{"kind": "gym_gold", "gym": str(gym)}],
           "generation": {"num_samples": 4, "max_new_tokens": 48, "temperature": 1.0,
                          "batch_size": 256},
           "train": {"learning_rate": 5e-5, "max_steps": iterations, "batch_size": 16,
                     "log_every": 1, "seed": 0, "max_length": 128, "max_prompt_length": 64,
                     "lr_schedule": "constant"},
           "rl": {**rl, "share_prompt": share}, "out": str(out)}
    return build_config(OnlineConfig, raw)


def run_case(algorithm: str, rl: dict, share: bool, iterations: int, out: Path,
             league: Path) -> dict:
    """One run; per-iteration means (iterations 2..n) of the counts and times."""
    from alignlab.rl import trainer
    from alignlab.runs import RunFolder, read_metrics

    cfg = config(algorithm, rl, share, iterations, out, league)
    counts, real_iteration = [], trainer.one_iteration

    def counted(state, iteration):
        METER.counts = {}
        row = real_iteration(state, iteration)
        counts.append({phase: dict(c) for phase, c in METER.counts.items()})
        return row

    trainer.one_iteration = counted
    try:
        trainer.run_online(cfg, RunFolder(cfg.out, cfg, echo=False))
    finally:
        trainer.one_iteration = real_iteration
    rows = [r for r in read_metrics(out) if "reward/mean" in r][1:]
    result = {}
    for phase in ("logprob", "update"):
        for key in ("positions", "tokens"):
            result[f"{phase}_{key}"] = statistics.mean(c.get(phase, {}).get(key, 0.0)
                                                       for c in counts[1:])
        for kind in ("", "cpu_"):
            result[f"{kind}{phase}_s"] = statistics.mean(r.get(f"time/{kind}{phase}", 0.0)
                                                         for r in rows)
    result["reward"] = statistics.mean(r["reward/mean"] for r in rows)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--league", default="runs/league")
    parser.add_argument("--iterations", type=int, default=ITERATIONS)
    parser.add_argument("--out", default="runs/prompt_share_online")
    args = parser.parse_args()
    install_probes()
    out = Path(args.out)
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    results = {}
    for name, (algorithm, rl) in CASES.items():
        for share in (True, False):
            folder = out / f"{name.split()[0]}-{len(results)}-{'on' if share else 'off'}"
            results[f"{name} | {'on' if share else 'off'}"] = run_case(
                algorithm, rl, share, args.iterations, folder, Path(args.league))
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    print(f"load average before {' '.join(load_before)}, after {' '.join(load_after)}")
    print("| case | sharing | logprob positions (tokens) | update positions (tokens) | "
          "logprob CPU s | update CPU s | logprob wall s | update wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for key, r in results.items():
        case, share = key.split(" | ")
        print(f"| {case} | {share} | {r['logprob_positions']:.0f} ({r['logprob_tokens']:.0f}) | "
              f"{r['update_positions']:.0f} ({r['update_tokens']:.0f}) | "
              f"{r['cpu_logprob_s']:.3f} | {r['cpu_update_s']:.3f} | {r['logprob_s']:.3f} | "
              f"{r['update_s']:.3f} |")
    (out / "results.json").write_text(json.dumps({"load_before": load_before,
                                                  "load_after": load_after, **results}, indent=1))


if __name__ == "__main__":
    main()
