"""The gym's red-team attack files: its harmful requests, with their harm categories.

Every build writes ``data/attacks.jsonl`` (``{"id", "prompt": [messages], "category"}``, the format
``prompts`` of :mod:`alignlab.redteam.attacks`): the harmful prompts of the eval pool, so that
red-teaming a policy never attacks it with requests it was trained on; and
``data/attacks_train.jsonl``, the train pool's, for red-teaming whose failures become training data
(the closed loop) while the held-out file measures the result. Derived from the prompt pools without
randomness, so adding them changed no other file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from alignlab.data.records import Messages, messages_to_list
from alignlab.gym.world import World, parse_prompt


def attack_rows(world: World, prompts: Sequence[Messages]) -> list[dict[str, Any]]:
    """One row per harmful prompt of ``prompts`` (benign ones are skipped), in order."""
    rows = []
    for prompt in prompts:
        task = parse_prompt(world, prompt)
        if task.harmful:
            text = "\n".join(m.content for m in prompt)
            rows.append({"id": hashlib.sha256(text.encode()).hexdigest()[:16],
                         "prompt": messages_to_list(prompt), "category": task.category})
    return rows
