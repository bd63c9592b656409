"""TRL 1.16 side of the online-RL speed comparison: one GRPOTrainer or RLOOTrainer run, timed.

    benchmarks/trl_dpo/.venv/bin/python benchmarks/trl_online/worker_trl.py {grpo,rloo} \
        --out benchmarks/trl_online/results/trl_grpo.jsonl

Setup (the same as worker_alignlab.py asks alignlab for): the gym SFT model (fp32, CPU, full
fine-tuning), conversational prompts from the gym's ``train_prompts.jsonl`` rendered with the model's
chat template, 8 prompts x 4 samples = 32 completions per optimiser step, max 48 new tokens,
temperature 1, top-p 1, reward = the gym's gold reward, lr 1e-6, one optimiser step per generation
batch (``num_iterations=1``, no accumulation), 2 warm-up steps + 20 timed steps. GRPO runs with
beta = 0.04 (so TRL loads a reference copy and runs its forward); RLOO keeps TRL's default beta.

TRL itself is not modified. Instrumentation, from outside:

- a global ``torch.optim`` step post-hook stamps the end of every optimiser step (wall clock and
  process CPU time); steps/s = timed steps / (end of the last step - end of the last warm-up step);
- the trainer's own methods are wrapped on the instance to time, per step: ``generate``
  (``_generate``: chat-template tokenisation, ``model.generate``, decoding), ``score`` (the reward
  function), ``logprob`` (every no-grad call of ``_get_per_token_logps_and_entropies``: the reference
  forward, and for RLOO also the policy's "old" log-probs), ``update`` (from the end of
  ``_prepare_inputs`` to the end of the optimiser step: the policy forward with grad, the loss,
  backward, clipping, AdamW) split into ``update_forward`` (``compute_loss``) and ``update_backward``
  (``accelerator.backward``); ``other`` = iteration - the rest (advantages, padding, metric gathering,
  logging, the data loader);
- a thread samples RSS from /proc/self/statm every 20 ms; ``ru_maxrss`` is read at exit;
- token check: the prompt ids TRL generates from are compared with alignlab's ``encode_prompt``.

TRL's chat-template call (``apply_chat_template(..., tokenize=True)``) adds no BOS token while
alignlab's prompt encoder does, and the gym SFT model was trained with BOS; so the tokenizer handed to
TRL gets ``{{ bos_token }}`` prepended to its template (in memory only), which makes TRL's prompt ids
identical to alignlab's (checked every step).

Writes one JSON line (appended) to ``--out``.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

from common import shared_parser

T0 = time.perf_counter()
HERE = Path(__file__).resolve().parent
PAGE = os.sysconf("SC_PAGE_SIZE")


class RssSampler(threading.Thread):
    """Highest resident set size (bytes) of this process, read every ``interval`` seconds."""

    def __init__(self, interval: float = 0.02):
        super().__init__(daemon=True)
        self.interval, self.peak, self.running = interval, 0, True

    @staticmethod
    def current() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * PAGE

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.current())
            time.sleep(self.interval)


class StepClock:
    """Per-optimiser-step buckets of named durations, closed by the optimiser step hook."""

    def __init__(self):
        self.bucket: dict[str, float] = defaultdict(float)
        self.steps: list[dict] = []
        self.prepare_end: float | None = None
        self.load_at: list[tuple[int, list[float]]] = []

    def add(self, key: str, seconds: float) -> None:
        self.bucket[key] += seconds

    def timed(self, fn, key_of):
        """``fn`` wrapped so that its wall time is added to the bucket ``key_of()`` names."""

        def wrapper(*args, **kwargs):
            key = key_of()
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(key, time.perf_counter() - start)

        return wrapper

    def step_end(self, *_args) -> None:
        now = time.perf_counter()
        row = {"end_s": now - T0, "cpu_s": time.process_time(), **self.bucket}
        if self.prepare_end is not None:
            row["update"] = now - self.prepare_end
        self.steps.append(row)
        self.bucket = defaultdict(float)
        self.prepare_end = None


def read_prompts(path: str) -> list[dict]:
    """``{"prompt": [messages]}`` rows; a bad line is an error naming the file and line."""
    rows = []
    with open(path) as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                messages = row["prompt"]
                if not (isinstance(messages, list) and messages
                        and all({"role", "content"} <= set(m) for m in messages)):
                    raise ValueError("'prompt' must be a non-empty list of {role, content} messages")
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{number}: bad prompt record ({exc})") from None
            rows.append({"prompt": [{"role": m["role"], "content": m["content"]} for m in messages]})
    if not rows:
        raise ValueError(f"{path}: no prompts")
    return rows


def to_messages(prompt: list[dict]):
    from alignlab.data.records import Message

    return tuple(Message(role=m["role"], content=m["content"]) for m in prompt)


def make_reward(gym_path: str, clock: StepClock):
    """TRL reward function: the gym gold reward of each (prompt, completion), timed as ``score``."""
    from alignlab.gym import load_gym

    gym = load_gym(gym_path)

    def gym_gold(prompts, completions, **_kwargs) -> list[float]:
        start = time.perf_counter()
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        rewards = [gym.score(to_messages(p), t).reward for p, t in zip(prompts, texts)]
        clock.add("score", time.perf_counter() - start)
        return rewards

    return gym_gold


def bos_tokenizer(model_path: str):
    """The model's tokenizer with ``{{ bos_token }}`` prepended to its chat template (in memory)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    template = tokenizer.chat_template
    if not isinstance(template, str) or not template:
        raise ValueError(f"{model_path}: tokenizer has no chat template")
    if tokenizer.bos_token is not None and "bos_token" not in template:
        tokenizer.chat_template = "{{ bos_token }}" + template
    return tokenizer


