"""VLLMGenerator against a fake ``vllm`` module (no GPU needed), and against real vLLM when present.

The fake engine follows vLLM's documented output semantics: ``token_ids`` keep the eos/stop token
and every token up to the one that completed a stop string, ``text`` is cut before the stop string,
``finish_reason`` is "stop"/"length", ``stop_reason`` is None (eos), the stop token id or the string.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from types import SimpleNamespace

import pytest
import torch
from test_models_tiny import make_tiny_lm, make_tokenizer, save_tiny_lm

from alignlab.config import GenerationSettings
from alignlab.data.records import Message
from alignlab.data.tokenize import prompt_ids, render_prompt
from alignlab.generation import GenerationBackendError, HFGenerator, make_generator
from alignlab.generation.vllm import VLLMGenerator, policy_weights, request_seed
from alignlab.models.loading import merged_copy

PROMPTS = [
    (Message("user", "Hi"),),
    (Message("user", "What is the capital of the moon, please?"),),
    (Message("system", "Be brief."), Message("user", "Count to three")),
    (Message("user", "ok"), Message("assistant", "yes"), Message("user", "and then what?")),
]
GEN_EOS = 7  # an extra eos id named only by generation_config.json (the char "4")
REAL_VLLM = importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


# ----------------------------------------------------------------------------- the fake vllm


class FakeLoadTarget:
    """The engine's model: records what ``load_weights`` receives."""

    def __init__(self):
        self.loaded: list[tuple[str, torch.Tensor]] = []
        self.calls = 0

    def load_weights(self, weights):
        self.calls += 1
        self.loaded.extend((name, t.clone()) for name, t in weights)


class FakeLLM:
    """Records its constructor and generate arguments; completions come from ``responder``."""

    responder = None  # (prompt_ids, sample_index, max_tokens) -> continuation ids
    last = None

    def __init__(self, **kwargs):
        self.init_kwargs = kwargs
        self.tokenizer = make_tokenizer()
        self.target = FakeLoadTarget()
        runner = SimpleNamespace(get_model=lambda: self.target)
        self.llm_engine = SimpleNamespace(
            model_executor=SimpleNamespace(driver_worker=SimpleNamespace(model_runner=runner)))
        self.generate_calls: list = []
        self.prefix_resets = 0
        FakeLLM.last = self

    def generate(self, prompts, sampling_params=None, use_tqdm=True):
        self.generate_calls.append((prompts, sampling_params))
        return [SimpleNamespace(prompt_token_ids=p["prompt_token_ids"],
                                outputs=self._complete(p["prompt_token_ids"], sp)[::-1])
                for p, sp in zip(prompts, sampling_params, strict=True)]

    def _complete(self, ids, sp):
        return [self._finish(j, FakeLLM.responder(ids, j, sp.max_tokens), sp) for j in range(sp.n)]

    def _finish(self, index, continuation, sp):
        """vLLM's stop checks, token by token: eos, stop token ids, stop strings, max_tokens."""
        tok, out = self.tokenizer, []
        for token in continuation[:sp.max_tokens]:
            out.append(token)
            if token == tok.eos_token_id:
                return self._output(index, out, tok.decode(out, skip_special_tokens=True), None)
            if token in sp.stop_token_ids:
                return self._output(index, out, tok.decode(out[:-1], skip_special_tokens=True),
                                    token)
            text = tok.decode(out, skip_special_tokens=True)
            hits = [(text.find(s), s) for s in sp.stop if s in text]
            if hits:
                cut, stop = min(hits)
                return self._output(index, out, text[:cut], stop)
        return self._output(index, out, tok.decode(out, skip_special_tokens=True), "", "length")

    @staticmethod
    def _output(index, ids, text, stop_reason, finish="stop"):
        return SimpleNamespace(index=index, token_ids=list(ids), text=text, finish_reason=finish,
                               stop_reason=None if finish == "length" else stop_reason)

    def reset_prefix_cache(self):
        self.prefix_resets += 1
        return True


