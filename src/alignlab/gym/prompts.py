"""Prompts of the gym: one sampled prompt (single or multi-turn), and the disjoint train / eval pools.

Above :mod:`alignlab.gym.world` (the world and its request templates) and
:mod:`alignlab.gym.styles` (a multi-turn prompt's earlier assistant turn is a correct answer).
"""

from __future__ import annotations

import random

from alignlab.data.records import Message, Messages
from alignlab.gym.styles import render_correct
from alignlab.gym.world import (
    FAMILY_WEIGHTS,
    MULTI_TURN_RATE,
    Task,
    World,
    is_eval_request,
    sample_benign,
    sample_harmful,
)


def sample_prompt(rng: random.Random, world: World) -> tuple[Task, Messages]:
    """One prompt: family by :data:`FAMILY_WEIGHTS`, multi-turn with probability ``MULTI_TURN_RATE``."""
    family = rng.choices(list(FAMILY_WEIGHTS), weights=list(FAMILY_WEIGHTS.values()))[0]
    task, text = sample_harmful(rng, world) if family == "harmful" else sample_benign(rng, world, family)
    messages: list[Message] = []
    if rng.random() < MULTI_TURN_RATE:
        prior, prior_text = sample_benign(rng, world, rng.choice(["fact", "add", "count"]))
        messages += [Message("user", prior_text), Message("assistant", render_correct(rng, prior))]
    messages.append(Message("user", text))
    return task, tuple(messages)


def make_prompt_pools(world: World, seed: int, n_train: int, n_eval: int
                      ) -> tuple[list[Messages], list[Messages]]:
    """Disjoint train and eval pools of distinct prompts.

    The split is by final request: a request (e.g. "What is 3 plus 5?") is either held out or not,
    so no eval prompt's request is ever a training prompt's request, in any conversation. Prior turns
    of multi-turn prompts and the world's facts are shared (the base model must know the facts)."""
    rng = random.Random(f"prompts-{seed}")
    pools: dict[bool, list[Messages]] = {False: [], True: []}
    seen: set[Messages] = set()
    wanted = {False: n_train, True: n_eval}
    for _ in range(50 * (n_train + n_eval)):
        _, messages = sample_prompt(rng, world)
        side = is_eval_request(messages[-1].content, seed)
        if messages not in seen and len(pools[side]) < wanted[side]:
            seen.add(messages)
            pools[side].append(messages)
        if all(len(pools[k]) >= wanted[k] for k in pools):
            return pools[False], pools[True]
    raise RuntimeError("could not draw enough distinct gym prompts; lower the pool sizes")
