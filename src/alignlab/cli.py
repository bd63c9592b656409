"""The ``alignlab`` command: one sub-command per stage, ``run`` for a recipe, ``quickstart``.

    alignlab gym build --out DIR [--seed N]
    alignlab gym feedback --gym DIR [--out DIR] [--steps N]   (the gym's judge/reviser model)
    alignlab sft  --config sft.yaml  [key.sub=value ...]
    alignlab rm   --config rm.yaml   [key.sub=value ...]
    alignlab dpo  --config dpo.yaml  [key.sub=value ...]   (alias: alignlab preference)
    alignlab online --config online.yaml [key.sub=value ...] (ppo, rloo, grpo, reinforce_pp, online_dpo,
                                                          sppo, nash_md, xpo)
    alignlab dro --config dro.yaml [key.sub=value ...]    (DRO on rated single responses)
    alignlab losses                                       (the registered objectives)
    alignlab eval --config eval.yaml [key.sub=value ...]
    alignlab cai revise --config revise.yaml [key.sub=value ...]  (critique -> revision, SL-CAI data)
    alignlab label --config label.yaml [key.sub=value ...]        (AI preference labels)
    alignlab distill --config distill.yaml [key.sub=value ...]    (context distillation)
    alignlab synth --config synth.yaml [key.sub=value ...]        (self-instruct / templating)
    alignlab redteam run --config redteam.yaml [key.sub=value ...] (attack, judge, report; exit 1 over fail_above)
    alignlab redteam compare RUN_A RUN_B [--group category]       (ASR difference and its p-value)
    alignlab stages                                       (the registered stages)
    alignlab run recipe.yaml [key.sub=value ...]
    alignlab quickstart [--out DIR]

Stage commands are made from the stage registry (:mod:`alignlab.stages`), one per registered stage.

Configs are validated before anything loads; a bad config or a bad data record ends the command with
a one-paragraph message (exit code 2), never a traceback.
"""

from __future__ import annotations

import sys
import time
from importlib import resources
from pathlib import Path
from typing import Optional

import typer

from alignlab.config import ConfigError
from alignlab.data.errors import RecordError
from alignlab.runs import GateFailed
from alignlab.stages import STAGES, load_stage_config, run_stage, stages_table

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Align language models with human and AI feedback.")
gym_app = typer.Typer(add_completion=False, no_args_is_help=True, help="The alignment gym.")
app.add_typer(gym_app, name="gym")
cai_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Constitutional AI.")
app.add_typer(cai_app, name="cai")
redteam_app = typer.Typer(add_completion=False, no_args_is_help=True,
                          help="Red-teaming: attack, judge, report, compare.")
app.add_typer(redteam_app, name="redteam")

