"""The gym tokenizer: byte-level BPE trained on the gym corpus, with an HH chat template.

Rendering (Anthropic HH transcript format)::

    user turn       "\\n\\nHuman: {content}"
    assistant turn  "\\n\\nAssistant: {content}</s>"
    system turn     "\\n\\nSystem: {content}"
    gen. prompt     "\\n\\nAssistant:"

so the assistant text generated after the prompt starts with a space (" The capital ..."), and the
rendered prompt is a string prefix of the rendered prompt + assistant turn. No BOS is inserted by
the template or by the tokenizer (pretraining documents are rendered exactly the same way).
"""

from __future__ import annotations

from collections.abc import Iterable

BOS, EOS, PAD = "<s>", "</s>", "<pad>"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '\\n\\nHuman: ' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{{ '\\n\\nAssistant: ' + message['content'] + eos_token }}"
    "{% else %}{{ '\\n\\nSystem: ' + message['content'] }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '\\n\\nAssistant:' }}{% endif %}"
)


def render_messages(messages: Iterable, add_generation_prompt: bool = False) -> str:
    """The chat template in plain Python (for building the corpus without a tokenizer)."""
    out = ""
    for m in messages:
        role, content = (m.role, m.content) if hasattr(m, "role") else (m["role"], m["content"])
        if role == "user":
            out += f"\n\nHuman: {content}"
        elif role == "assistant":
            out += f"\n\nAssistant: {content}{EOS}"
        else:
            out += f"\n\nSystem: {content}"
    return out + ("\n\nAssistant:" if add_generation_prompt else "")


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1200):
    """Train a byte-level BPE on ``texts`` and wrap it as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, BOS, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    core.train_from_iterator(texts, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOS,
                                  pad_token=PAD, clean_up_tokenization_spaces=False)
    tok.chat_template = CHAT_TEMPLATE
    tok.model_max_length = 256
    return tok
