"""The stage registry: one registration line makes a stage a command, a recipe stage and a docs row."""

import json
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from alignlab import stages
from alignlab.config import ConfigError
from alignlab.recipe import build_recipe, run_recipe

ROOT = Path(__file__).resolve().parents[1]

COUNT_MODULE = textwrap.dedent('''
    from typing import Literal

    from alignlab.config import DataSettings, StrictModel
    from alignlab.data.loading import load_records
    from alignlab.runs import RunFolder


    class CountConfig(StrictModel):
        """Count the records of ``data`` as ``kind``."""

        stage: Literal["count"] = "count"
        data: DataSettings
        kind: Literal["conversation", "pair", "binary", "ranked"] = "pair"
        out: str


    def run_count(cfg: CountConfig, run: RunFolder) -> None:
        loaded = load_records(cfg.data, cfg.kind)
        run.write_json("count.json", {"records": len(loaded.records), "skipped": loaded.bad.skipped})
''')


@pytest.fixture
def count_stage(tmp_path, monkeypatch):
    """The worked example of docs/architecture.md: a module plus one register() line."""
    (tmp_path / "count_stage.py").write_text(COUNT_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    stages.register("count", "count_stage:CountConfig", "count_stage:run_count",
                    "Count the records of a data file.")
    yield
    stages.STAGES.pop("count")
    sys.modules.pop("count_stage", None)


def _pairs(path, n):
    rows = [{"prompt": [{"role": "user", "content": f"q{i}"}], "chosen": "a", "rejected": "b"}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_a_registered_stage_runs_from_a_recipe(count_stage, tmp_path):
    data = _pairs(tmp_path / "p.jsonl", 3)
    built = build_recipe({"out": str(tmp_path / "runs"),
                          "stages": [{"name": "c", "stage": "count", "data": {"path": data}}]})
    outputs = run_recipe(built, log=lambda m: None)
    assert outputs["c"] == tmp_path / "runs" / "c"
    assert json.loads((outputs["c"] / "count.json").read_text()) == {"records": 3, "skipped": 0}
    assert (outputs["c"] / "DONE").is_file()


def test_a_registered_stage_validates_its_own_config(count_stage, tmp_path):
    with pytest.raises(ConfigError, match=r"kind: must be one of"):
        stages.load_stage_config("count", None, ["data.path=x.jsonl", "kind=lists", "out=o"])
    with pytest.raises(ConfigError, match="unknown stage 'countt'"):
        stages.load_stage_config("countt", None, [])


def test_the_cli_has_a_command_per_registered_stage():
    from alignlab.cli import app, cai_app, redteam_app

    words = ({c.name for c in app.registered_commands}
             | {f"cai {c.name}" for c in cai_app.registered_commands}
             | {f"redteam {c.name}" for c in redteam_app.registered_commands})
    for stage in stages.STAGES.values():
        if stage.command:
            assert " ".join(stage.command) in words, stage.name
    result = CliRunner().invoke(app, ["stages"])
    assert result.exit_code == 0 and "alignlab.train.preference:PreferenceConfig" in result.output


def test_architecture_doc_lists_the_registry():
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = text.split("<!-- stages:start -->")[1].split("<!-- stages:end -->")[0]
    assert block.strip() == stages.stages_table().strip()


def test_every_shipped_recipe_still_validates():
    launcher_configs = ROOT / "recipes" / "accelerate"  # accelerate launch files (test_fsdp.py)
    recipes = sorted(p for p in (ROOT / "recipes").rglob("*.yaml")
                     if launcher_configs not in p.parents) + [
        ROOT / "src" / "alignlab" / "resources" / "quickstart.yaml"]
    checked = 0
    for path in recipes:
        raw = yaml.safe_load(path.read_text())
        if "stages" in raw:
            assert build_recipe(raw, source=str(path))
        else:
            stages.load_stage_config(raw.get("stage") or _stage_from_name(path), str(path), [])
        checked += 1
    assert checked >= 10


def _stage_from_name(path: Path) -> str:
    """Single-stage recipe files are named after their command (direct RLAIF is an online run)."""
    return {"direct_rlaif": "online"}.get(path.stem, path.stem)


def test_tensorboard_tracker_receives_the_loss(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from alignlab.runs import RunFolder
    from alignlab.train.sft import SFTConfig

    cfg = SFTConfig(model={"path": "unused"}, data={"path": "unused.jsonl"}, out=str(tmp_path / "r"),
                    log={"report_to": ["tensorboard"], "run_name": "demo"})
    run = RunFolder(cfg.out, cfg, echo=False)
    run.log_metrics({"loss": 0.75, "data": "pair", "flag": True}, step=3)
    run.log_metrics({"loss": 0.5}, step=4)
    run.close()
    events = EventAccumulator(str(tmp_path / "r" / "tensorboard" / "demo"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(3, 0.75), (4, 0.5)]
    assert "data" not in events.Tags()["scalars"] and "flag" not in events.Tags()["scalars"]
    assert json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[0])["loss"] == 0.75


def test_an_uninstalled_tracker_fails_when_the_config_is_read(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"'wandb' needs the package 'wandb' \(pip install wandb\)"):
        stages.load_stage_config("sft", None, ["model.path=m", "data.path=d.jsonl", f"out={tmp_path}",
                                               "log.report_to=[wandb]"])


def test_a_missing_model_is_one_error_line_from_a_recipe_and_a_command(tmp_path):
    """A model path that is neither a folder nor a hub id ends as ``error: ...`` (exit 2), from
    ``alignlab run`` and from a stage command alike, never as a traceback."""
    from alignlab.cli import app as cli_app

    data = tmp_path / "sft.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}, '
                    '{"role": "assistant", "content": "hello"}]}\n')
    missing = str(tmp_path / "no_such_model" / "model")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"stages:\n  - name: sft\n    stage: sft\n    model: {{path: {missing}}}\n"
                      f"    data: {{path: {data}}}\n    out: {tmp_path / 'out'}\n")
    for args in (["run", str(recipe)],
                 ["sft", f"model.path={missing}", f"data.path={data}", f"out={tmp_path / 'o2'}"]):
        result = CliRunner().invoke(cli_app, args)
        assert result.exit_code == 2, result.output
        assert "error: " in result.output and missing in result.output
        assert "Traceback" not in result.output