CONFIG_OPT = typer.Option(None, "--config", "-c", help="YAML config for this stage.")
OVERRIDES_ARG = typer.Argument(None, help="Overrides as key.sub=value.")


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors that are the user's to fix (bad config, data, model path, constitution, judge,
    training stopped on non-finite steps): shown as one ``error:`` line, never as a traceback."""
    from alignlab.feedback.constitution import ConstitutionError
    from alignlab.feedback.http import JudgeError
    from alignlab.models.loading import ModelLoadError
    from alignlab.storage import StorageError
    from alignlab.train.nonfinite import NonFiniteError

    return (ConfigError, RecordError, FileNotFoundError, ConstitutionError, JudgeError,
            ModelLoadError, StorageError, NonFiniteError)


def _fail_storage(exc: OSError) -> None:
    """One ``error:`` line for a full disk or an unwritable file (re-raise anything else)."""
    from alignlab.storage import StorageError, write_errno

    code = write_errno(exc)
    if code is None:
        raise exc
    _fail(str(StorageError(exc.filename or "a run file", code)))


def _run_stage_command(stage: str, config: Optional[Path], overrides: Optional[list[str]]) -> None:
    try:
        cfg = load_stage_config(stage, str(config) if config else None, overrides or [])
        output = run_stage(cfg)
    except _user_errors() as exc:
        _fail(str(exc))
    except OSError as exc:  # a write outside the wrapped ones found the disk full / read-only
        _fail_storage(exc)
    except GateFailed as exc:
        typer.secho(f"gate failed: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1) from None
    typer.echo(f"{stage}: done → {output}")


def _stage_command(stage: str):
    """The typer command of one registered stage: ``--config`` plus ``key.sub=value`` overrides."""

    def command(config: Optional[Path] = CONFIG_OPT,
                overrides: Optional[list[str]] = OVERRIDES_ARG) -> None:
        _run_stage_command(stage, config, overrides)

    command.__name__ = stage
    command.__doc__ = STAGES[stage].help
    return command


def _register_stage_commands() -> None:
    """One command per registered stage (``alignlab.stages``), under its group when it has one."""
    groups = {"cai": cai_app, "redteam": redteam_app}
    for stage in STAGES.values():
        if stage.command is None:
            continue
        *group, word = stage.command
        target = groups[group[0]] if group else app
        target.command(word, help=stage.help)(_stage_command(stage.name))


_register_stage_commands()


@redteam_app.command("compare")
def redteam_compare(a: Path = typer.Argument(..., help="First red-team run folder."),
                    b: Path = typer.Argument(..., help="Second red-team run folder."),
                    group: Optional[str] = typer.Option(
                        None, help="Also compare per group: target, method or category.")) -> None:
    """Tell two red-team runs apart: ASR difference (B − A) and its significance."""
    from alignlab.redteam.compare import compare_folders, comparison_markdown

    try:
        result = compare_folders(a, b, group)
    except (FileNotFoundError, RecordError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(comparison_markdown(result))


@app.command()
def losses() -> None:
    """List the registered preference objectives: name, data kind, reference, paper."""
    from alignlab.losses.registry import objectives_table

    typer.echo(objectives_table())


@app.command("stages")
def list_stages() -> None:
    """List the registered stages: command, config class, runner, output."""
    typer.echo(stages_table())


@gym_app.command("build")
def gym_build(out: Path = typer.Option(..., "--out", help="Folder for the gym."),
              seed: int = typer.Option(0, help="World and data seed."),
              pretrain_seconds: float = typer.Option(75.0, help="Base-model pretraining budget."),
              length_bias: float = typer.Option(0.0, help="Annotator length bias per word."),
              ladder: bool = typer.Option(False, "--ladder",
                                          help="Also pretrain the four-size model ladder."),
              ladder_steps: int = typer.Option(300, help="Pretraining steps per ladder model.")
              ) -> None:
    """Build the gym: world, data files and the pretrained tiny base model."""
    overrides = [f"out={out}", f"seed={seed}", f"pretrain_seconds={pretrain_seconds}",
                 f"length_bias={length_bias}", f"ladder={str(ladder).lower()}",
                 f"ladder_steps={ladder_steps}"]
    _run_stage_command("gym", None, overrides)


@gym_app.command("feedback")
def gym_feedback(gym: Path = typer.Option(..., "--gym", help="A built gym folder."),
                 out: Optional[Path] = typer.Option(None, "--out",
                                                    help="Run folder (default <gym>/feedback_model)."),
                 steps: Optional[int] = typer.Option(None, "--steps",
                                                     help="Steps of the general phase (default: one epoch)."),
                 seed: int = typer.Option(0, help="Corpus and training seed.")) -> None:
    """Train the gym's feedback model (judge + reviser) on gold-labelled judge documents."""
    from alignlab.gym.feedback import Schedule, build_feedback_model

    try:
        model = build_feedback_model(gym, out, seed=seed, schedule=Schedule(general_steps=steps))
    except (ConfigError, RecordError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(f"gym feedback: done → {model}")


@app.command("run")
def run_recipe_command(recipe: Path = typer.Argument(..., help="Recipe YAML."),
                       overrides: Optional[list[str]] = OVERRIDES_ARG) -> None:
    """Run a multi-stage recipe (stages link through ${name.output})."""
    from alignlab.recipe import load_recipe, run_recipe

    try:
        stages = load_recipe(recipe, overrides or [])
        run_recipe(stages, log=typer.echo)
    except _user_errors() as exc:
        _fail(str(exc))
    except OSError as exc:  # a write outside the wrapped ones found the disk full / read-only
        _fail_storage(exc)
    except GateFailed as exc:
        typer.secho(f"gate failed: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1) from None


@app.command()
def quickstart(out: Path = typer.Option(Path("runs/quickstart"), "--out",
                                        help="Folder for every stage of the quickstart."),
               pretrain_steps: Optional[int] = typer.Option(
                   None, help="Pretrain the gym's base model for this many steps instead of the "
                              "recipe's 420 (a step budget gives the same base model on any "
                              "machine).")) -> None:
    """Gym → SFT → reward model → DPO → evaluation of base, SFT and DPO, with a report."""
    from alignlab.config import read_yaml
    from alignlab.recipe import build_recipe, run_recipe

    start = time.time()
    recipe = resources.files("alignlab") / "resources" / "quickstart.yaml"
    with resources.as_file(recipe) as path:
        raw = read_yaml(path)
    raw["out"] = str(out)
    if pretrain_steps is not None:
        gym = next(stage for stage in raw["stages"] if stage["stage"] == "gym")
        gym["pretrain_steps"] = pretrain_steps
    stages = build_recipe(raw, source="quickstart")
    run_recipe(stages, log=typer.echo)
    typer.echo(f"quickstart finished in {time.time() - start:.0f} s; report: {out / 'report' / 'report.md'}")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``alignlab`` console script (``argv``: the arguments, default the command
    line's; given, the command runs in-process, as the malformed-input corpus does).

    Hugging Face's own progress bars (weight loading, shard writing) are switched off unless the user
    set ``HF_HUB_DISABLE_PROGRESS_BARS``: alignlab shows its own (:mod:`alignlab.progress`).
    ``ALIGNLAB_MMAP_THRESHOLD=<bytes>`` fixes glibc's mmap threshold, trading speed for a lower peak
    RSS (:mod:`alignlab.heap`; off by default)."""
    import os

    from alignlab.heap import fix_mmap_threshold

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    fix_mmap_threshold()
    app(args=argv, prog_name="alignlab")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
