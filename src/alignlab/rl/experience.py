"""Experience: a rollout moved into the *response frame* the advantage estimators and losses use.

A rollout's token tensors are in the shifted sequence frame ``[N, L-1]`` (position t predicts token
t+1), where each row's response starts after its own prompt. The estimators in
:mod:`alignlab.rl.advantages` need right-padded response-only tensors ``[N, T]``: column 0 is the
first response token of every row. :class:`ResponseIndex` maps between the two frames with one
gather, so any per-position quantity of the policy, the reference or the critic is converted the
same way, during the rollout and again in every update.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch

from alignlab.rl.rollout import Rollout


@dataclass(frozen=True)
class ResponseIndex:
    """Where each row's response lies in the shifted frame: ``index [N, T]`` and ``mask [N, T]``."""

    index: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def from_shifted_mask(cls, shifted: torch.Tensor) -> ResponseIndex:
        """Build from the shifted loss mask (1 on response tokens, one contiguous run per row)."""
        shifted = shifted.float()
        lengths = shifted.sum(1).long()
        if (lengths == 0).any():
            rows = (lengths == 0).nonzero().flatten().tolist()
            raise ValueError(f"rollout rows {rows} have no response token")
        starts = shifted.argmax(1)
        width = int(lengths.max())
        offsets = torch.arange(width, device=shifted.device)
        index = (starts[:, None] + offsets).clamp(max=shifted.shape[1] - 1)
        mask = (offsets[None, :] < lengths[:, None]).float()
        return cls(index, mask)

    def take(self, shifted: torch.Tensor) -> torch.Tensor:
        """``[N, L-1]`` (shifted frame) -> ``[N, T]`` response frame, 0 on padding."""
        return shifted.gather(1, self.index) * self.mask.to(shifted.dtype)

    def rows(self, idx: torch.Tensor) -> ResponseIndex:
        return ResponseIndex(self.index[idx], self.mask[idx])

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(1)


@dataclass
class Experience:
    """Everything one update needs, per sampled sequence (group-major rows, ``k`` per prompt).

    ``batch``: the full token sequences (input_ids, attention_mask, loss_mask). Response-frame
    ``[N, T]`` tensors: ``old_logp`` (None until the update's own forward fills it, when the rollout
    skipped the no-grad forward: see :mod:`alignlab.rl.trainer`), ``ref_logp`` (None without a
    reference), ``kl`` (per-token
    estimate of KL(policy || reference) at sampling time), ``old_values`` (critic, PPO only),
    ``advantages`` and ``returns`` (filled by the algorithm). ``scores`` [N] are the rewards the
    algorithm trains on (after normalisation, clipping and penalties); with a dense (process)
    scorer they include the dense rewards' sum, and ``dense`` ``[N, T]`` holds those rewards per
    token. ``targets`` [N]: per-sequence regression targets of algorithms that regress the
    log-ratio to the reference (SPPO). ``opponent`` [N]: 1 on rows sampled by the opponent
    (Nash-MD's mixture, XPO's reference), 0 on the policy's; None without an opponent.
    """

    batch: dict[str, torch.Tensor]
    where: ResponseIndex
    old_logp: torch.Tensor | None
    ref_logp: torch.Tensor | None
    scores: torch.Tensor
    k: int
    kl: torch.Tensor | None = None
    old_values: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    dense: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    opponent: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)

    @property
    def mask(self) -> torch.Tensor:
        return self.where.mask

    @property
    def own_rows(self) -> torch.Tensor:
        """Bool [N]: the rows the policy sampled (every row without an opponent)."""
        if self.opponent is None:
            return torch.ones(len(self), dtype=torch.bool, device=self.scores.device)
        return self.opponent == 0

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def select(self, idx: torch.Tensor) -> Experience:
        """The rows ``idx`` (a minibatch), with sequences trimmed to their longest real row."""
        batch = trim_batch({k: v[idx] for k, v in self.batch.items()})
        where = self.where.rows(idx)
        width = int(where.lengths.max())
        where = ResponseIndex(where.index[:, :width].clamp(max=batch["input_ids"].shape[1] - 2),
                              where.mask[:, :width])
        changes = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("batch", "where", "k", "extra") or value is None:
                continue
            value = value[idx]
            changes[f.name] = value[:, :width] if value.dim() == 2 else value
        return replace(self, batch=batch, where=where, extra=dict(self.extra), **changes)


def trim_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the right-padding columns no row of ``batch`` uses."""
    width = int(batch["attention_mask"].sum(1).max())
    return {k: v[:, :width] if v.dim() == 2 else v for k, v in batch.items()}


def experience_from_rollout(rollout: Rollout, scores: torch.Tensor | None = None) -> Experience:
    """Response-frame view of a rollout (``scores`` default to the rollout's raw scores)."""
    where = ResponseIndex.from_shifted_mask(rollout.mask)
    ref = None if rollout.ref_logp is None else where.take(rollout.ref_logp)
    dense = None if rollout.dense is None else where.take(rollout.dense)
    old = None if rollout.old_logp is None else where.take(rollout.old_logp)
    return Experience(batch=rollout.batch, where=where, old_logp=old,
                      ref_logp=ref, scores=rollout.scores if scores is None else scores,
                      k=rollout.k, dense=dense, opponent=rollout.opponent)
