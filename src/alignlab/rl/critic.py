"""The PPO critic: a transformer with a scalar head that values every prefix of a response.

InstructGPT (Ouyang et al. 2022, appendix C.3) initialises the value function from the reward model;
that is the default here when a reward model is among the rewards, otherwise the critic starts from
the policy's weights with a new scalar head. The critic is a Hugging Face sequence classifier (as
reward models are, see :func:`alignlab.models.loading.load_reward_model`); its score head is
applied to the hidden state at every position instead of only the last one.
"""

from __future__ import annotations

import torch

from alignlab.models.logprobs import score_head
from alignlab.models.shared_prefix import batch_groups, grouped_shifted_hidden_states


class ValueModule(torch.nn.Module):
    """``forward(batch) -> [N, L-1]``: V of the state before token t+1 at shifted position t.

    Position t of the shifted frame has seen tokens 0..t and predicts token t+1, so its hidden state
    is the state in which the policy chooses token t+1; the response-frame values V_t therefore line
    up with the policy's token log-probs. Wrapped (rather than calling the HF model) so DDP sees the
    whole computation inside ``forward``. Rows that share a prompt (``prefix_group`` in the batch)
    run it once per group (:func:`alignlab.models.shared_prefix.grouped_shifted_hidden_states`).
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> torch.Tensor:
        hidden = grouped_shifted_hidden_states(self.model, batch, batch_groups(batch))
        return score_head(self.model)(hidden)[..., 0].float()


@torch.no_grad()
def critic_values(critic: ValueModule, batch: dict) -> torch.Tensor:
    """Values at sampling time (no grad, eval mode), shifted frame ``[N, L-1]``."""
    was_training = critic.training
    critic.eval()
    try:
        return critic(batch)
    finally:
        critic.train(was_training)
