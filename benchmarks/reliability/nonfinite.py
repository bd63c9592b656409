"""The non-finite step campaign: NaN / inf injected into every trainer, through the ``alignlab``
command line, and how each was handled.

    python benchmarks/reliability/nonfinite.py                      # every trainer
    python benchmarks/reliability/nonfinite.py --stages sft,online-ppo --work /tmp/nonfinite

Every run is a tiny Llama with a character tokenizer (``tests/test_models_tiny.py``), invoked in this
process through ``alignlab.cli`` (so the user's one-line ``error:`` output is what is recorded),
with the fault injected by wrapping a function of the loop:

- offline stages (everything through :func:`alignlab.train.loop.train_loop`): the stage's step
  function at chosen optimiser steps, via ``train.loop.accumulate_gradients``: ``loss`` multiplies
  the loss by NaN, ``grad`` keeps the loss finite and turns its gradient into inf (only the gradient
  norm shows it);
- online stages: ``rl.trainer.chunk_loss`` at chosen (iteration, update) pairs (``loss``, ``grad``
  as above), and ``reward``: the rule reward returns NaN for a whole iteration (a broken scorer).

Scenarios per stage (``train.max_bad_steps`` left at its default, 3):

1. ``clean``: no fault (the reference);
2. ``one-loss`` / ``one-grad``: one bad optimiser step (online: one update of iteration 2);
   expected: exit 0, ``skipped_steps`` 1 in the last metrics row, every saved parameter finite;
   (online) ``one-reward``: the reward is NaN for all of iteration 2; expected: exit 0 and a finite
   model (how many updates were skipped is recorded: every update of the iteration, unless the
   algorithm's loss never reads the reward's value);
3. ``streak``: every step (online: iteration) from the third on is bad; expected: exit 2 with a
   one-line error naming the steps and the checkpoint, that checkpoint present;
4. ``resume``: the same command again, no fault; expected: exit 0 and, offline, the same model as
   ``clean`` (the stop checkpoint is the state before the streak, and the resumed run retries the
   same batches); online, the same model as ``skips``: a run with the same bad iterations and a
   limit high enough not to stop (online, the stop checkpoint continues after the bad iterations).

Results: ``nonfinite.json`` and ``nonfinite.md`` next to this script (``--out`` elsewhere).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse
import json
import math
import random
import shutil
import string
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

OFFLINE = ["sft", "rm", "dpo", "kto", "distill"]
ONLINE = ["online-ppo", "online-grpo", "online-rloo", "online-reinforce_pp", "online-online_dpo"]
FIXTURES = '''"""Reward of the non-finite campaign; POISON (set by the campaign) makes it NaN."""

POISON = False


def count_a(prompt, text):
    """Share of the sampled characters that are 'a'; NaN while POISON is set."""
    if POISON:
        return float("nan")
    return sum(c == "a" for c in text) / max(len(text), 1)


def char_score(prompt, text):
    """A score that varies between samples (online DPO needs untied groups); NaN while POISON."""
    if POISON:
        return float("nan")
    return float(sum(map(ord, text)) % 13)
'''


def _words(rng: random.Random, k: int) -> str:
    return " ".join("".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 5)))
                    for _ in range(k))


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def build_fixtures(folder: Path) -> dict[str, str]:
    """The tiny model, the data files and the reward module."""
    from test_models_tiny import save_tiny_lm

    folder.mkdir(parents=True, exist_ok=True)
    lm = folder / "lm"
    if not (lm / "model.safetensors").is_file():
        save_tiny_lm(lm)
    rng = random.Random(0)
    fx = {"lm": str(lm)}
    fx["sft"] = _jsonl(folder / "sft.jsonl", [
        {"messages": _user(_words(rng, 2)) + [{"role": "assistant", "content": _words(rng, 3)}]}
        for _ in range(24)])
    fx["pairs"] = _jsonl(folder / "pairs.jsonl", [
        {"prompt": _user(_words(rng, 2)), "chosen": "yes " + _words(rng, 2),
         "rejected": "no " + _words(rng, 2)} for _ in range(32)])
    fx["kto"] = _jsonl(folder / "kto.jsonl", [
        {"prompt": _user(_words(rng, 2)), "completion": _words(rng, 2), "label": i % 2 == 0}
        for i in range(32)])
    fx["prompts"] = _jsonl(folder / "prompts.jsonl",
                           [{"prompt": _user(_words(rng, 2))} for _ in range(16)])
    (folder / "context.txt").write_text("Be kind and brief.\n\n")
    fx["context"] = str(folder / "context.txt")
    (folder / "nonfinite_fixtures.py").write_text(FIXTURES)
    sys.path.insert(0, str(folder))
    return fx


def _train(**extra) -> dict:
    base = {"learning_rate": 1e-2, "batch_size": 4, "log_every": 1, "lr_schedule": "linear",
            "max_length": 64, "max_prompt_length": 32, "seed": 0, "max_steps": 8,
            "save_every": 4}
    return {**base, **extra}


def stage_configs(fx: dict[str, str]) -> dict[str, tuple[list[str], dict]]:
    """Stage name -> (command words, config without ``out``)."""
    lm = {"path": fx["lm"]}
    online = {"model": lm, "prompts": {"path": fx["prompts"]},
              "reward": [{"kind": "function", "function": "nonfinite_fixtures:count_a"}],
              "generation": {"num_samples": 4, "max_new_tokens": 6, "temperature": 1.0},
              "train": _train(learning_rate=3e-2, max_steps=6, save_every=2)}
    return {
        "sft": (["sft"], {"model": lm, "data": {"path": fx["sft"]}, "train": _train()}),
        "rm": (["rm"], {"model": lm, "data": {"path": fx["pairs"]}, "eval_fraction": 0.0,
                        "train": _train()}),
        "dpo": (["dpo"], {"model": lm, "data": {"path": fx["pairs"]}, "train": _train()}),
        "kto": (["dpo"], {"model": lm, "data": {"path": fx["kto"], "format": "kto"},
                          "loss": [{"name": "kto", "beta": 0.1}], "train": _train()}),
        "distill": (["distill"], {"model": lm, "data": {"path": fx["sft"]}, "top_k": 8,
                                  "context": fx["context"],
                                  "train": _train(learning_rate=3e-3, max_length=40,
                                                  max_prompt_length=20)}),
        # PPO: 2 epochs x 2 minibatches = 4 updates per iteration, so a streak can start mid-way
        "online-ppo": (["online"], {**online, "algorithm": "ppo",
                                    "rl": {"kl_coef": 0.05, "ppo_epochs": 2, "minibatch_size": 8}}),
        "online-grpo": (["online"], {**online, "algorithm": "grpo"}),
        "online-rloo": (["online"], {**online, "algorithm": "rloo"}),
        "online-reinforce_pp": (["online"], {**online, "algorithm": "reinforce_pp"}),
        "online-online_dpo": (["online"], {
            **online, "algorithm": "online_dpo",
            "reward": [{"kind": "function", "function": "nonfinite_fixtures:char_score"}]}),
    }


# ----------------------------------------------------------------------------- injection


class Injector:
    """Wraps the loop's functions once; ``arm(kind, where)`` chooses the next run's fault.

    ``where``: offline, a set of 0-based optimiser steps, or ``"from:k"`` (step k and every later
    one); online, a set of (iteration, update) pairs, or iterations (every update), or
    ``"from:k"`` (iteration k on)."""

    def __init__(self):
        from alignlab.rl import trainer
        from alignlab.train import loop

        self.kind, self.where, self.calls = None, set(), 0
        real_accumulate, real_chunk, real_iteration = (loop.accumulate_gradients,
                                                       trainer.chunk_loss, trainer.one_iteration)

        def accumulate(acc, model, batches, step_fn, count_fn):
            step = self.calls
            self.calls += 1
            if not self._hit(step, None):
                return real_accumulate(acc, model, batches, step_fn, count_fn)

            def poisoned(module, batch):
                part, count, metrics = step_fn(module, batch)
                return self._poison(part), count, metrics
            return real_accumulate(acc, model, batches, poisoned, count_fn)

        def chunk_loss(learner, *args, **kwargs):
            loss = real_chunk(learner, *args, **kwargs)
            if self.kind in ("loss", "grad") and self._hit(*learner.position):
                return self._poison(loss)
            return loss

        def one_iteration(state, iteration):
            import nonfinite_fixtures

            nonfinite_fixtures.POISON = self.kind == "reward" and self._hit(iteration, None)
            try:
                return real_iteration(state, iteration)
            finally:
                nonfinite_fixtures.POISON = False

        loop.accumulate_gradients = accumulate
        trainer.chunk_loss = chunk_loss
        trainer.one_iteration = one_iteration

    def arm(self, kind: str | None, where=()) -> None:
        self.kind, self.where, self.calls = kind, where, 0

    def _hit(self, first: int, second: int | None) -> bool:
        if self.kind is None:
            return False
        if isinstance(self.where, str):
            return first >= int(self.where.split(":")[1])
        return first in self.where or (first, second) in self.where

    def _poison(self, loss):
        if self.kind == "grad":
            loss.register_hook(lambda g: g * float("inf"))
            return loss
        return loss * float("nan")


# ----------------------------------------------------------------------------- one run


def run_cli(words: list[str], config: dict, out: Path) -> dict:
    """``alignlab <words> --config <yaml>`` in this process; exit code, error lines, seconds."""
    from typer.testing import CliRunner

    from alignlab.cli import app

    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump({**config, "out": str(out)}))
    start = time.perf_counter()
    result = CliRunner().invoke(app, [*words, "--config", str(path)])
    seconds = time.perf_counter() - start
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        errors.append(f"uncaught {type(result.exception).__name__}: {result.exception}")
    return {"exit": result.exit_code, "errors": errors, "seconds": round(seconds, 2)}


def outcome(out: Path, run: dict) -> dict:
    """What a run left: counters of the last metrics row, checkpoints, model finiteness."""
    from safetensors.torch import load_file

    rows = []
    if (out / "metrics.jsonl").is_file():
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
                if line.strip()]
    counted = [r for r in rows if "skipped_steps" in r]
    model = out / "model" / "model.safetensors"
    finite = None
    if model.is_file():
        finite = all(bool(t.isfinite().all()) for t in load_file(str(model)).values())
    checkpoints = sorted((p.name for p in (out / "checkpoints").iterdir()),
                         key=lambda n: int(n.split("-")[1])) if (out / "checkpoints").is_dir() else []
    skipped_rows = [r["step"] for r in counted if r.get("bad_steps")]
    return {**run, "skipped_steps": counted[-1]["skipped_steps"] if counted else None,
            "steps_with_bad": skipped_rows, "checkpoints": checkpoints, "model_finite": finite}


def max_diff(a: Path, b: Path) -> float | None:
    from safetensors.torch import load_file

    fa, fb = a / "model" / "model.safetensors", b / "model" / "model.safetensors"
    if not (fa.is_file() and fb.is_file()):
        return None
    ta, tb = load_file(str(fa)), load_file(str(fb))
    if ta.keys() != tb.keys():
        return math.inf
    return max(float((ta[k].float() - tb[k].float()).abs().max()) for k in ta)


def campaign_stage(name: str, words: list[str], config: dict, work: Path,
                   inject: Injector) -> dict:
    """Every scenario of one stage; returns its record (with the checks that failed)."""
    folder = work / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    online = name.startswith("online")
    record: dict = {"stage": name, "scenarios": {}, "failures": []}
    scen = record["scenarios"]

    def go(label: str, kind, where, out_name: str | None = None, cfg: dict = config) -> dict:
        inject.arm(kind, where)
        out = folder / (out_name or label)
        result = outcome(out, run_cli(words, cfg, out))
        inject.arm(None)
        scen[label] = result
        return result

    def expect(ok: bool, what: str) -> None:
        if not ok:
            record["failures"].append(what)

    clean = go("clean", None, ())
    expect(clean["exit"] == 0 and clean["skipped_steps"] == 0, "clean run: exit 0, 0 skipped")
    one = {(1, 1)} if name == "online-ppo" else {1}  # PPO: the 2nd update of iteration 2
    kinds = ["loss", "grad"] + (["reward"] if online else [])
    for kind in kinds:
        r = go(f"one-{kind}", kind, {1} if kind == "reward" else one)
        if kind == "reward":
            expect(r["exit"] == 0 and r["model_finite"], "one-reward: exit 0, finite model")
        else:
            expect(r["exit"] == 0 and r["skipped_steps"] == 1 and r["model_finite"],
                   f"one-{kind}: exit 0, skipped_steps 1, finite model")
        r["max_diff_vs_clean"] = max_diff(folder / f"one-{kind}", folder / "clean")
    streak = go("streak", "loss", "from:2")
    expect(streak["exit"] == 2 and len(streak["errors"]) == 1
           and "reached train.max_bad_steps=3, so training stopped" in streak["errors"][0],
           "streak: exit 2 with one error line")
    named = streak["errors"][0].split("checkpoint ")[-1].split(";")[0] if streak["errors"] else ""
    expect(bool(named) and Path(named).is_dir(), "streak: the named checkpoint exists")
    streak["named_checkpoint"] = Path(named).name if named else None
    resumed = go("resume", None, (), out_name="streak")
    expect(resumed["exit"] == 0 and resumed["model_finite"], "resume: exit 0, finite model")
    if online:
        # the stopped run skipped every update of iterations 3 .. its stop checkpoint's iteration
        # and resumes after them: the same as a run with those iterations bad and no stop
        reached = int(streak["named_checkpoint"].split("-")[1]) if named else 0
        skipped = set(range(2, reached))
        no_stop = {**config, "train": {**config["train"], "max_bad_steps": 100}}
        go("skips", "loss", skipped, cfg=no_stop)
        resumed["equivalent"] = f"skips (iterations {sorted(i + 1 for i in skipped)} bad, no stop)"
        resumed["max_diff"] = max_diff(folder / "streak", folder / "skips")
    else:
        resumed["equivalent"] = "clean"
        resumed["max_diff"] = max_diff(folder / "streak", folder / "clean")
    expect(resumed["max_diff"] is not None and resumed["max_diff"] <= 1e-6,
           f"resume: model equal to {resumed['equivalent']} (max |diff| <= 1e-6)")
    return record


# ----------------------------------------------------------------------------- report


def markdown(records: list[dict], command: str, load: str) -> str:
    intro = (f"Command: `{command}` (load average before: {load}). `train.max_bad_steps` = 3 "
             "(default). Offline faults hit optimiser step 2 (`one-*`) or every step from 3 "
             "(`streak`); online faults hit one update of iteration 2 (PPO: its 2nd of 4), the "
             "reward of iteration 2 (`one-reward`), or every update from iteration 3. `resume` "
             "reruns the stopped command without the fault.")
    head = ("| stage | one-loss | one-grad | one-reward | streak: exit, error | stop checkpoint "
            "| resume: max abs diff vs | checks failed |")
    policy = ("Policy (`alignlab.train.nonfinite`): a step whose all-reduced loss or global "
              "gradient norm is NaN/inf is skipped before `optimizer.step()` (no parameter, AdamW "
              "state or schedule change; gradients dropped) and counted (`skipped_steps`, "
              "`bad_steps` in metrics.jsonl); `train.max_bad_steps` in a row (online: iterations "
              "whose every update was skipped) stop the run with a one-line `error:` and exit "
              "code 2, leaving a checkpoint of the last good weights (offline: the state before "
              "the streak, so the rerun retries the same batches; online: the iteration reached). "
              "No periodic checkpoint is written inside a streak. Exact checks: "
              "`tests/test_nonfinite.py` (a skipped step equals a plain-PyTorch run without that "
              "batch; the stop checkpoint's weights, AdamW states and schedulers equal the last "
              "good ones; two gloo processes with a NaN on one rank decide alike).")
    lines = ["## Non-finite steps (NaN / inf injection)", "", policy, "", intro, "", head,
             "|---|---|---|---|---|---|---|---|"]

    def one(scenarios: dict, kind: str) -> str:
        r = scenarios.get(f"one-{kind}")
        if r is None:
            return "n/a"
        return f"exit {r['exit']}, skipped {r['skipped_steps']}, finite {r['model_finite']}"
    for rec in records:
        s = rec["scenarios"]
        st, rs = s["streak"], s["resume"]
        error = st["errors"][0].split(", so training stopped")[0].replace("error: ", "") \
            if st["errors"] else "-"
        diff = "-" if rs.get("max_diff") is None else f"{rs['max_diff']:.1e}"
        lines.append(f"| {rec['stage']} | {one(s, 'loss')} | {one(s, 'grad')} | {one(s, 'reward')} | "
                     f"exit {st['exit']}: {error} | {st.get('named_checkpoint')} | "
                     f"{diff} vs {rs.get('equivalent')} | {len(rec['failures'])} |")
    unseen = [r["stage"] for r in records
              if r["scenarios"].get("one-reward", {}).get("skipped_steps") == 0]
    if unseen:
        lines += ["", "No update was skipped for a NaN reward in " + ", ".join(unseen) + ": "
                  "the reward there only picks best-vs-worst pairs, and a group with a NaN score "
                  "compares as tied (max > min is false), so the iteration formed no pair and made "
                  "no update (metrics.jsonl: `pairs` 0, `tied_groups` 4). Nothing non-finite "
                  "reached a loss; the NaN shows only as a fully tied iteration."]
    failed = [f"{r['stage']}: {f}" for r in records for f in r["failures"]]
    lines += ["", "Failed checks: " + ("; ".join(failed) if failed else "none") + "."]
    untested = ("Not exercised here (no deepspeed, no CUDA): under DeepSpeed the engine steps "
                "inside `backward`, so a non-finite loss is counted and stops the run but is not "
                "undone; with an fp16 grad scaler an inf/NaN gradient with a finite loss is left "
                "to the scaler (skipped, counted, not towards the limit). The gym's base-model "
                "pretraining loop skips non-finite steps and stops after 3 in a row (no test).")
    lines += ["", untested]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", default=",".join(OFFLINE + ONLINE))
    parser.add_argument("--work", default="/tmp/alignlab-nonfinite")
    parser.add_argument("--out", default=str(HERE))
    args = parser.parse_args()
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    work = Path(args.work)
    fx = build_fixtures(work / "fixtures")
    configs = stage_configs(fx)
    inject = Injector()
    records = []
    start = time.perf_counter()
    for name in args.stages.split(","):
        words, config = configs[name]
        records.append(campaign_stage(name, words, config, work, inject))
        print(f"{name}: {len(records[-1]['failures'])} failed check(s) "
              f"{records[-1]['failures']}", flush=True)
    command = "python benchmarks/reliability/nonfinite.py" + (
        f" --stages {args.stages}" if args.stages != ",".join(OFFLINE + ONLINE) else "")
    payload = {"command": command, "load_before": load,
               "seconds": round(time.perf_counter() - start, 1), "stages": records}
    out = Path(args.out)
    (out / "nonfinite.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    (out / "nonfinite.md").write_text(markdown(records, command, load))
    print(markdown(records, command, load))


if __name__ == "__main__":
    main()
