"""Generation with vLLM's offline engine (PagedAttention; Kwon et al., 2023, "Efficient Memory
Management for Large Language Model Serving with PagedAttention"), colocated with the trainer.

Contract: the same as :class:`~alignlab.generation.hf.HFGenerator`. Prompts are rendered with
:func:`alignlab.data.tokenize.render_prompt` and tokenised with
:func:`alignlab.data.tokenize.prompt_ids` here, in alignlab, and handed to vLLM as token ids
(``TokensPrompt``), so the prompt tokens the policy is sampled from are exactly the ones training
scores. ``Sample.token_ids`` exclude the prompt and eos and decode (``skip_special_tokens=True``,
with *this* tokenizer) to exactly ``Sample.text``; a stop string cuts both.

Sampling. ``temperature == 0`` is greedy: one request with ``n=1`` per prompt, the sample repeated
``num_samples`` times (as the HF backend does). Otherwise one request per prompt with
``n=num_samples``, ``temperature``, ``top_p`` (top-k, min-p and penalties at vLLM's "off" defaults),
and a per-prompt seed drawn from ``(settings.seed, prompt position)``: one seed shared by the whole
batch would give every prompt the same noise (vllm-project/vllm#50440), and vLLM derives the ``n``
samples of one request from ``seed + index``, so the per-prompt seeds are spread over 2**62 values.
``batch_size`` is not used: vLLM's scheduler batches by KV-cache room. Stop token ids: the tokenizer's
eos plus every eos in ``generation_config.json`` of ``model_path`` (what the HF backend stops on).
Sampled outputs depend on the engine's batch composition; vLLM's seeding is best-effort.

Weight sync (:meth:`VLLMGenerator.sync_weights`) follows TRL's and OpenRLHF's colocated mode: the
current policy weights, under their Hugging Face checkpoint names, go to the model's own
``load_weights`` inside the engine, which copies them into vLLM's (possibly fused) parameters in place,
so CUDA graphs stay valid; the prefix cache is reset afterwards. A peft LoRA model is merged per
layer into fresh tensors (W + scale * B A; Hu et al., 2021, "LoRA", Eq. 3), so the live model is
never modified; DoRA and other LoRA variants are refused. Only unquantised engines are supported.

Version assumptions (vLLM has no stable weight-update API for the offline ``LLM``):
``vllm.LLM(model, tokenizer, dtype, gpu_memory_utilization, enforce_eager, seed, ...)``,
``LLM.generate(list_of_TokensPrompt, sampling_params=list, use_tqdm=False)``,
``vllm.inputs.TokensPrompt``, ``CompletionOutput(index, token_ids, text, finish_reason,
stop_reason)`` with eos iff ``finish_reason == "stop"`` and ``stop_reason is None``, and one of
(1) ``llm.llm_engine.model_executor.driver_worker.model_runner`` (V0 engines, and V1 engines built
in-process: TRL 1.16 uses this path with vLLM 0.22-0.31) or (2) ``LLM.collective_rpc(callable)``.
For (1) the generator sets ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (unless already set) before it
builds the engine; otherwise a separate-process engine needs path (2), where vLLM must be allowed to
pickle the loader (``VLLM_ALLOW_INSECURE_SERIALIZATION=1``) and copies every tensor across processes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from alignlab.config import GenerationSettings
from alignlab.data.records import Messages
from alignlab.generation.base import GenerationBackendError, Sample, cut_at_stop
from alignlab.generation.hf import encode_prompt_text

SYNC_CHUNK_BYTES = 512 * 2**20  # weights handed to load_weights per call (bounds merge buffers)
_SEED_SPACE = 2**62


def import_vllm():
    """The ``vllm`` module, or a :class:`GenerationBackendError` with the install command."""
    try:
        import vllm
    except ImportError as err:
        raise GenerationBackendError(
            "generation backend 'vllm' needs the vllm package, which is not installed: "
            "pip install vllm (or pip install 'alignlab[vllm]'); or use backend 'hf'") from err
    return vllm


class VLLMGenerator:
    """Colocated vLLM generation from the model folder ``model_path``; see the module docstring.

    ``tokenizer`` renders and encodes prompts and decodes samples; it must be the tokenizer saved in
    ``model_path`` (vLLM loads that one to detect stop strings). ``engine_kwargs`` go to ``vllm.LLM``
    (e.g. ``max_model_len``, ``enable_prefix_caching``).
    """

    def __init__(self, model_path, tokenizer, gpu_memory_utilization: float = 0.3,
                 dtype: str = "auto", enforce_eager: bool = False, seed: int = 0,
                 render_prompt: Callable | None = None, **engine_kwargs):
        vllm = import_vllm()
        self.tokenizer = tokenizer
        if render_prompt is None:
            from alignlab.data.tokenize import render_prompt
        self.render = render_prompt
        self.model_path = str(model_path)
        self.eos_ids = eos_token_ids(tokenizer, self.model_path)
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine in this process
        self.llm = vllm.LLM(model=self.model_path, tokenizer=self.model_path, dtype=dtype,
                            gpu_memory_utilization=gpu_memory_utilization,
                            enforce_eager=enforce_eager, seed=seed, trust_remote_code=False,
                            **engine_kwargs)

    # ------------------------------------------------------------------ generation

    def generate(self, prompts: Sequence[Messages], settings: GenerationSettings,
                 seeds: Sequence[int] | None = None) -> list[list[Sample]]:
        """``settings.num_samples`` samples for each prompt, in prompt order; ``seeds``: one seed
        per prompt, used instead of ``(settings.seed, position)`` (so a prompt samples the same
        wherever it sits in the batch)."""
        vllm = import_vllm()
        from vllm.inputs import TokensPrompt

        if not prompts:
            return []
        requests = [TokensPrompt(prompt_token_ids=encode_prompt_text(self.tokenizer,
                                                                     self.render(self.tokenizer, p)))
                    for p in prompts]
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        params = [self._sampling_params(vllm, settings, i, None if seeds is None else seeds[i])
                  for i in range(len(prompts))]
        outputs = self.llm.generate(requests, sampling_params=params, use_tqdm=False)
        if len(outputs) != len(prompts):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(prompts)} prompts")
        return [self._row(out, settings) for out in outputs]

    def _sampling_params(self, vllm, settings: GenerationSettings, position: int,
                         prompt_seed: int | None = None):
        """``vllm.SamplingParams`` for the prompt at ``position`` (module docstring, "Sampling");
        ``prompt_seed`` replaces ``settings.seed`` and the position in the request seed."""
        seed = (request_seed(settings.seed, position) if prompt_seed is None
                else request_seed(prompt_seed, 0))
        kwargs = {"max_tokens": settings.max_new_tokens, "stop": [s for s in settings.stop if s],
                  "stop_token_ids": [i for i in self.eos_ids if i != self.tokenizer.eos_token_id],
                  "skip_special_tokens": True}
        if settings.temperature == 0:
            kwargs.update(n=1, temperature=0.0)
        else:
            kwargs.update(n=settings.num_samples, temperature=settings.temperature,
                          top_p=settings.top_p, seed=seed)
        return vllm.SamplingParams(**kwargs)

    def _row(self, request_output, settings: GenerationSettings) -> list[Sample]:
        completions = sorted(request_output.outputs, key=lambda c: c.index)
        samples = [self._to_sample(c, settings.stop) for c in completions]
        if settings.temperature == 0:
            samples = samples[:1] * settings.num_samples
        if len(samples) != settings.num_samples:
            raise RuntimeError(f"vLLM returned {len(samples)} completions for one prompt, "
                               f"expected num_samples={settings.num_samples}")
        return samples

    def _to_sample(self, completion, stops: Sequence[str]) -> Sample:
        """One vLLM ``CompletionOutput`` as a :class:`Sample` (ids cut at eos, then at a stop string).

        vLLM keeps the eos/stop token, and every token up to the one that completed a stop string,
        in ``token_ids`` while cutting ``text``; the ids are re-cut here so they decode to the text.
        """
        reason = _finish_reason(completion, self.eos_ids)
        ids = [int(t) for t in completion.token_ids]
        for k, token in enumerate(ids):
            if token in self.eos_ids:
                ids, reason = ids[:k], "eos"
                break
        # vLLM may match a stop string that our decoding does not show: cut where it stopped
        fallback = len(completion.text) if isinstance(completion.stop_reason, str) else None
        return cut_at_stop(self._decode, ids, reason, stops, fallback)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # ------------------------------------------------------------------ weight sync

    def sync_weights(self, model, chunk_bytes: int = SYNC_CHUNK_BYTES) -> int:
        """Load the current weights of ``model`` (HF causal LM, possibly peft-wrapped) into the engine.

        Returns the number of tensors sent. LoRA adapters are merged into copies (module docstring);
        the prefix cache is reset afterwards, since cached KV blocks were computed with old weights.
        """
        load = engine_weight_loader(self.llm)
        sent = 0
        for chunk in chunked(policy_weights(model), chunk_bytes):
            load(chunk)
            sent += len(chunk)
        reset = getattr(self.llm, "reset_prefix_cache", None)
        if reset is not None:
            reset()
        return sent


# ---------------------------------------------------------------------- sampling helpers


def request_seed(seed: int, position: int) -> int:
    """A seed for the request at ``position`` of a batch sampled with ``seed``, uniform in [0, 2**62)."""
    digest = hashlib.blake2b(f"{seed}/{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % _SEED_SPACE


def eos_token_ids(tokenizer, model_path: str) -> tuple[int, ...]:
    """The tokenizer's eos and every eos in ``model_path/generation_config.json``."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    config = Path(model_path) / "generation_config.json"
    if config.is_file():
        try:
            gen_eos = json.loads(config.read_text()).get("eos_token_id")
        except json.JSONDecodeError as err:
            raise ValueError(f"{config}: not valid JSON (line {err.lineno}): {err.msg}") from err
        ids.update([gen_eos] if isinstance(gen_eos, int) else (gen_eos or []))
    return tuple(sorted(int(i) for i in ids))