class FakeSamplingParams:
    def __init__(self, n=1, temperature=1.0, top_p=1.0, max_tokens=16, stop=None,
                 stop_token_ids=None, seed=None, **rest):
        self.kwargs = {"n": n, "temperature": temperature, "top_p": top_p, "max_tokens": max_tokens,
                       "stop": stop, "stop_token_ids": stop_token_ids, "seed": seed, **rest}
        self.n, self.max_tokens, self.seed = n, max_tokens, seed
        self.stop, self.stop_token_ids = list(stop or []), list(stop_token_ids or [])


def _module(name):
    module = types.ModuleType(name)
    module.__spec__ = importlib.util.spec_from_loader(name, loader=None)
    return module


@pytest.fixture
def fake_vllm(monkeypatch):
    vllm, inputs = _module("vllm"), _module("vllm.inputs")
    vllm.__version__ = "0.0.fake"
    vllm.LLM, vllm.SamplingParams, vllm.inputs = FakeLLM, FakeSamplingParams, inputs
    inputs.TokensPrompt = lambda prompt_token_ids: {"prompt_token_ids": list(prompt_token_ids)}
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "unset-by-test")
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING")
    return vllm


@pytest.fixture
def plain_dir(tmp_path):
    return save_tiny_lm(tmp_path / "plain", seed=0)


@pytest.fixture
def model_dir(tmp_path):
    """A model folder whose generation_config.json names a second eos id."""
    folder = save_tiny_lm(tmp_path / "policy", seed=0)
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, GEN_EOS]}))
    return folder


def _tokenizer():
    tok = make_tokenizer()
    tok.pad_token = tok.eos_token
    return tok


def _greedy_responder(model):
    """Continuations decoded greedily by the HF ``model`` (what an exact greedy engine returns)."""
    def respond(ids, index, max_tokens):
        row, out = torch.tensor([ids]), []
        with torch.no_grad():
            for _ in range(max_tokens):
                nxt = int(model(input_ids=row).logits[0, -1].argmax())
                out.append(nxt)
                if nxt == 2:
                    break
                row = torch.cat([row, torch.tensor([[nxt]])], dim=1)
        return out
    return respond


def _text_responder(texts):
    """Continuation ``texts[prompt][sample]`` (char tokens) followed by eos; prompt found by its ids."""
    tok = make_tokenizer()
    keyed = {tuple(prompt_ids(tok, render_prompt(tok, p))): row for p, row in zip(PROMPTS, texts)}
    return lambda ids, j, _max: tok(keyed[tuple(ids)][j])["input_ids"] + [tok.eos_token_id]


# ----------------------------------------------------------------------------- generation


def test_sampling_settings_map_to_sampling_params(fake_vllm, model_dir):
    gen = VLLMGenerator(model_dir, _tokenizer(), seed=5)
    FakeLLM.responder = _text_responder([[f"p{i}s{j}" for j in range(3)] for i in range(4)])
    settings = GenerationSettings(temperature=0.7, top_p=0.9, max_new_tokens=9, num_samples=3,
                                  stop=["@@"], seed=11, batch_size=2)
    rows = gen.generate(PROMPTS, settings)
    requests, params = gen.llm.generate_calls[-1]
    tok = gen.tokenizer
    assert [r["prompt_token_ids"] for r in requests] == [
        prompt_ids(tok, render_prompt(tok, p)) for p in PROMPTS]
    assert [p.kwargs for p in params] == [
        {"n": 3, "temperature": 0.7, "top_p": 0.9, "max_tokens": 9, "stop": ["@@"],
         "stop_token_ids": [GEN_EOS], "seed": request_seed(11, i), "skip_special_tokens": True}
        for i in range(4)]
    assert len({p.seed for p in params}) == 4 and request_seed(12, 0) != request_seed(11, 0)
    # prompt order, samples in index order although the engine returned them reversed
    assert [[s.text for s in row] for row in rows] == [[f"p{i}s{j}" for j in range(3)]
                                                        for i in range(4)]
    assert all(s.stop_reason == "eos" and tok.decode(s.token_ids) == s.text
               for row in rows for s in row)
    init = gen.llm.init_kwargs
    assert init["model"] == init["tokenizer"] == str(model_dir)
    assert (init["seed"], init["gpu_memory_utilization"], init["trust_remote_code"]) == (5, 0.3, False)
    assert gen.eos_ids == (2, GEN_EOS)


