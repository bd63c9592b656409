"""The model under attack: a local model through the hf generation backend, or an OpenAI-compatible
completions endpoint (its key read from the environment variable the settings name, never written)."""

from __future__ import annotations

from collections.abc import Sequence

from alignlab.config import GenerationSettings, JudgeSettings, ModelSettings
from alignlab.data.records import Messages
from alignlab.feedback.judges import build_judge
from alignlab.feedback.prompts import render_judge_text
from alignlab.generation.factory import make_generator
from alignlab.models.loading import load_causal_lm


class LocalTarget:
    """Replies of a local model through the hf generation backend."""

    def __init__(self, settings: ModelSettings, device=None):
        model, tokenizer = load_causal_lm(settings, for_training=False)
        if device is not None:
            model.to(device)
        self.generator = make_generator("hf", model, tokenizer)

    def reply(self, prompts: Sequence[Messages], settings: GenerationSettings) -> list[str]:
        samples = self.generator.generate(list(prompts), settings.model_copy(update={"num_samples": 1}))
        return [group[0].text.strip() for group in samples]


class HTTPTarget:
    """Replies of an OpenAI-compatible completions endpoint (the key comes from the environment
    variable the settings name and is never written anywhere)."""

    def __init__(self, settings: JudgeSettings):
        self.endpoint = build_judge(settings)

    def reply(self, prompts: Sequence[Messages], settings: GenerationSettings) -> list[str]:
        tokenizer = getattr(self.endpoint, "tokenizer", None)
        texts = [render_judge_text(tokenizer, p) for p in prompts]
        return [t.strip() for t in self.endpoint.continue_texts(
            texts, settings.max_new_tokens, settings.temperature, settings.seed)]


def build_target(settings):
    """The target of a ``TargetSettings`` (``model`` or ``http``)."""
    return LocalTarget(settings.model) if settings.model is not None else HTTPTarget(settings.http)