def _finish_reason(completion, eos_ids: Sequence[int]) -> str:
    """``"eos"``/``"stop"``/``"length"`` from vLLM's ``finish_reason`` and ``stop_reason``."""
    if completion.finish_reason == "length":
        return "length"
    if completion.finish_reason != "stop":
        raise RuntimeError(f"vLLM finished a completion with finish_reason="
                           f"{completion.finish_reason!r} (expected 'stop' or 'length')")
    stop = completion.stop_reason
    if stop is None or (isinstance(stop, int) and stop in eos_ids):
        return "eos"
    return "stop"


# ---------------------------------------------------------------------- policy weights


def policy_weights(model) -> Iterator[tuple[str, object]]:
    """``(name, tensor)`` for every parameter of ``model`` under its Hugging Face checkpoint name.

    A peft model is unwrapped (``base_model.model.`` dropped); each LoRA layer yields its base
    weight plus the active adapters' delta (and LoRA bias) as new tensors, never its ``lora_*``
    parameters; a ``modules_to_save`` wrapper yields its active copy under the original name. Tied
    parameters are yielded once (first name), as ``named_parameters`` does.
    """
    import torch

    is_peft_model = hasattr(model, "peft_config") and hasattr(model, "get_base_model")
    root = model.get_base_model() if is_peft_model else model
    seen: set[int] = set()
    with torch.no_grad():
        yield from _module_weights(root, "", seen)