def test_greedy_matches_hf_generator_exactly(fake_vllm, plain_dir):
    model, tok = make_tiny_lm(0), _tokenizer()
    FakeLLM.responder = _greedy_responder(model)
    gen = VLLMGenerator(plain_dir, tok)
    settings = GenerationSettings(temperature=0.0, max_new_tokens=12, num_samples=2)
    rows = gen.generate(PROMPTS, settings)
    assert rows == HFGenerator(model, tok).generate(PROMPTS, settings)
    assert all(len(r) == 2 and r[0] == r[1] for r in rows)
    assert all(p.kwargs["n"] == 1 and p.kwargs["temperature"] == 0.0 and p.kwargs["seed"] is None
               and p.kwargs["top_p"] == 1.0 for p in gen.llm.generate_calls[-1][1])


def test_stop_strings_cut_text_and_ids_like_hf(fake_vllm, plain_dir):
    model, tok = make_tiny_lm(0), _tokenizer()
    FakeLLM.responder = _greedy_responder(model)
    gen, hf = VLLMGenerator(plain_dir, tok), HFGenerator(model, tok)
    full = hf.generate(PROMPTS, GenerationSettings(temperature=0.0, max_new_tokens=20))
    stop = full[1][0].text[4:6]  # two chars: vLLM keeps both tokens in token_ids
    settings = GenerationSettings(temperature=0.0, max_new_tokens=20, stop=[stop, "@@never@@"])
    rows = gen.generate(PROMPTS, settings)
    assert rows == hf.generate(PROMPTS, settings)
    sample = rows[1][0]
    assert sample.stop_reason == "stop" and sample.text == full[1][0].text.split(stop)[0]
    assert sample.token_ids == full[1][0].token_ids[:len(sample.text)]


@pytest.mark.parametrize("ids, text, finish, stop_reason, stops, expected", [
    ("ab", "ab", "length", None, [], ("ab", "length")),
    ("ab</s>", "ab", "stop", None, [], ("ab", "eos")),
    ("ab4", "ab", "stop", GEN_EOS, [], ("ab", "eos")),        # generation-config eos (a token id)
    ("ab", "ab", "stop", GEN_EOS, [], ("ab", "eos")),         # ... not kept in token_ids
    ("ab", "ab", "stop", None, [], ("ab", "eos")),
    ("abXYZ", "ab", "stop", "XY", ["XY"], ("ab", "stop")),    # ids run past the stop string
    ("abXY", "abX", "stop", "Y", ["Q", "Y"], ("abX", "stop")),
    ("abXYZ", "ab", "stop", "XY", [], ("ab", "stop")),        # trust vLLM's cut if we miss it
    ("aXbXc", "aXbXc", "length", None, ["bX"], ("aX", "stop")),
])
def test_stop_reason_mapping(fake_vllm, model_dir, ids, text, finish, stop_reason, stops,
                             expected):
    gen = VLLMGenerator(model_dir, _tokenizer())
    tok = gen.tokenizer
    token_ids = tok(ids.replace("</s>", ""))["input_ids"] + ([2] if "</s>" in ids else [])
    out = SimpleNamespace(index=0, token_ids=token_ids, text=text, finish_reason=finish,
                          stop_reason=stop_reason)
    sample = gen._to_sample(out, stops)
    assert (sample.text, sample.stop_reason) == expected
    assert sample.token_ids == tok(expected[0])["input_ids"]


def test_aborted_completion_is_an_error(fake_vllm, model_dir):
    gen = VLLMGenerator(model_dir, _tokenizer())
    out = SimpleNamespace(index=0, token_ids=[5], text="", finish_reason="abort", stop_reason=None)
    with pytest.raises(RuntimeError, match="finish_reason='abort'"):
        gen._to_sample(out, [])


# ----------------------------------------------------------------------------- weight sync


def _named(model):
    return {n: p.detach() for n, p in model.named_parameters()}


def test_sync_plain_model_sends_every_weight_then_resets_cache(fake_vllm, model_dir):
    gen, model = VLLMGenerator(model_dir, _tokenizer()), make_tiny_lm(3)
    sent = gen.sync_weights(model, chunk_bytes=20_000)
    target = gen.llm.target
    assert sent == len(target.loaded) == len(_named(model)) and target.calls > 1  # chunked
    loaded = dict(target.loaded)
    assert loaded.keys() == _named(model).keys()
    assert all(torch.equal(loaded[n], p) for n, p in _named(model).items())
    assert gen.llm.prefix_resets == 1


