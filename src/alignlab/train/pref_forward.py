"""The preference stage's forward: one pass over all rows of a batch, reduced to what the objective needs.

``PreferenceModule.forward`` (the computation DDP synchronises) returns per-row token quantities;
``row_stats`` sums them to per-sequence :class:`~alignlab.losses.inputs.SeqStats`, and
``objective_inputs`` regroups the slot-major rows into the objective's input type.
"""

from __future__ import annotations

import torch

from alignlab.losses.inputs import BinaryInputs, ListInputs, PairInputs, SeqStats
from alignlab.models.logprobs import token_log_softmax
from alignlab.models.reference import adapter_disabled, eval_mode
from alignlab.models.shared_prefix import grouped_token_logprobs

FULL_DISTRIBUTION_NEEDS = frozenset({"topk", "token_kl"})


class PreferenceModule(torch.nn.Module):
    """``forward(batch) -> dict`` of per-row tensors: always ``token_logps`` [N, T-1]; with
    ``topk`` in ``needs`` also ``topk_logps``/``topk_ids`` [N, T-1, k]; with ``token_kl`` also
    ``token_kl`` [N] (sequential KL(ref || policy) over target tokens, TDPO) and
    ``ref_token_logps`` [N, T-1] from the online reference.

    The online reference is ``reference`` (a frozen model kept out of the module's parameters, so
    neither the optimiser nor DDP sees it) or, when ``reference`` is None, the policy with its LoRA
    adapter disabled. ``share_prompt``: each example's rows share one prompt computation
    (:mod:`alignlab.models.shared_prefix`; not for the full-distribution needs).
    """

    def __init__(self, model: torch.nn.Module, needs: frozenset[str] = frozenset(), topk: int = 0,
                 reference: torch.nn.Module | None = None, share_prompt: bool = False):
        super().__init__()
        self.model = model
        self.needs = needs
        self.topk = topk
        self.share_prompt = share_prompt
        self.__dict__["frozen_reference"] = reference

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        args = (batch["input_ids"], batch["attention_mask"], batch.get("position_ids"))
        if not self.needs & FULL_DISTRIBUTION_NEEDS:
            slots = batch["input_ids"].shape[0] // batch["label"].shape[0] if self.share_prompt else 1
            return {"token_logps": grouped_token_logprobs(self.model, batch, slots)}
        log_probs = token_log_softmax(self.model, *args)
        targets = batch["input_ids"][:, 1:].unsqueeze(-1)
        out = {"token_logps": log_probs.gather(-1, targets).squeeze(-1)}
        if "topk" in self.needs:
            out["topk_logps"], out["topk_ids"] = log_probs.topk(self.topk, dim=-1)
        if "token_kl" in self.needs:
            from alignlab.losses.token_level import sequential_kl

            ref = self.reference_log_softmax(*args)
            mask = batch["loss_mask"][:, 1:].to(log_probs.dtype)
            out["token_kl"] = sequential_kl(ref, log_probs, mask)
            out["ref_token_logps"] = ref.gather(-1, targets).squeeze(-1)
        return out

    @torch.no_grad()
    def reference_log_softmax(self, *args) -> torch.Tensor:
        frozen = self.__dict__["frozen_reference"]
        if frozen is not None:
            with eval_mode(frozen):
                return token_log_softmax(frozen, *args)
        with adapter_disabled(self.model), eval_mode(self.model):
            return token_log_softmax(self.model, *args)


def row_stats(out: dict[str, torch.Tensor], batch: dict) -> SeqStats:
    """Per-row sums over target tokens; ``ref_logps`` from the cached ``batch["ref"]`` or the online
    reference; token-level fields passed through when present."""
    mask = batch["loss_mask"][:, 1:].to(out["token_logps"].dtype)
    token_logps = out["token_logps"] * mask
    ref = batch.get("ref")
    if "ref_token_logps" in out:
        ref = (out["ref_token_logps"] * mask).sum(-1)
    extra = {}
    if "topk_logps" in out:
        extra = {"token_logps": token_logps, "token_mask": mask,
                 "target_ids": batch["input_ids"][:, 1:], "topk_logps": out["topk_logps"],
                 "topk_ids": out["topk_ids"]}
    return SeqStats(logps=token_logps.sum(-1), lengths=mask.sum(-1).clamp(min=1.0), ref_logps=ref,
                    token_kl=out.get("token_kl"), **extra)


def by_slot(stats: SeqStats, slots: int) -> SeqStats:
    """Reshape slot-major per-row fields ``[S*B, ...]`` to ``[S, B, ...]``."""
    return stats.map(lambda t: t.reshape(slots, t.shape[0] // slots, *t.shape[1:]))


def objective_inputs(kind: str, stats: SeqStats, batch: dict):
    """The objective's input (pair / binary / ranked) from per-row stats of a collated batch."""
    slots = stats.logps.shape[0] // batch["label"].shape[0]
    grouped = by_slot(stats, slots)
    if kind == "pair":
        return PairInputs(grouped.map(lambda t: t[0]), grouped.map(lambda t: t[1]), batch["label"])
    if kind == "binary":
        kl = grouped.map(lambda t: t[1]) if slots == 2 else None
        return BinaryInputs(grouped.map(lambda t: t[0]), batch["label"] > 0.5, kl)
    if kind == "ranked":
        seqs = grouped.map(lambda t: t.transpose(0, 1))
        return ListInputs(seqs, batch["scores"], batch["valid"])
    raise ValueError(f"unknown data kind {kind!r}")
