"""Builders of tiny Llama models and a character tokenizer, shared by the model/generation tests.

(No tests here; the file is named so it belongs to the models test files.)
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

SPECIALS = ["<unk>", "<s>", "</s>"]
CHARS = list(string.printable[:95])  # digits, letters, punctuation, space
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def make_tokenizer(with_template: bool = True):
    """A character-level fast tokenizer (vocab 98) without a pad token."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>",
                                  eos_token="</s>")
    if with_template:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_config(vocab_size: int = 100, **overrides):
    from transformers import LlamaConfig

    cfg = {"vocab_size": vocab_size, "hidden_size": 32, "intermediate_size": 64,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
           "max_position_embeddings": 256, "bos_token_id": 1, "eos_token_id": 2,
           "tie_word_embeddings": False, "initializer_range": 0.3}
    cfg.update(overrides)
    return LlamaConfig(**cfg)


def make_tiny_lm(seed: int = 0, **overrides):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_config(**overrides)).eval()


def save_tiny_lm(folder: Path, seed: int = 0, with_template: bool = True, **overrides) -> Path:
    """Save a tiny LM and the char tokenizer to ``folder`` (safetensors); returns the folder."""
    model = make_tiny_lm(seed, **overrides)
    model.save_pretrained(folder)
    make_tokenizer(with_template).save_pretrained(folder)
    return folder
