"""PPO-ptx data: an endless, seeded, checkpointable stream of SFT/pretraining sequences.

InstructGPT (Ouyang et al. 2022, eq. 2) adds gamma * E_{x ~ D_pretrain}[log pi(x)] to the PPO
objective to limit the "alignment tax" on the pretraining distribution. Here each chunk of each
PPO minibatch draws as many sequences from the stream as the chunk has rollout sequences; the
term's loss is :func:`alignlab.rl.objectives.ptx_loss` times ``rl.ptx_coef``.
"""

from __future__ import annotations

from functools import partial

import torch

from alignlab.data.collate import pad_encoded
from alignlab.data.loading import load_records
from alignlab.data.tokenize import Encoded, encode_conversation
from alignlab.train.common import encode_all


class PtxStream:
    """Shuffled passes over ``items``; its position is saved with every checkpoint."""

    def __init__(self, items: list[Encoded], pad_id: int, seed: int, device):
        if not items:
            raise ValueError("ptx_data: no sequence with a target token")
        self.items, self.pad_id, self.seed, self.device = items, pad_id, seed, device
        self.epoch, self.position = 0, 0

    def _order(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
        return torch.randperm(len(self.items), generator=generator).tolist()

    def next_batch(self, n: int) -> dict[str, torch.Tensor]:
        """The next ``n`` sequences, padded, on the device."""
        picked, order = [], self._order()
        while len(picked) < n:
            if self.position >= len(order):
                self.epoch, self.position = self.epoch + 1, 0
                order = self._order()
            picked.append(self.items[order[self.position]])
            self.position += 1
        return {k: v.to(self.device) for k, v in pad_encoded(picked, self.pad_id).items()}

    def next_logprobs(self, module, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(token log-probs [n, L-1] with grad, target mask [n, L-1])`` of the next sequences;
        ``module`` maps a batch to shifted token log-probs (``TokenLogprobModule``)."""
        batch = self.next_batch(n)
        return module(batch), batch["loss_mask"][:, 1:].float()

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def load_ptx_stream(cfg, tokenizer, device) -> PtxStream:
    """Conversations from ``cfg.ptx_data`` encoded as SFT encodes them (assistant turns are targets)."""
    loaded = load_records(cfg.ptx_data, "conversation")
    encode = partial(encode_conversation, tokenizer, max_length=cfg.train.max_length,
                     max_prompt_length=cfg.train.max_prompt_length)
    items = [item for item in encode_all(loaded.records, encode, loaded.source)
             if sum(item.loss_mask[1:]) > 0]
    return PtxStream(items, tokenizer.pad_token_id, cfg.train.seed, device)
