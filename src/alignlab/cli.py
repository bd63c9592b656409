"""The ``alignlab`` command: one sub-command per stage, ``run`` for a recipe, ``quickstart``.

    alignlab gym build --out DIR [--seed N]
    alignlab gym feedback --gym DIR [--out DIR] [--steps N]   (the gym's judge/reviser model)
    alignlab sft  --config sft.yaml  [key.sub=value ...]
    alignlab rm   --config rm.yaml   [key.sub=value ...]
    alignlab dpo  --config dpo.yaml  [key.sub=value ...]   (alias: alignlab preference)
    alignlab online --config online.yaml [key.sub=value ...] (ppo, rloo, grpo, reinforce_pp, online_dpo)
    alignlab losses                                       (the registered objectives)
    alignlab eval --config eval.yaml [key.sub=value ...]
    alignlab cai revise --config revise.yaml [key.sub=value ...]  (critique -> revision, SL-CAI data)
    alignlab label --config label.yaml [key.sub=value ...]        (AI preference labels)
    alignlab distill --config distill.yaml [key.sub=value ...]    (context distillation)
    alignlab synth --config synth.yaml [key.sub=value ...]        (self-instruct / templating)
    alignlab run recipe.yaml [key.sub=value ...]
    alignlab quickstart [--out DIR]

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

from alignlab.config import ConfigError, load_stage_config
from alignlab.data.errors import RecordError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Align language models with human and AI feedback.")
gym_app = typer.Typer(add_completion=False, no_args_is_help=True, help="The alignment gym.")
app.add_typer(gym_app, name="gym")
cai_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Constitutional AI.")
app.add_typer(cai_app, name="cai")

CONFIG_OPT = typer.Option(None, "--config", "-c", help="YAML config for this stage.")
OVERRIDES_ARG = typer.Argument(None, help="Overrides as key.sub=value.")


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _run_stage_command(stage: str, config: Optional[Path], overrides: Optional[list[str]]) -> None:
    from alignlab.stages import run_stage

    from alignlab.feedback.constitution import ConstitutionError
    from alignlab.feedback.http import JudgeError

    try:
        cfg = load_stage_config(stage, str(config) if config else None, overrides or [])
        output = run_stage(cfg)
    except (ConfigError, RecordError, FileNotFoundError, ConstitutionError, JudgeError) as exc:
        _fail(str(exc))
    typer.echo(f"{stage}: done → {output}")


@app.command()
def sft(config: Optional[Path] = CONFIG_OPT, overrides: Optional[list[str]] = OVERRIDES_ARG) -> None:
    """Supervised fine-tuning (prompt-masked NLL)."""
    _run_stage_command("sft", config, overrides)


@app.command()
def rm(config: Optional[Path] = CONFIG_OPT, overrides: Optional[list[str]] = OVERRIDES_ARG) -> None:
    """Train a Bradley–Terry reward model on preference pairs."""
    _run_stage_command("rm", config, overrides)


@app.command()
def dpo(config: Optional[Path] = CONFIG_OPT, overrides: Optional[list[str]] = OVERRIDES_ARG) -> None:
    """Offline preference optimisation (DPO by default; any objective via ``loss``)."""
    _run_stage_command("dpo", config, overrides)


@app.command()
def preference(config: Optional[Path] = CONFIG_OPT,
               overrides: Optional[list[str]] = OVERRIDES_ARG) -> None:
    """Offline preference optimisation with any registered objective (same stage as ``dpo``)."""
    _run_stage_command("preference", config, overrides)


@app.command()
def online(config: Optional[Path] = CONFIG_OPT, overrides: Optional[list[str]] = OVERRIDES_ARG) -> None:
    """Online RL from feedback: ppo, rloo, grpo, reinforce_pp or online_dpo (``algorithm``)."""
    _run_stage_command("online", config, overrides)


@app.command()
def losses() -> None:
    """List the registered preference objectives: name, data kind, reference, paper."""
    from alignlab.losses.registry import objectives_table

    typer.echo(objectives_table())


@app.command("eval")
def evaluate(config: Optional[Path] = CONFIG_OPT,
             overrides: Optional[list[str]] = OVERRIDES_ARG) -> None:
    """Generate on held-out prompts and report reward, rates, KL and win rate."""
    _run_stage_command("eval", config, overrides)


@cai_app.command("revise")
def cai_revise(config: Optional[Path] = CONFIG_OPT,
               overrides: Optional[list[str]] = OVERRIDES_ARG) -> None:
    """Critique -> revision with a constitution: SL-CAI SFT data and revision-over-initial pairs."""
    _run_stage_command("revise", config, overrides)


@app.command()
def label(config: Optional[Path] = CONFIG_OPT, overrides: Optional[list[str]] = OVERRIDES_ARG) -> None:
    """AI preference labels from option probabilities, both orders (resumable)."""
    _run_stage_command("label", config, overrides)


@app.command()
def distill(config: Optional[Path] = CONFIG_OPT,
            overrides: Optional[list[str]] = OVERRIDES_ARG) -> None:
    """Context distillation: a student without the HHH prompt learns the teacher's top-k tokens."""
    _run_stage_command("distill", config, overrides)


@app.command()
def synth(config: Optional[Path] = CONFIG_OPT, overrides: Optional[list[str]] = OVERRIDES_ARG) -> None:
    """Instruction data: self-instruct synthesis or templating of labelled tasks."""
    _run_stage_command("synth", config, overrides)


@app.command()
def report(config: Optional[Path] = CONFIG_OPT,
           overrides: Optional[list[str]] = OVERRIDES_ARG) -> None:
    """Merge several evaluations into report.md / report.json / a plot."""
    _run_stage_command("report", config, overrides)


@gym_app.command("build")
def gym_build(out: Path = typer.Option(..., "--out", help="Folder for the gym."),
              seed: int = typer.Option(0, help="World and data seed."),
              pretrain_seconds: float = typer.Option(75.0, help="Base-model pretraining budget."),
              length_bias: float = typer.Option(0.0, help="Annotator length bias per word.")) -> None:
    """Build the gym: world, data files and the pretrained tiny base model."""
    overrides = [f"out={out}", f"seed={seed}", f"pretrain_seconds={pretrain_seconds}",
                 f"length_bias={length_bias}"]
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
    except (ConfigError, RecordError, FileNotFoundError) as exc:
        _fail(str(exc))


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


def main() -> None:
    """Entry point of the ``alignlab`` console script."""
    app(prog_name="alignlab")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
