"""The gym's model ladder: base models of four sizes, pretrained alike, for weak-to-strong experiments.

Every rung is a ``LlamaForCausalLM`` made by :func:`alignlab.gym.base_model.make_model` and pretrained
by :func:`~alignlab.gym.base_model.pretrain` on the same documents, with the same tokenizer (the base
model's, loaded from ``base_model/``, never retrained), the same seed (so the same initialisation
stream and the same packing order) and the same step budget; only the size differs. A step budget
runs on one thread, so a seed and a step count give one ladder on every machine.

Layout under the gym folder::

    ladder/ladder.json     rungs in increasing size: name, folder (relative to the gym), parameters,
                           spec, pretraining stats, wall seconds
    ladder/<name>/         an ordinary HF folder: config.json, model.safetensors, tokenizer files,
                           gym_build.json (the cache key and the stats above)

A rung is skipped when its ``gym_build.json`` was written for the same seed, corpus hash, tokenizer,
spec and step budget. Parameter counts include the (tied) embedding once.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from alignlab.gym import base_model as B


def scaled_spec(hidden_size: int, num_layers: int, num_heads: int, intermediate_size: int
                ) -> B.BaseModelSpec:
    """A base-model spec of another size whose learning rate scales as 1 / width from the base
    model's (3e-3 at width 96), as μP prescribes for Adam: at the base rate the 12-wide rung barely
    leaves the unigram loss in 300 steps (3.05 against 1.10 with its scaled rate, seed 0)."""
    base = B.BaseModelSpec()
    lr = round(base.learning_rate * base.hidden_size / hidden_size, 10)
    return B.BaseModelSpec(hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
                           intermediate_size=intermediate_size, learning_rate=lr)


LADDER_SPECS: tuple[tuple[str, B.BaseModelSpec], ...] = (
    ("xs", scaled_spec(12, 1, 2, 32)),
    ("s", scaled_spec(32, 2, 2, 96)),
    ("m", scaled_spec(64, 2, 4, 192)),
    ("l", scaled_spec(96, 4, 4, 256)),  # the base model's spec
)
DEFAULT_STEPS = 300
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja")
Check = Callable[[Any, Any], dict[str, Any]]


def count_parameters(model) -> int:
    """Every parameter of ``model``, a tied embedding counted once."""
    return sum(p.numel() for p in model.parameters())


def tokenizer_hash(tokenizer) -> str:
    """Short sha256 of the vocabulary, special tokens and chat template (part of the cache key)."""
    payload = json.dumps([sorted(tokenizer.get_vocab().items()), tokenizer.all_special_tokens,
                          tokenizer.chat_template])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def rung_key(seed: int, corpus_hash: str, tok_hash: str, spec: B.BaseModelSpec, steps: int
             ) -> dict[str, Any]:
    """What a cached rung must match."""
    return {"seed": seed, "corpus_hash": corpus_hash, "tokenizer_hash": tok_hash,
            "spec": B.spec_dict(spec), "steps": steps}


def cached_rung(folder: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The saved metadata when ``folder`` holds a rung built for ``key``."""
    meta_file = folder / "gym_build.json"
    if not meta_file.is_file() or not (folder / "model.safetensors").is_file():
        return None
    meta = json.loads(meta_file.read_text())
    return meta if all(meta.get(k) == v for k, v in key.items()) else None


def save_rung(model, tokenizer_dir: Path, folder: Path, meta: dict[str, Any]) -> None:
    """An ordinary HF folder: the model (safetensors), byte copies of the tokenizer files of
    ``tokenizer_dir`` and ``gym_build.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copyfile(tokenizer_dir / name, folder / name)
    (folder / "gym_build.json").write_text(json.dumps(meta, indent=2))


def train_rung(name: str, spec: B.BaseModelSpec, tokenizer, docs: Sequence[list[int]],
               key: dict[str, Any], check: Check | None, log) -> tuple[Any, dict[str, Any]]:
    """Initialise and pretrain one rung for ``key["steps"]`` steps; returns the model and its
    metadata (the cache key, parameters, pretraining stats, the check, wall seconds)."""
    start = time.time()
    model = B.make_model(spec, tokenizer, key["seed"])
    log(f"ladder {name}: {count_parameters(model)} parameters, {key['steps']} steps")
    stats = B.pretrain(model, docs, spec, seconds=float("inf"), seed=key["seed"],
                       max_steps=key["steps"], log=lambda m: log(f"ladder {name}: {m}"))
    meta = {**key, "name": name, "parameters": count_parameters(model),
            "vocab_size": len(tokenizer), "corpus_tokens": sum(map(len, docs)), "pretrain": stats}
    if check is not None:
        meta["check"] = check(model, tokenizer)
    meta["wall_seconds"] = round(time.time() - start, 1)
    return model, meta


def ladder_entry(meta: dict[str, Any], folder: str) -> dict[str, Any]:
    """One rung as listed in ladder.json."""
    entry = {"name": meta["name"], "folder": folder, "parameters": meta["parameters"],
             "spec": meta["spec"], "pretrain": meta["pretrain"], "wall_seconds": meta["wall_seconds"]}
    if "check" in meta:
        entry["check"] = meta["check"]
    return entry


def build_ladder(out: str | Path, texts: Sequence[str], tokenizer_dir: str | Path, corpus_hash: str,
                 seed: int = 0, steps: int = DEFAULT_STEPS,
                 specs: Sequence[tuple[str, B.BaseModelSpec]] = LADDER_SPECS,
                 check: Check | None = None, log=print) -> dict[str, Any]:
    """Pretrain (or reuse) every rung of ``specs`` under ``out`` and write ``out/ladder.json``.

    ``tokenizer_dir`` holds the (already trained) tokenizer, loaded once and copied into every rung;
    ``texts`` are the pretraining documents, encoded once (only when a rung must be trained);
    ``check(model, tokenizer)`` adds a dict of measurements to each new rung. Rungs are listed in
    increasing parameter count; returns the ladder.json dict."""
    from transformers import AutoTokenizer

    out = Path(out)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=False)
    tok_hash = tokenizer_hash(tokenizer)
    docs: list[list[int]] | None = None
    metas = []
    for name, spec in specs:
        key = rung_key(seed, corpus_hash, tok_hash, spec, steps)
        meta = cached_rung(out / name, key)
        if meta is not None:
            log(f"ladder {name} cached in {out / name}; skipping pretraining")
        else:
            if docs is None:
                docs = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
            model, meta = train_rung(name, spec, tokenizer, docs, key, check, log)
            save_rung(model, Path(tokenizer_dir), out / name, meta)
        metas.append(meta)
    metas.sort(key=lambda m: m["parameters"])
    ladder = {"seed": seed, "steps": steps, "corpus_hash": corpus_hash, "tokenizer_hash": tok_hash,
              "span": round(metas[-1]["parameters"] / metas[0]["parameters"], 2),
              "rungs": [ladder_entry(m, f"{out.name}/{m['name']}") for m in metas]}
    (out / "ladder.json").write_text(json.dumps(ladder, indent=2))
    return ladder


def read_ladder(gym_dir: str | Path) -> list[dict[str, Any]]:
    """The rungs of a built gym's ladder, smallest first, each with ``path`` (absolute folder)."""
    root = Path(gym_dir)
    file = root / "ladder" / "ladder.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no model ladder here (build the gym with ladder=true)")
    rungs = json.loads(file.read_text())["rungs"]
    return [{**r, "path": str((root / r["folder"]).resolve())} for r in rungs]
