"""Direct Preference Optimisation, sigmoid loss (Rafailov et al. 2023, "Direct Preference
Optimization: Your Language Model is Secretly a Reward Model", eq. 7).

    h = (log pi(y_c|x) - log pi_ref(y_c|x)) - (log pi(y_r|x) - log pi_ref(y_r|x))
    l = -log sigma(beta * h)

Conventions: log-probabilities are *summed* over the completion tokens (no length normalisation);
beta is the strength of the implicit KL penalty towards the reference (small beta = weak penalty,
the policy may move further); the implicit reward of a completion is beta * (log pi - log pi_ref).

Soft labels (departure from the paper, which assumes y = 1): with y = P(chosen preferred),

    l = -[ y log sigma(beta h) + (1 - y) log sigma(-beta h) ]

the binary cross-entropy on the implicit-reward margin. With y = 1 - eps this is conservative DPO
(cDPO, Mitchell 2023, label smoothing eps); with AI-feedback probabilities it is the soft-label
generalisation. y = 1 recovers the paper's loss exactly.
"""

from __future__ import annotations

import torch

from alignlab.losses.common import default_labels, pairwise_accuracy, soft_label_logistic


def dpo_sigmoid_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
                     ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float,
                     labels: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-pair DPO losses [B] and per-pair metrics, from summed sequence log-probs [B].

    Metrics (each [B], detached): ``rewards/chosen`` = beta (pi_c - ref_c), ``rewards/rejected`` =
    beta (pi_r - ref_r), ``rewards/accuracy`` (implicit-reward margin agrees with the label's side;
    0.5 on ties), ``rewards/margin`` = rewards/chosen - rewards/rejected.
    """
    if beta <= 0:
        raise ValueError(f"dpo beta must be > 0 (got {beta})")
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    margin = chosen_reward - rejected_reward
    labels = default_labels(margin, labels)
    losses = soft_label_logistic(margin, labels)
    metrics = {"rewards/chosen": chosen_reward.detach(),
               "rewards/rejected": rejected_reward.detach(),
               "rewards/accuracy": pairwise_accuracy(margin.detach(), labels),
               "rewards/margin": margin.detach()}
    return losses, metrics