def trainer_config(algo: str, opts, work: Path):
    """GRPOConfig / RLOOConfig for the shared setup; every setting that matters is explicit."""
    import torch
    from trl import GRPOConfig, RLOOConfig

    common = {
        "output_dir": str(work / f"trl_{algo}"), "max_steps": opts.warmup + opts.steps,
        "per_device_train_batch_size": opts.prompts_per_step * opts.k,  # counts completions
        "gradient_accumulation_steps": 1, "num_generations": opts.k, "num_iterations": 1,
        "max_completion_length": opts.max_new_tokens, "temperature": 1.0, "top_p": 1.0,
        "top_k": 0, "learning_rate": opts.lr, "lr_scheduler_type": "linear", "warmup_steps": 0,
        "weight_decay": 0.0, "max_grad_norm": 1.0, "optim": "adamw_torch", "seed": opts.seed,
        "bf16": False, "fp16": False, "gradient_checkpointing": False, "use_cpu": True,
        "use_vllm": False, "model_init_kwargs": {"dtype": torch.float32}, "logging_steps": 1,
        "save_strategy": "no", "report_to": "none", "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }
    if algo == "grpo":
        return GRPOConfig(beta=opts.grpo_beta, **common)
    return RLOOConfig(**common)  # beta: TRL's RLOO default (0.05), recorded in the result


def instrument(trainer, clock: StepClock, token_check: dict, max_prompt_length: int) -> None:
    """Wrap the trainer's own methods on the instance (TRL's code is not changed)."""
    import torch

    from alignlab.data.tokenize import encode_prompt

    trainer._generate = clock.timed(trainer._generate, lambda: "generate")
    trainer._generate_single_turn = clock.timed(trainer._generate_single_turn,
                                                lambda: "generate_model")
    trainer._get_per_token_logps_and_entropies = clock.timed(
        trainer._get_per_token_logps_and_entropies,
        lambda: "update_logprob_grad" if torch.is_grad_enabled() else "logprob")
    trainer.compute_loss = clock.timed(trainer.compute_loss, lambda: "update_forward")
    trainer.accelerator.backward = clock.timed(trainer.accelerator.backward,
                                               lambda: "update_backward")
    prepare = trainer._prepare_inputs

    def prepare_inputs(*args, **kwargs):
        out = prepare(*args, **kwargs)
        clock.prepare_end = time.perf_counter()
        return out

    trainer._prepare_inputs = prepare_inputs
    tokenize = trainer._tokenize_prompts

    def tokenize_prompts(prompts):
        out = tokenize(prompts)
        tokenizer = trainer.processing_class
        for prompt, ids in zip(prompts, out[0]):
            expected = encode_prompt(tokenizer, to_messages(prompt), max_prompt_length)
            token_check["rows"] += 1
            token_check["identical"] += int(list(ids) == expected)
        return out

    trainer._tokenize_prompts = tokenize_prompts


def summarise(steps: list[dict], warmup: int) -> dict:
    """steps/s over the timed steps and the mean per-step split (seconds)."""
    timed = steps[warmup:]
    if warmup < 1 or not timed:
        raise RuntimeError(f"need >= 1 warm-up and >= 1 timed step, got {len(steps)} steps")
    window = timed[-1]["end_s"] - steps[warmup - 1]["end_s"]
    cpu = timed[-1]["cpu_s"] - steps[warmup - 1]["cpu_s"]
    iterations = [b["end_s"] - a["end_s"] for a, b in zip(steps[warmup - 1:], timed)]
    keys = ["generate", "generate_model", "score", "logprob", "update", "update_forward",
            "update_backward"]
    split = {k: sum(s.get(k, 0.0) for s in timed) / len(timed) for k in keys}
    split["iteration"] = sum(iterations) / len(iterations)
    split["other"] = split["iteration"] - sum(split[k] for k in ("generate", "score", "logprob",
                                                                  "update"))
    return {"timed_steps": len(timed), "window_s": window, "steps_per_s": len(timed) / window,
            "cpu_s_window": cpu, "steps_per_cpu_s": len(timed) / cpu, "time_split_s": split}


def trl_logs(trainer, warmup: int) -> dict:
    """Means over the timed steps of what TRL logs (lengths, reward, KL) and the settings used."""
    rows = [h for h in trainer.state.log_history if "reward" in h][warmup:]
    keys = ["completions/mean_length", "completions/max_length", "completions/clipped_ratio",
            "reward", "kl", "entropy", "grad_norm", "loss"]
    means = {k: sum(r[k] for r in rows) / len(rows) for k in keys if rows and all(k in r for r in rows)}
    args = trainer.args
    settings = {k: getattr(args, k, None) for k in (
        "beta", "loss_type", "scale_rewards", "normalize_advantages", "epsilon", "num_iterations",
        "steps_per_generation", "generation_batch_size", "gradient_checkpointing", "bf16",
        "shuffle_dataset", "use_bias_correction_kl", "disable_dropout", "top_k", "max_grad_norm",
        "lr_scheduler_type")}
    model = trainer.accelerator.unwrap_model(trainer.model)
    name = ("is_activation_checkpointing" if hasattr(model, "is_activation_checkpointing")
            else "is_gradient_checkpointing")
    checkpointing = getattr(model, name, None)
    return {"log_means": means, "settings": settings, "ref_model": trainer.ref_model is not None,
            "model_checkpointing_active": checkpointing, "model_training_dtype": str(model.dtype),
            "log_rows": len(rows)}


def run(opts) -> dict:
    import torch
    from datasets import Dataset
    from torch.optim.optimizer import register_optimizer_step_post_hook
    from trl import GRPOTrainer, RLOOTrainer

    torch.set_num_threads(opts.threads)
    work = Path(opts.work)
    work.mkdir(parents=True, exist_ok=True)
    sampler = RssSampler()
    sampler.start()
    clock = StepClock()
    load_start = os.getloadavg()

    def on_step(*args):
        clock.step_end(*args)
        if len(clock.steps) in (opts.warmup, opts.warmup + opts.steps):
            clock.load_at.append((len(clock.steps), list(os.getloadavg())))

    register_optimizer_step_post_hook(on_step)
    dataset = Dataset.from_list(read_prompts(opts.prompts))
    trainer_cls = GRPOTrainer if opts.algo == "grpo" else RLOOTrainer
    init_start = time.perf_counter()
    trainer = trainer_cls(model=opts.model, reward_funcs=make_reward(opts.gym, clock),
                          args=trainer_config(opts.algo, opts, work), train_dataset=dataset,
                          processing_class=bos_tokenizer(opts.model))
    init_s = time.perf_counter() - init_start
    token_check = {"rows": 0, "identical": 0}
    instrument(trainer, clock, token_check, opts.max_prompt_length)
    trainer.train()
    sampler.running = False
    usage = resource.getrusage(resource.RUSAGE_SELF)
    if len(clock.steps) != opts.warmup + opts.steps:
        raise RuntimeError(f"expected {opts.warmup + opts.steps} optimiser steps, "
                           f"saw {len(clock.steps)}")
    return {
        "tool": "trl", "algo": opts.algo, "status": "ok",
        **summarise(clock.steps, opts.warmup),
        "peak_rss_gb": usage.ru_maxrss * 1024 / 1e9, "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_sampled_gb": sampler.peak / 1e9,
        "trainer_init_s": init_s, "first_step_end_s": clock.steps[0]["end_s"],
        "process_s": time.perf_counter() - T0,
        "loadavg": {"start": list(load_start), **{f"after_step_{n}": v for n, v in clock.load_at}},
        "token_check": token_check, **trl_logs(trainer, opts.warmup),
        "steps": clock.steps,
    }


def versions() -> dict:
    import platform

    import accelerate
    import torch
    import transformers
    import trl

    return {"trl": trl.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "accelerate": accelerate.__version__,
            "python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count()}


def parse_args(argv=None):
    parser = shared_parser(__doc__.splitlines()[0])
    parser.add_argument("--max-prompt-length", type=int, default=256,
                        help="only for the token check (alignlab's train.max_prompt_length)")
    parser.add_argument("--grpo-beta", type=float, default=0.04)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    opts = parse_args(argv)
    result = run(opts)
    result.update({"date": time.strftime("%Y-%m-%d %H:%M:%S"), "versions": versions(),
                   "command": " ".join([sys.executable, *sys.argv]),
                   "setup": {k: getattr(opts, k) for k in (
                       "model", "prompts", "gym", "k", "prompts_per_step", "max_new_tokens", "lr",
                       "grpo_beta", "warmup", "steps", "threads", "seed")}})
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as fh:
        fh.write(json.dumps(result, default=str) + "\n")
    s = result["time_split_s"]
    print(f"trl {opts.algo}: {result['steps_per_s']:.3f} steps/s over {result['timed_steps']} steps; "
          f"per step generate {s['generate']:.2f}s score {s['score']:.3f}s logprob "
          f"{s['logprob']:.2f}s update {s['update']:.2f}s other {s['other']:.2f}s; "
          f"peak RSS {result['peak_rss_gb']:.2f} GB; tokens identical "
          f"{result['token_check']['identical']}/{result['token_check']['rows']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
