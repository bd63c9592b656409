"""Fine-tune only the top of a network: the last ``k`` decoder blocks and what follows them.

"Fine-tune the last layers" is the classic cheap transfer recipe (Howard & Ruder 2018, ULMFiT, train
the top first; Yosinski et al. 2014 on how transferable lower layers are). Here it is a budget knob
for a CPU: every parameter below the last ``k`` blocks is frozen, the input embeddings included, so
autograd stops at the first trainable block. A step then costs one forward plus about ``k / L`` of a
backward instead of a full one (measured in ``benchmarks/smollm2_recipes``), and the optimiser holds
state for the trainable part only.

What stays trainable: the last ``k`` blocks, and every parameter outside the block list that is not an
embedding (final norm, a reward model's score head, an untied LM head). A head tied to the input
embedding (SmolLM2, the gym model) is frozen with it; the policy then moves through its top blocks
and final norm. With LoRA the same ``k`` picks which blocks receive adapters
(:func:`lora_layers`), the score head staying fully trained as usual.
"""

from __future__ import annotations

import torch


class FreezeError(ValueError):
    """``train_last_layers`` cannot be applied to this model (no block list, or ``k`` too large)."""


def decoder_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's list of decoder blocks: the first ``ModuleList`` whose length is
    ``config.num_hidden_layers`` (``model.layers`` in Llama-style models, ``transformer.h`` in GPT-2)."""
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and n_layers and len(module) == n_layers:
            return module
    raise FreezeError(f"train_last_layers: no list of {n_layers} decoder blocks found in "
                      f"{type(model).__name__}")


def lora_layers(model: torch.nn.Module, k: int) -> list[int]:
    """Indices of the last ``k`` blocks (for peft's ``layers_to_transform``)."""
    n = len(decoder_blocks(model))
    _check_k(k, n)
    return list(range(n - k, n))


def block_linear_names(model: torch.nn.Module) -> list[str]:
    """The leaf names of the linear layers inside the decoder blocks (``q_proj``, ``down_proj``, ...):
    peft's ``"all-linear"`` spelt out, since peft takes ``layers_to_transform`` only with a list."""
    names = {name.rsplit(".", 1)[-1] for name, module in decoder_blocks(model).named_modules()
             if isinstance(module, torch.nn.Linear)}
    return sorted(names)


def _check_k(k: int, n: int) -> None:
    if not 1 <= k <= n:
        raise FreezeError(f"train_last_layers: {k} is not between 1 and the model's {n} decoder blocks")


def freeze_all_but_last(model: torch.nn.Module, k: int) -> dict[str, int]:
    """Freeze the embeddings and every block below the last ``k``; returns parameter counts
    ``{"trainable": ..., "frozen": ...}``. Parameters already frozen stay frozen."""
    blocks = decoder_blocks(model)
    _check_k(k, len(blocks))
    frozen_ids = {id(p) for block in list(blocks)[: len(blocks) - k] for p in block.parameters()}
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            frozen_ids.update(id(p) for p in module.parameters())
    counts = {"trainable": 0, "frozen": 0}
    for param in model.parameters():
        if id(param) in frozen_ids:
            param.requires_grad_(False)
        key = "trainable" if param.requires_grad else "frozen"
        counts[key] += param.numel()
    return counts