def _module_weights(module, prefix: str, seen: set[int]):
    kind = _peft_kind(module)
    if kind == "lora":
        yield from _lora_weights(module, prefix, seen)
        return
    if kind == "modules_to_save":
        yield from _module_weights(_saved_module(module), prefix, seen)
        return
    if kind == "other":
        raise NotImplementedError(f"sync_weights: peft wrapper {type(module).__name__} at "
                                  f"{prefix or '<root>'} is not supported; merge it first")
    for name, param in module.named_parameters(recurse=False):
        if id(param) not in seen:
            seen.add(id(param))
            yield _join(prefix, name), param.detach()
    for name, child in module.named_children():
        yield from _module_weights(child, _join(prefix, name), seen)


def _lora_weights(layer, prefix: str, seen: set[int]):
    """The base layer's parameters with the active, unmerged LoRA adapters added (Hu et al., Eq. 3)."""
    base = layer.get_base_layer()
    adapters = _active_lora_adapters(layer)
    for name, param in base.named_parameters(recurse=False):
        seen.add(id(param))
        value = param.detach()
        if name == "weight" and adapters:
            delta = sum(layer.get_delta_weight(a) for a in adapters)
            value = (value + delta).to(value.dtype)
        elif name == "bias":
            for a in adapters:
                if getattr(layer, "lora_bias", {}).get(a, False):
                    value = (value + layer.lora_B[a].bias * layer.scaling[a]).to(value.dtype)
        yield _join(prefix, name), value
    for name, child in base.named_children():
        yield from _module_weights(child, _join(prefix, name), seen)


