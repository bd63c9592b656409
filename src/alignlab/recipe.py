"""Multi-stage recipes: a YAML file of named stages where a stage names an earlier stage's output.

Format::

    out: runs/my-recipe          # each stage writes <out>/<name> unless it sets its own `out`
    stages:
      - name: sft
        stage: sft
        model: {path: ./base}
        data: {path: data/sft.jsonl}
      - name: dpo
        stage: dpo
        model: {path: "${sft.output}"}   # the sft stage's trained model folder
        data: {path: data/prefs.jsonl}

``${NAME.output}`` is replaced by the output of stage NAME (its model folder for training stages, its
folder otherwise) and ``${NAME.out}`` by its run folder. Every stage is validated before the first one
runs. Re-running a recipe skips stages that finished (their ``DONE`` marker exists).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

from alignlab.config import ConfigError, deep_merge, parse_overrides, read_yaml
from alignlab.stages import STAGES, build_stage_config, is_done, run_stage, stage_output

_REFERENCE = re.compile(r"\$\{([A-Za-z0-9_\-]+)\.([A-Za-z0-9_\-]+)\}")


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> list[tuple[str, Any]]:
    """Read, link and validate every stage of a recipe; returns [(name, config)] in order."""
    raw = deep_merge(read_yaml(path), parse_overrides(overrides or []))
    return build_recipe(raw, source=str(path))


def build_recipe(raw: dict[str, Any], source: str = "recipe") -> list[tuple[str, Any]]:
    """Validate a recipe mapping (already read) into [(name, config)]."""
    unknown = set(raw) - {"out", "stages"}
    if unknown:
        raise ConfigError(f"{source}: unknown top-level keys {sorted(unknown)}; expected 'out', 'stages'")
    stages = raw.get("stages")
    if not isinstance(stages, list) or not stages:
        raise ConfigError(f"{source}: 'stages' must be a non-empty list")
    base = Path(raw.get("out", "runs/recipe"))
    names = [str(entry["name"]) for entry in stages if isinstance(entry, dict) and "name" in entry]
    outputs: dict[str, dict[str, str]] = {}
    built = []
    for index, entry in enumerate(stages):
        name, cfg = _build_stage(entry, index, base, outputs, source, names)
        outputs[name] = {"output": str(stage_output(cfg)), "out": str(cfg.out)}
        built.append((name, cfg))
    return built


def _build_stage(entry, index, base, outputs, source, names=()):
    where = f"{source}: stages[{index}]"
    if not isinstance(entry, dict) or "stage" not in entry or "name" not in entry:
        raise ConfigError(f"{where}: each stage needs 'name' and 'stage'")
    entry = dict(entry)
    name = str(entry.pop("name"))
    if name in outputs:
        raise ConfigError(f"{where}: duplicate stage name {name!r}")
    if not isinstance(entry["stage"], str) or entry["stage"] not in STAGES:
        raise ConfigError(f"{where}: unknown stage {entry['stage']!r}; choose one of {sorted(STAGES)}")
    entry.setdefault("out", str(base / name))
    linked = _substitute(entry, outputs, f"{where} ({name})", names)
    return name, build_stage_config(linked, source=f"{where} ({name})")


def _substitute(value: Any, outputs: dict[str, dict[str, str]], where: str, names=()) -> Any:
    """Replace ${NAME.output} / ${NAME.out} in every string of a nested config; a reference to a
    later stage (a cycle or a forward reference), to no stage, or to another field is an error."""
    if isinstance(value, dict):
        return {k: _substitute(v, outputs, where, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, outputs, where, names) for v in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match) -> str:
        stage, field = match.groups()
        if field not in ("output", "out"):
            raise ConfigError(f"{where}: ${{{stage}.{field}}}: a reference names 'output' (the "
                              f"stage's model or folder) or 'out' (its run folder), not {field!r}")
        if stage not in outputs:
            if where.endswith(f"({stage})"):
                why = "a stage cannot use its own output"
            elif stage in names:
                why = (f"{stage!r} runs later (a stage can only use an earlier stage's output: "
                       "reorder the stages or break the cycle)")
            else:
                why = f"the recipe has no stage {stage!r}"
            raise ConfigError(f"{where}: ${{{stage}.{field}}} names no earlier stage: {why} "
                              f"(earlier stages: {sorted(outputs) or 'none'})")
        return outputs[stage][field]

    return _REFERENCE.sub(replace, value)


def run_recipe(stages: list[tuple[str, Any]], log: Callable[[str], None] = print) -> dict[str, Path]:
    """Run validated stages in order, skipping finished ones; returns each stage's output."""
    results: dict[str, Path] = {}
    for name, cfg in stages:
        if is_done(cfg):
            log(f"stage {name}: already done, skipping ({cfg.out})")
            results[name] = stage_output(cfg)
            continue
        log(f"stage {name} ({cfg.stage}) → {cfg.out}")
        results[name] = run_stage(cfg)
    return results
