"""Context-distillation loss: KL from a stored top-k teacher distribution to the student.

Askell et al. 2021, "A General Language Assistant as a Laboratory for Alignment", sec. 3.1: the
student is trained on ``KL(p_teacher(. | C, x_<t) || p_student(. | x_<t))`` at the positions of a
text x, where the teacher also reads the context C. Storing the teacher's whole next-token
distribution is too costly, so only its ``k`` most likely tokens are kept, and both distributions
are coarsened to the same k + 1 outcomes: the k stored tokens and one "rest" bucket::

    KL_k = sum_{i=1..k} p_i log(p_i / q_i) + r_p log(r_p / r_q)
    r_p  = 1 - sum_i p_i              (the teacher's mass outside its top k)
    r_q  = sum_{v not in top-k} q_v   (the student's mass on the same complement)

where ``q`` is the student's full softmax. By the data-processing inequality ``KL_k`` is at most the
full KL, and it equals the full KL when k is the vocabulary size. Departures: ``0 log 0 = 0`` for
the teacher terms (``r_p = 0`` when the top k hold all the mass), and the student's probabilities
are clamped below at ``eps`` before the log, so a vanishing ``q`` gives a large but finite loss.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def coarse_kl(student_logits: Tensor, teacher_ids: Tensor, teacher_probs: Tensor,
              eps: float = 1e-10) -> Tensor:
    """Per-position coarsened KL ``KL_k`` [N] (module docstring; Askell et al. 2021, sec. 3.1).

    ``student_logits``: [N, V] raw logits of the student at N trained positions; ``teacher_ids``:
    [N, k] the teacher's top-k token ids; ``teacher_probs``: [N, k] their teacher probabilities
    (the rest mass is implied). Computed in float32 (float64 stays float64); gradients flow to
    ``student_logits`` only.
    """
    _check_shapes(student_logits, teacher_ids, teacher_probs)
    dtype = torch.float64 if student_logits.dtype == torch.float64 else torch.float32
    q = torch.softmax(student_logits.to(dtype), dim=-1)
    ids = teacher_ids.long()
    p = teacher_probs.to(dtype).detach()
    q_top = q.gather(-1, ids)
    outside = torch.ones_like(q, dtype=torch.bool).scatter(-1, ids, False)
    q_rest = (q * outside).sum(-1)
    r_p = (1.0 - p.sum(-1)).clamp(min=0.0)
    top = torch.xlogy(p, p) - p * torch.log(q_top.clamp(min=eps))
    rest = torch.xlogy(r_p, r_p) - r_p * torch.log(q_rest.clamp(min=eps))
    return top.sum(-1) + rest


def coarse_kl_sum(student_logits: Tensor, teacher_ids: Tensor, teacher_probs: Tensor,
                  eps: float = 1e-10) -> tuple[Tensor, int]:
    """``(sum of KL_k over the N positions, N)``; the training loop divides by the global N of
    the optimiser step (token-mean over trained positions, as the SFT loss does)."""
    per_position = coarse_kl(student_logits, teacher_ids, teacher_probs, eps)
    return per_position.sum(), int(per_position.shape[0])


def _check_shapes(student_logits: Tensor, teacher_ids: Tensor, teacher_probs: Tensor) -> None:
    if student_logits.dim() != 2 or teacher_ids.dim() != 2:
        raise ValueError(f"coarse_kl needs student_logits [N, V] and teacher_ids [N, k]; got "
                         f"{tuple(student_logits.shape)} and {tuple(teacher_ids.shape)}")
    if teacher_ids.shape != teacher_probs.shape or teacher_ids.shape[0] != student_logits.shape[0]:
        raise ValueError(f"coarse_kl: teacher_ids {tuple(teacher_ids.shape)}, teacher_probs "
                         f"{tuple(teacher_probs.shape)} and student_logits "
                         f"{tuple(student_logits.shape)} disagree on N or k")
    if teacher_ids.shape[1] > student_logits.shape[1]:
        raise ValueError(f"coarse_kl: k = {teacher_ids.shape[1]} exceeds the vocabulary "
                         f"({student_logits.shape[1]})")