def _active_lora_adapters(layer) -> list[str]:
    if layer.disable_adapters:
        return []
    present = set(layer.lora_A) | set(getattr(layer, "lora_embedding_A", {}))
    adapters = [a for a in layer.active_adapters
                if a in present and a not in layer.merged_adapters]
    for a in adapters:
        if a in getattr(layer, "lora_variant", {}) or getattr(layer, "use_dora", {}).get(a, False):
            raise NotImplementedError(f"sync_weights: adapter {a!r} uses a LoRA variant (e.g. DoRA), "
                                      "which cannot be merged as W + scale * B A; use plain LoRA")
    return adapters


def _peft_kind(module) -> str | None:
    """``"lora"``, ``"modules_to_save"``, ``"other"`` (another peft layer) or None."""
    try:
        from peft.tuners.lora import LoraLayer
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils.other import AuxiliaryTrainingWrapper, ModulesToSaveWrapper
    except ImportError:
        return None
    if isinstance(module, LoraLayer):
        return "lora"
    if isinstance(module, ModulesToSaveWrapper):
        return "modules_to_save"
    if isinstance(module, (AuxiliaryTrainingWrapper, BaseTunerLayer)):
        return "other"
    return None


def _saved_module(wrapper):
    """The module a ``ModulesToSaveWrapper`` runs: its active adapter's copy, else the original."""
    active = [a for a in wrapper.active_adapters if a in wrapper.modules_to_save]
    if wrapper.disable_adapters or not active:
        return wrapper.original_module
    return wrapper.modules_to_save[active[0]]


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def chunked(weights: Iterator[tuple[str, object]], max_bytes: int) -> Iterator[list]:
    """Lists of ``(name, tensor)`` of at most ``max_bytes`` each (a larger tensor goes alone)."""
    chunk, size = [], 0
    for name, tensor in weights:
        nbytes = tensor.numel() * tensor.element_size()
        if chunk and size + nbytes > max_bytes:
            yield chunk
            chunk, size = [], 0
        chunk.append((name, tensor))
        size += nbytes
    if chunk:
        yield chunk


# ---------------------------------------------------------------------- engine access


def engine_weight_loader(llm) -> Callable[[list], None]:
    """A function that loads a list of ``(hf_name, tensor)`` into the engine's model.

    Path (1): the in-process driver worker (``llm.llm_engine.model_executor.driver_worker``).
    Path (2): ``llm.collective_rpc`` with a function run on every worker. Neither: an error that
    names the installed vLLM version and what to change.
    """
    executor = getattr(getattr(llm, "llm_engine", None), "model_executor", None)
    worker = getattr(executor, "driver_worker", None)
    if worker is not None:
        model = worker_model(worker)
        return lambda chunk: model.load_weights(chunk)
    if hasattr(llm, "collective_rpc"):
        return lambda chunk: llm.collective_rpc(load_weights_on_worker, args=(chunk,))
    version = getattr(import_vllm(), "__version__", "unknown")
    raise GenerationBackendError(
        f"sync_weights: this vLLM ({version}) exposes neither an in-process driver worker "
        "(llm.llm_engine.model_executor.driver_worker) nor LLM.collective_rpc; build the engine "
        "in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0) or use a vLLM release TRL supports "
        "(0.22-0.31)")


def worker_model(worker):
    """The ``torch.nn.Module`` a vLLM worker runs (unwrapped from CUDA-graph wrappers if needed)."""
    runner = getattr(worker, "model_runner", None)
    if runner is None:
        runner = getattr(getattr(worker, "worker", None), "model_runner", None)
    if runner is None:
        raise GenerationBackendError(f"sync_weights: vLLM worker {type(worker).__name__} has no "
                                     "model_runner; this vLLM version is not supported")
    model = runner.get_model() if hasattr(runner, "get_model") else runner.model
    if not hasattr(model, "load_weights"):
        raise GenerationBackendError(f"sync_weights: vLLM model {type(model).__name__} has no "
                                     "load_weights(weights) method")
    return model


def load_weights_on_worker(worker, weights: list) -> None:
    """Run on a vLLM worker by ``collective_rpc``: load ``weights`` into its model."""
    worker_model(worker).load_weights(weights)
