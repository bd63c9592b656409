"""Recipes: stages link through ${name.output}; everything is validated before anything runs."""

from pathlib import Path

import pytest
import yaml

from alignlab.config import ConfigError
from alignlab.recipe import build_recipe, load_recipe


def recipe(tmp_path, stages, out="runs/r"):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"out": out, "stages": stages}))
    return path


SFT = {"name": "sft", "stage": "sft", "model": {"path": "./base"}, "data": {"path": "d.jsonl"}}
DPO = {"name": "dpo", "stage": "dpo", "model": {"path": "${sft.output}"},
       "data": {"path": "p.jsonl"}}


def test_links_outputs_and_default_out(tmp_path):
    stages = load_recipe(recipe(tmp_path, [SFT, DPO]))
    assert [name for name, _ in stages] == ["sft", "dpo"]
    assert stages[1][1].model.path == "runs/r/sft/model"
    assert stages[1][1].out == "runs/r/dpo"


def test_override_changes_base_folder(tmp_path):
    stages = load_recipe(recipe(tmp_path, [SFT, DPO]), ["out=elsewhere"])
    assert stages[1][1].model.path == "elsewhere/sft/model"


def test_reference_to_later_stage_fails(tmp_path):
    with pytest.raises(ConfigError, match=r"\$\{sft.output\} names no earlier stage"):
        load_recipe(recipe(tmp_path, [DPO, SFT]))


def test_bad_key_in_later_stage_fails_before_running(tmp_path):
    bad = dict(DPO, loss={"name": "dpo", "beta": -1})
    with pytest.raises(ConfigError, match=r"(?s)stages\[1\] \(dpo\).*beta: Input should be greater than 0"):
        load_recipe(recipe(tmp_path, [SFT, bad]))


def test_structure_errors():
    with pytest.raises(ConfigError, match="non-empty list"):
        build_recipe({"stages": []})
    with pytest.raises(ConfigError, match="unknown stage 'ppo'"):
        build_recipe({"stages": [{"name": "x", "stage": "ppo"}]})
    with pytest.raises(ConfigError, match="duplicate stage name"):
        build_recipe({"stages": [SFT, SFT]})
    with pytest.raises(ConfigError, match="unknown top-level keys"):
        build_recipe({"stages": [SFT], "outt": "x"})


ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p for pattern in ("recipes/**/*.yaml", "benchmarks/**/*.yaml")
                 for p in ROOT.glob(pattern) if "stages:" in p.read_text())


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_recipes_validate(path, monkeypatch):
    """Every multi-stage recipe we ship passes validation (keys, ranges, ${stage.output} links)."""
    monkeypatch.chdir(ROOT)
    stages = load_recipe(path)
    assert [name for name, _ in stages] == [s["name"] for s in yaml.safe_load(path.read_text())["stages"]]
