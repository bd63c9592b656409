"""Win rate of a policy against a reference, judged by a reward model, and the proxy reward.

Both completions of a prompt are scored by the reward model on exactly the text it was trained on:
:func:`alignlab.data.tokenize.encode_completion` (chat template or HH fallback, the same truncation
policy), then :func:`alignlab.models.logprobs.reward_scores`. A win counts 1, a tie 0.5 and a loss 0
(the usual convention, e.g. AlpacaEval and the DPO paper's GPT-4 win rates — here the judge is the RM).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from alignlab.data.records import Messages
from alignlab.eval.stats import Stat, mean_se


@dataclass
class RewardJudge:
    """A loaded reward model with the lengths it was trained with (see :func:`rm_lengths`)."""

    model: Any
    tokenizer: Any
    max_length: int = 512
    max_prompt_length: int = 256
    batch_size: int = 16
    name: str = "reward_model"

    def score(self, prompts: Sequence[Messages], completions: Sequence[str]) -> list[float]:
        """The RM score of each (prompt, completion) pair; batched by length, no gradients."""
        if len(prompts) != len(completions):
            raise ValueError(f"reward scores: {len(prompts)} prompts vs {len(completions)} completions")
        from alignlab.data.tokenize import encode_completion

        encoded = [encode_completion(self.tokenizer, p, c, self.max_length, self.max_prompt_length)
                   for p, c in zip(prompts, completions)]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
        scores = [0.0] * len(encoded)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            for i, value in zip(chunk, self._score_batch([encoded[i] for i in chunk])):
                scores[i] = value
        return scores

    @torch.no_grad()
    def _score_batch(self, items) -> list[float]:
        from alignlab.data.collate import pad_encoded
        from alignlab.models.logprobs import reward_scores

        batch = pad_encoded(items, self.tokenizer.pad_token_id)
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)}
        scores = reward_scores(self.model, batch["input_ids"], batch["attention_mask"],
                               batch.get("position_ids"))
        return scores.float().cpu().tolist()


def win_rate(policy_scores: Sequence[float], reference_scores: Sequence[float]) -> Stat:
    """Share of pairs the policy wins (1), ties (0.5) or loses (0), with its standard error."""
    if len(policy_scores) != len(reference_scores):
        raise ValueError(f"win rate: {len(policy_scores)} policy scores vs "
                         f"{len(reference_scores)} reference scores; pair them per prompt")
    return mean_se(_outcome(a, b) for a, b in zip(policy_scores, reference_scores))


def _outcome(a: float, b: float) -> float:
    return 1.0 if a > b else 0.5 if a == b else 0.0


def proxy_reward(scores: Sequence[float]) -> Stat:
    """Mean reward-model score of the policy's completions (the proxy reward)."""
    return mean_se(scores)


def rm_lengths(rm_path: str) -> tuple[int, int]:
    """``(max_length, max_prompt_length)`` the RM at ``rm_path`` was trained with.

    Read from the RM run's ``config.yaml`` (the folder above ``model/``) when it is there; otherwise the
    :class:`~alignlab.config.TrainSettings` defaults."""
    from pathlib import Path

    import yaml

    from alignlab.config import TrainSettings

    defaults = TrainSettings()
    config = Path(rm_path).expanduser().parent / "config.yaml"
    try:
        data = yaml.safe_load(config.read_text()) if config.is_file() else None
    except (OSError, yaml.YAMLError):
        data = None
    train = data.get("train") if isinstance(data, dict) and data.get("stage") == "rm" else None
    if not isinstance(train, dict):
        return defaults.max_length, defaults.max_prompt_length
    return (int(train.get("max_length", defaults.max_length)),
            int(train.get("max_prompt_length", defaults.max_prompt_length)))


def load_reward_judge(path: str, batch_size: int = 32, device=None,
                      name: str = "reward_model") -> RewardJudge:
    """A trained reward model folder as a :class:`RewardJudge`, with the lengths it was trained with
    (:func:`rm_lengths`), on ``device`` when given."""
    from alignlab.config import ModelSettings
    from alignlab.models.loading import load_reward_model

    model, tokenizer = load_reward_model(ModelSettings(path=path), for_training=False)
    if device is not None:
        model = model.to(device)
    max_length, max_prompt = rm_lengths(path)
    return RewardJudge(model, tokenizer, max_length, max_prompt, batch_size, name)
