"""Arguments and defaults the two workers share (same setup on both sides of the comparison)."""

from __future__ import annotations

import argparse

DEFAULTS = {
    "model": "/work/main/runs/league/sft/model",
    "prompts": "/work/main/runs/league/gym/data/train_prompts.jsonl",
    "gym": "/work/main/runs/league/gym",
}


def shared_parser(description: str) -> argparse.ArgumentParser:
    """The worker arguments both tools take; each worker adds its own."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("algo", choices=["grpo", "rloo"])
    parser.add_argument("--out", required=True, help="JSON-lines file the result is appended to")
    parser.add_argument("--work", default="/tmp/alignlab_trl_online")
    parser.add_argument("--model", default=DEFAULTS["model"])
    parser.add_argument("--prompts", default=DEFAULTS["prompts"])
    parser.add_argument("--gym", default=DEFAULTS["gym"])
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--prompts-per-step", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    return parser