def test_tied_embeddings_are_sent_once(fake_vllm, model_dir):
    gen, model = VLLMGenerator(model_dir, _tokenizer()), make_tiny_lm(0, tie_word_embeddings=True)
    gen.sync_weights(model)
    names = [n for n, _ in gen.llm.target.loaded]
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names
    assert len(names) == len(set(names))


def _lora_model(base=None, **config):
    from peft import LoraConfig, get_peft_model

    config = {"target_modules": ["q_proj", "v_proj"], **config}
    cfg = LoraConfig(r=2, lora_alpha=4, init_lora_weights=False, **config)
    return get_peft_model(make_tiny_lm(1, **(base or {})), cfg)


def test_sync_lora_model_sends_merged_weights_without_touching_it(fake_vllm, model_dir):
    peft_model = _lora_model(modules_to_save=["lm_head"],
                             target_modules=["q_proj", "v_proj", "embed_tokens"])
    gen = VLLMGenerator(model_dir, _tokenizer())
    saved = peft_model.base_model.model.lm_head.modules_to_save["default"]
    with torch.no_grad():
        saved.weight.add_(1.0)  # the trained copy, not the original, must be sent
    before = {n: t.clone() for n, t in peft_model.state_dict().items()}
    gen.sync_weights(peft_model)
    loaded = dict(gen.llm.target.loaded)
    reference = _named(merged_copy(peft_model))
    assert loaded.keys() == reference.keys()
    assert all(torch.allclose(loaded[n], t, atol=1e-6, rtol=0) for n, t in reference.items())
    q = "model.layers.0.self_attn.q_proj.weight"
    base_q = peft_model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight
    assert not torch.allclose(loaded[q], base_q)  # the LoRA deltas are in
    base_embed = peft_model.base_model.model.model.embed_tokens.base_layer.weight
    assert not torch.allclose(loaded["model.embed_tokens.weight"], base_embed)
    assert torch.equal(loaded["lm_head.weight"], saved.weight)
    after = peft_model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[n], t) for n, t in before.items())  # live model unchanged
    assert not any(getattr(m, "merged", False) for m in peft_model.modules())


def test_lora_bias_is_merged():
    peft_model = _lora_model(base={"attention_bias": True}, lora_bias=True)
    with torch.no_grad():  # lora_B starts at zero bias; give it one to merge
        for module in peft_model.modules():
            if hasattr(module, "lora_B") and "default" in module.lora_B:
                module.lora_B["default"].bias.normal_()
    weights, reference = dict(policy_weights(peft_model)), _named(merged_copy(peft_model))
    assert weights.keys() == reference.keys()
    assert all(torch.allclose(weights[n], t, atol=1e-6, rtol=0) for n, t in reference.items())
    bias = "model.layers.0.self_attn.q_proj.bias"
    assert not torch.equal(weights[bias], _named(make_tiny_lm(1, attention_bias=True))[bias])


def test_disabled_adapter_sends_base_weights(fake_vllm):
    peft_model = _lora_model()
    with peft_model.disable_adapter():
        weights = dict(policy_weights(peft_model))
    assert all(torch.equal(weights[n], t) for n, t in _named(make_tiny_lm(1)).items())


def test_dora_is_refused(fake_vllm):
    with pytest.raises(NotImplementedError, match="DoRA"):
        dict(policy_weights(_lora_model(use_dora=True)))


def test_sync_through_collective_rpc(fake_vllm, model_dir):
    gen, model = VLLMGenerator(model_dir, _tokenizer()), make_tiny_lm(2)
    worker = SimpleNamespace(model_runner=SimpleNamespace(model=FakeLoadTarget()))
    calls = []

    def collective_rpc(method, args=()):
        calls.append(method)
        return [method(worker, *args)]

    gen.llm.llm_engine = SimpleNamespace()  # engine in another process: no model_executor
    gen.llm.collective_rpc = collective_rpc
    gen.sync_weights(model)
    loaded = dict(worker.model_runner.model.loaded)
    assert calls and all(torch.equal(loaded[n], p) for n, p in _named(model).items())


