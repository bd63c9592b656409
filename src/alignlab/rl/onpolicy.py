"""Old log-probs (and old values) from the update's own forward, when a rollout gets one update.

A rollout normally records ``old_logp`` with a no-grad forward of the policy (and PPO's critic
records ``old_values``), and the update then runs the policy again, with gradients. When the rollout
gets exactly one optimiser step over all of it (``rl.ppo_epochs`` 1, one minibatch, one
micro-batch) the parameters do not change between the two forwards, so they compute the same
numbers: the update's forward, detached, *is* the old log-probs, and the no-grad forward can go.
This is the on-policy case of PPO's ratio (r = exp(logp − old_logp) = 1, Schulman et al. 2017,
eq. 6) that TRL's GRPO trainer also exploits with ``num_iterations=1``.

Here the trainer runs that forward first, over every row of the rollout, fills ``exp.old_logp``
(and ``exp.old_values``) from it, then computes the KL-in-reward, the advantages and the logged KL
from those values, and only then the loss on the same graph. So the algorithms whose reward holds
the KL to the reference (PPO, RLOO, REINFORCE++) skip the extra forward too: their advantages need
every row's log-probs before the first loss, which is why the skip needs the whole rollout in one
forward (no ``rl.micro_batch_size`` split below the rollout).

Which algorithms: those whose loss covers every sampled row (``Algorithm.trains_every_row``: PPO,
RLOO, GRPO, REINFORCE++). Online DPO and SPPO train on two of each prompt's k samples, XPO drops
tied pairs and Nash-MD trains on the policy's half of the rows, not the opponent's; yet the rows
outside the loss need log-probs too (the logged KL; the opponent's rows share the batch). One
forward with gradients over all rows would run the backward through rows that carry no loss (for
k = 4 and one pair per prompt: 4 rows forward and backward, instead of 4 rows without grad plus 2
with), so these keep the separate no-grad forward.

Not skipped either when dropout is active in the policy or the critic (a training-mode forward
would then differ from the eval-mode one the no-grad path uses), or when the rollout is split into
several minibatches, epochs or micro-batches (parameters, or the graph held in memory, would
differ).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_DROPOUT_NAMES = ("dropout", "pdrop", "layerdrop")


def has_dropout(model: torch.nn.Module | None) -> bool:
    """Whether ``model`` can drop anything in training mode: a dropout module with p > 0 (LoRA's
    included), or a config field named like ``*dropout*`` / ``*pdrop*`` above 0 (attention
    dropout applied functionally, e.g. Llama's ``attention_dropout``; ``*layerdrop*``)."""
    if model is None:
        return False
    if any(isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules()):
        return True
    configs = [getattr(m, "config", None) for m in model.modules()]
    for config in {id(c): c for c in configs if c is not None}.values():
        fields = config.to_dict() if hasattr(config, "to_dict") else vars(config)
        for name, value in fields.items():
            if any(part in name for part in _DROPOUT_NAMES) and isinstance(value, (int, float)) \
                    and not isinstance(value, bool) and value > 0:
                return True
    return False


def reuses_update_forward(epochs: int, minibatches: int, micro_rows: int | None, rows: int,
                          unit_rows: int, models) -> bool:
    """Whether the rollout's no-grad policy/critic forwards can come from the update's forward:
    one epoch, one minibatch, micro-batches (``micro_rows`` units of ``unit_rows`` rows) that hold
    all ``rows`` of a rollout, and no dropout in ``models`` (see the module docstring)."""
    one_chunk = micro_rows is None or micro_rows * unit_rows >= rows
    return epochs == 1 and minibatches == 1 and one_chunk and not any(map(has_dropout, models))


@dataclass
class LiveForward:
    """The update's forward over the whole rollout, with gradients: response-frame ``logp`` and
    (PPO) ``values``, ``[N, T]``."""

    logp: torch.Tensor
    values: torch.Tensor | None = None

    def rows(self, idx: torch.Tensor, width: int) -> LiveForward:
        """The rows ``idx``, trimmed to ``width`` columns (as ``Experience.select`` trims)."""
        values = None if self.values is None else self.values[idx][:, :width]
        return LiveForward(self.logp[idx][:, :width], values)


def live_forward(policy, critic, exp) -> LiveForward:
    """Run the (wrapped) policy, and the critic when given, over every row of ``exp`` with
    gradients; fill ``exp.old_logp`` and ``exp.old_values`` with the detached results."""
    logp = exp.where.take(policy(exp.batch))
    exp.old_logp = logp.detach()
    values = None
    if critic is not None:
        values = exp.where.take(critic(exp.batch))
        exp.old_values = values.detach()
    return LiveForward(logp, values)
