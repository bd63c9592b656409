"""What a preference-family loss receives: per-sequence statistics of one policy forward.

The trainer runs chosen and rejected (or a whole ranked list, or a batch of unpaired completions) through
ONE forward, reduces the token log-probs to per-sequence quantities, attaches the cached reference
log-probs, and hands the loss one of the three input types below. Losses are pure functions of these
tensors; none of them sees a model, so each is tested on small hand-made tensors.

Conventions shared by every loss:

- ``logps`` is the log-probability of the completion *summed* over its tokens (prompt excluded);
  ``lengths`` is its token count (float, >= 1), so ``logps / lengths`` is the length-normalised
  (per-token average) log-probability that SimPO, ORPO, RRHF and PRO use.
- ``ref_logps`` is the same sum under the frozen reference (no gradient), ``None`` when the loss is
  reference-free. The implicit reward of DPO-style losses is ``beta * (logps - ref_logps)``.
- token-level fields are aligned with the shifted targets: position t holds the prediction of token
  t+1, ``token_mask`` is 1 on completion tokens. They are filled only for losses that declare they
  need them (``LossSpec.needs``), because they cost memory.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class SeqStats:
    """Per-sequence quantities; every tensor has the same leading shape (``[N]`` or ``[B, K]``)."""

    logps: Tensor
    lengths: Tensor
    ref_logps: Tensor | None = None
    token_logps: Tensor | None = None
    token_mask: Tensor | None = None
    target_ids: Tensor | None = None
    topk_logps: Tensor | None = None
    topk_ids: Tensor | None = None
    token_kl: Tensor | None = None

    @classmethod
    def of(cls, logps, ref_logps=None, lengths=None, **extra) -> SeqStats:
        """Build from numbers or tensors (for tests and callers); lengths default to 1."""
        logps = torch.as_tensor(logps, dtype=torch.float32)
        lengths = torch.ones_like(logps) if lengths is None else torch.as_tensor(
            lengths, dtype=torch.float32)
        ref = None if ref_logps is None else torch.as_tensor(ref_logps, dtype=torch.float32)
        extra = {k: torch.as_tensor(v) for k, v in extra.items()}
        return cls(logps=logps, lengths=lengths, ref_logps=ref, **extra)

    @property
    def mean_logps(self) -> Tensor:
        """Length-normalised log-probability: ``logps / lengths``."""
        return self.logps / self.lengths

    @property
    def log_ratio(self) -> Tensor:
        """``logps - ref_logps``; raises when the reference is missing."""
        return self.logps - self.require_reference()

    def require_reference(self) -> Tensor:
        if self.ref_logps is None:
            raise ValueError("this loss needs reference log-probs (ref_logps is None)")
        return self.ref_logps

    def map(self, fn) -> SeqStats:
        """Apply ``fn`` to every tensor field that is set (index, reshape, slice)."""
        changes = {f.name: fn(getattr(self, f.name)) for f in fields(self)
                   if getattr(self, f.name) is not None}
        return replace(self, **changes)


@dataclass(frozen=True)
class PairInputs:
    """``chosen`` and ``rejected`` stats [B] and ``labels`` [B] = P(chosen preferred) in [0, 1]."""

    chosen: SeqStats
    rejected: SeqStats
    labels: Tensor

    @classmethod
    def of(cls, chosen, rejected, ref_chosen=None, ref_rejected=None, labels=None,
           chosen_lengths=None, rejected_lengths=None) -> PairInputs:
        c = SeqStats.of(chosen, ref_chosen, chosen_lengths)
        r = SeqStats.of(rejected, ref_rejected, rejected_lengths)
        y = torch.ones_like(c.logps) if labels is None else torch.as_tensor(labels, dtype=torch.float32)
        return cls(c, r, y)


@dataclass(frozen=True)
class BinaryInputs:
    """Unpaired completions [B] with a desirable/undesirable flag (KTO-style data).

    ``kl_seqs`` are mismatched (prompt, completion) pairs [B] -- the completion of another example
    under this example's prompt -- with their reference log-probs; losses that estimate a reference
    point from them (KTO) declare ``needs={"kl_pairs"}``, otherwise they are None.
    """

    seqs: SeqStats
    desirable: Tensor
    kl_seqs: SeqStats | None = None

    @classmethod
    def of(cls, logps, desirable, ref_logps=None, lengths=None, kl_logps=None,
           kl_ref_logps=None) -> BinaryInputs:
        kl = None if kl_logps is None else SeqStats.of(kl_logps, kl_ref_logps)
        return cls(SeqStats.of(logps, ref_logps, lengths), torch.as_tensor(desirable, dtype=torch.bool),
                   kl)


@dataclass(frozen=True)
class ListInputs:
    """Ranked lists: ``seqs`` fields are [B, K]; ``scores`` [B, K] (higher is better; ties allowed);
    ``valid`` [B, K] is False on padding slots of lists shorter than K."""

    seqs: SeqStats
    scores: Tensor
    valid: Tensor

    @classmethod
    def of(cls, logps, scores, ref_logps=None, lengths=None, valid=None) -> ListInputs:
        seqs = SeqStats.of(logps, ref_logps, lengths)
        scores = torch.as_tensor(scores, dtype=torch.float32)
        valid = torch.ones_like(scores, dtype=torch.bool) if valid is None else torch.as_tensor(
            valid, dtype=torch.bool)
        return cls(seqs, scores, valid)


LossResult = tuple[Tensor, dict[str, Tensor]]
"""``(losses, metrics)``: per-example losses [B] (the loop sums them and divides by the global
number of examples) and per-example metrics, each [B] and detached."""
