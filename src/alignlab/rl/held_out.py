"""Periodic evaluation of the online policy on held-out prompts.

Every ``train.eval_every`` iterations and after the last one, the live policy answers each prompt of
``eval_prompts`` once, through the same generation backend as the rollouts but with a fixed seed
(``generation.seed``), so successive evaluations differ only by the policy. The answers are scored by
the configured reward scorers and monitors; logged as ``eval/reward`` (the weighted reward),
``eval/<scorer name>`` for each part, ``eval/monitor/<name>`` and ``eval/response_length``, each with
``_se``. Prompts are split across processes and the sums all-reduced. Generation runs under its own
seed (the HF backend forks the RNG), so evaluating does not change the training run.
"""

from __future__ import annotations

import math

import torch


def eval_settings(generation):
    """One sample per prompt at the configured temperature, with the configured seed."""
    return generation.model_copy(update={"num_samples": 1})


def evaluate_prompts(acc, prompts: list, generator, generation, scorer, monitor) -> dict[str, float]:
    """``eval/*`` means and standard errors over ``prompts`` (module docstring)."""
    mine = prompts[acc.process_index::acc.num_processes]
    columns: dict[str, list[float]] = {}
    if mine:
        samples = [group[0] for group in generator.generate(mine, eval_settings(generation))]
        texts = [s.text for s in samples]
        columns["reward"] = scorer.score(mine, texts)
        columns.update(scorer.last_parts if len(scorer.last_parts) > 1 else {})
        if monitor is not None:
            monitor.score(mine, texts)
            columns.update({f"monitor/{k}": v for k, v in monitor.last_parts.items()})
        columns["response_length"] = [float(len(s.token_ids)) for s in samples]
    return reduce_columns(acc, columns)


def reduce_columns(acc, columns: dict[str, list[float]]) -> dict[str, float]:
    """Global mean and standard error (n - 1 in the variance) of each column across processes."""
    names = sorted(columns)
    local = torch.tensor([[len(columns[n]), sum(columns[n]), sum(v * v for v in columns[n])]
                          for n in names], dtype=torch.float64, device=acc.device)
    total = acc.reduce(local, "sum") if names else local
    row = {}
    for name, (n, s, ss) in zip(names, total.tolist()):
        mean = s / n if n else float("nan")
        var = (ss - n * mean * mean) / (n - 1) if n > 1 else float("nan")
        row[f"eval/{name}"] = mean
        row[f"eval/{name}_se"] = math.sqrt(max(var, 0.0) / n) if n > 1 else float("nan")
    return row