def test_sync_without_any_weight_path_names_the_version(fake_vllm, model_dir):
    gen = VLLMGenerator(model_dir, _tokenizer())
    gen.llm.llm_engine = SimpleNamespace()
    with pytest.raises(GenerationBackendError, match=r"0\.0\.fake.*VLLM_ENABLE_V1_MULTIPROCESSING"):
        gen.sync_weights(make_tiny_lm(0))


# ----------------------------------------------------------------------------- factory


def test_factory_without_vllm_says_how_to_install(monkeypatch):
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed")
    with pytest.raises(GenerationBackendError, match=r"pip install vllm.*backend 'hf'"):
        make_generator("vllm", tokenizer=_tokenizer(), model_path="x")


def test_factory_without_cuda_suggests_hf(fake_vllm, monkeypatch, model_dir):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(GenerationBackendError, match=r"CUDA GPU.*backend 'hf'"):
        make_generator("vllm", tokenizer=_tokenizer(), model_path=model_dir)


def test_factory_builds_vllm_generator(fake_vllm, monkeypatch, model_dir):
    import os

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    model = make_tiny_lm(0)
    model.name_or_path = str(model_dir)
    gen = make_generator("vllm", model=model, tokenizer=_tokenizer(), max_model_len=128)
    assert isinstance(gen, VLLMGenerator)
    assert gen.llm.init_kwargs["model"] == str(model_dir)
    assert gen.llm.init_kwargs["max_model_len"] == 128
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    with pytest.raises(GenerationBackendError, match="needs model_path"):
        make_generator("vllm", tokenizer=_tokenizer())


# ----------------------------------------------------------------------------- real vLLM (GPU)

BIG_HEADS = {"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 2,
             "num_key_value_heads": 1}  # head_dim 64: supported by vLLM's attention kernels


def _assert_near_greedy(model, tok, prompts, rows, tol=0.05):
    """Every greedy token (and a final eos) is within ``tol`` x logit range of the HF argmax."""
    for prompt, row in zip(prompts, rows, strict=True):
        sample = row[0]
        head = prompt_ids(tok, render_prompt(tok, prompt))
        produced = sample.token_ids + ([tok.eos_token_id] if sample.stop_reason == "eos" else [])
        ids = torch.tensor([head + produced], device=model.device)
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(head) - 1:-1].float()
        for step, token in enumerate(produced):
            row_logits = logits[step]
            slack = tol * float(row_logits.max() - row_logits.min())
            assert float(row_logits[token]) >= float(row_logits.max()) - slack, (prompt, step)


@pytest.mark.skipif(not REAL_VLLM, reason="needs the vllm package and a CUDA GPU")
def test_real_vllm_greedy_and_weight_sync(tmp_path):
    tok = _tokenizer()
    folder = save_tiny_lm(tmp_path / "policy", seed=0, **BIG_HEADS)
    gen = VLLMGenerator(folder, tok, gpu_memory_utilization=0.2, dtype="bfloat16",
                        enforce_eager=True, max_model_len=256)
    settings = GenerationSettings(temperature=0.0, max_new_tokens=16, num_samples=2)
    first = gen.generate(PROMPTS, settings)
    assert [len(r) for r in first] == [2] * len(PROMPTS)
    _assert_near_greedy(make_tiny_lm(0, **BIG_HEADS).cuda(), tok, PROMPTS, first)

    policy = make_tiny_lm(1, **BIG_HEADS).cuda()
    assert gen.sync_weights(policy) == len(list(policy.parameters()))
    second = gen.generate(PROMPTS, settings)
    assert second != first
    _assert_near_greedy(policy, tok, PROMPTS, second)

    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(make_tiny_lm(2, **BIG_HEADS), LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
        init_lora_weights=False)).cuda()
    gen.sync_weights(peft_model)
    _assert_near_greedy(merged_copy(peft_model), tok, PROMPTS, gen.generate(PROMPTS, settings))

    sampled = gen.generate(PROMPTS, GenerationSettings(temperature=1.0, max_new_tokens=16,
                                                       num_samples=4, seed=3))
    assert all(len(r) == 4 for r in sampled)
    assert all(tok.decode(s.token_ids, skip_special_tokens=True) == s.text
               for r in sampled for s in r)
    assert len({s.text for r in sampled for s in r}) > len(PROMPTS)
