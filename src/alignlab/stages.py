"""The stage registry: every stage's name, config class, runner, output and one-line help, in one place.

A stage is a config class (a :class:`~alignlab.config.StrictModel` with ``stage: Literal[...]`` and
``out``) and a runner ``run(cfg, run_folder)`` that live together in the stage's own module. It
becomes a command (``alignlab <name>``), a recipe stage (``stage: <name>``), a line of
``alignlab --help`` and a row of ``alignlab stages`` through ONE :func:`register` line below. Config
classes and runners are named as ``"module:attribute"`` strings and imported on first use, so
``alignlab --help`` imports no stage module, and this module (the top layer) is the only one that
knows them all.

Each stage writes a run folder (see :mod:`alignlab.runs`) and returns its *output*: the trained model
folder for training stages, its folder otherwise. A finished stage leaves a ``DONE`` marker so a
recipe can skip it when re-run.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from alignlab.config import (
    ConfigError,
    StrictModel,
    build_config,
    deep_merge,
    parse_overrides,
    read_yaml,
)
from alignlab.runs import RunFolder

DONE_MARKER = "DONE"


@dataclass(frozen=True)
class Stage:
    """One registered stage (see the module docstring).

    ``output``: ``model`` when the stage's output is ``<out>/model``, else ``folder`` (``<out>``).
    ``command``: the CLI words (``("cai", "revise")`` is ``alignlab cai revise``); None: no stage
    command (the stage has a command of its own, e.g. ``gym build``). ``run_folder``: False for a
    stage whose ``out`` is its product (the gym), whose runner takes the config alone.
    """

    name: str
    config: str
    runner: str
    help: str
    output: Literal["model", "folder"] = "folder"
    command: tuple[str, ...] | None = None
    run_folder: bool = True

    def config_class(self) -> type[StrictModel]:
        return _attribute(self.config)

    def run(self, cfg: Any) -> Path:
        """Run ``cfg`` to completion (marking it done); returns its output."""
        runner = _attribute(self.runner)
        if self.run_folder:
            run = RunFolder(cfg.out, cfg)
            try:
                runner(cfg, run)
            finally:
                run.close()
        else:
            runner(cfg)
        from alignlab.storage import writing

        with writing(Path(cfg.out) / DONE_MARKER):  # a full disk here too: one StorageError line
            (Path(cfg.out) / DONE_MARKER).write_text("ok\n")
        return self.output_of(cfg)

    def output_of(self, cfg: Any) -> Path:
        return Path(cfg.out) / "model" if self.output == "model" else Path(cfg.out)


STAGES: dict[str, Stage] = {}


def register(name: str, config: str, runner: str, help: str, *, output: str = "folder",
             command: tuple[str, ...] | None = (), run_folder: bool = True) -> Stage:
    """Add a stage; ``command`` ``()`` (the default) means ``(name,)``, None no stage command."""
    if name in STAGES:
        raise ValueError(f"stage {name!r} is registered twice")
    words = (name,) if command == () else command
    STAGES[name] = Stage(name, config, runner, help, output, words, run_folder)
    return STAGES[name]


def _attribute(spec: str) -> Any:
    module, _, attribute = spec.partition(":")
    return getattr(importlib.import_module(module), attribute)


# ----------------------------------------------------------------------------- the stages

register("gym", "alignlab.gym.stage:GymBuildConfig", "alignlab.gym.stage:run_gym",
         "Build the gym: world, data files and the pretrained tiny base model.", command=None,
         run_folder=False)
register("gym-annotate", "alignlab.gym.annotate:AnnotateConfig", "alignlab.gym.annotate:run_annotate",
         "The gym's simulated annotators compare a policy's samples (helpful/harmless mix).")
register("sft", "alignlab.train.sft:SFTConfig", "alignlab.train.sft:run_sft",
         "Supervised fine-tuning (prompt-masked NLL).", output="model")
register("rm", "alignlab.train.reward:RMConfig", "alignlab.train.reward:run_rm",
         "Train a Bradley–Terry reward model on preference pairs.", output="model")
register("pmp", "alignlab.train.pmp:PMPConfig", "alignlab.train.pmp:run_pmp",
         "Preference-model pretraining on vote-scored or ranked data (binarised GOOD/BAD pairs).",
         output="model")
register("orm", "alignlab.train.verifier:VerifierConfig", "alignlab.train.verifier:run_verifier",
         "Outcome reward model: classify a solution's final-answer correctness (a verifier).",
         output="model")
register("prm", "alignlab.train.verifier:VerifierConfig", "alignlab.train.verifier:run_verifier",
         "Process reward model: classify every step of a solution in one forward.",
         output="model")
register("dpo", "alignlab.train.preference:PreferenceConfig",
         "alignlab.train.preference:run_preference",
         "Offline preference optimisation (DPO by default; any objective via ``loss``).",
         output="model")
register("preference", "alignlab.train.preference:PreferenceConfig",
         "alignlab.train.preference:run_preference",
         "Offline preference optimisation with any registered objective (same stage as ``dpo``).",
         output="model")
register("dro", "alignlab.train.dro:DROConfig", "alignlab.train.dro:run_dro",
         "DRO: offline regularised RL on rated single responses (policy + value model).",
         output="model")
register("online", "alignlab.rl.trainer:OnlineConfig", "alignlab.rl.trainer:run_online",
         "Online RL from feedback: ppo, rloo, grpo, reinforce_pp, online_dpo, sppo, nash_md or xpo "
         "(``algorithm``).",
         output="model")
register("redteam", "alignlab.redteam.stage:RedteamConfig", "alignlab.redteam.stage:run_redteam",
         "Red-teaming: attacks (files or a red LM) against a target, judged; ASR report and gate.",
         command=("redteam", "run"))
register("merge", "alignlab.merging.stage:MergeConfig", "alignlab.merging.stage:run_merge",
         "Merge fine-tunes of one base: task arithmetic, TIES or DARE-TIES (PAFT's merge).",
         output="model")
register("eval", "alignlab.eval.run:EvalConfig", "alignlab.eval.run:run_eval",
         "Generate on held-out prompts and report reward, rates, KL and win rate.")
register("verify", "alignlab.eval.verify:VerifyConfig", "alignlab.eval.verify:run_verify",
         "Best-of-N verification: accuracy vs N for majority vote, ORM/PRM picks, weighted vote.")
register("pm-check", "alignlab.eval.pm_check:PMCheckConfig", "alignlab.eval.pm_check:run_pm_check",
         "PM robustness: train PM vs test PM under best-of-n, their agreement by score bin.")
register("report", "alignlab.eval.report:ReportConfig", "alignlab.eval.report:run_report",
         "Merge several evaluations into report.md / report.json / a plot.")
register("label", "alignlab.feedback.labeling:LabelConfig", "alignlab.feedback.labeling:run_label",
         "AI preference labels from option probabilities, both orders (resumable).")
register("step-labels", "alignlab.feedback.step_labels:StepLabelConfig",
         "alignlab.feedback.step_labels:run_step_labels",
         "Automatic process labels (Math-Shepherd): N rollouts from every step prefix, hard and "
         "soft estimates.")
register("revise", "alignlab.feedback.revise:ReviseConfig", "alignlab.feedback.revise:run_revise",
         "Critique -> revision with a constitution: SL-CAI SFT data and revision-over-initial pairs.",
         command=("cai", "revise"))
register("distill", "alignlab.train.distill:DistillConfig", "alignlab.train.distill:run_distill",
         "Context distillation: a student without the HHH prompt learns the teacher's top-k tokens.",
         output="model")
register("sample", "alignlab.sampling.stage:SampleConfig", "alignlab.sampling.stage:run_sample",
         "N scored samples per prompt (resumable): best-of-N, rejection-sampling SFT set, pairs.")
register("w2s", "alignlab.w2s.config:W2SConfig", "alignlab.w2s.pipeline:run_w2s",
         "Weak-to-strong: weak supervisors label for strong students; PGR with CIs, bootstrapping.")
register("synth", "alignlab.data.synth:SynthConfig", "alignlab.data.synth:run_synth",
         "Instruction data: self-instruct synthesis or templating of labelled tasks.")


# ----------------------------------------------------------------------------- using them


def get_stage(name: str) -> Stage:
    """The registered stage ``name``; an unknown name is a ConfigError listing the known ones."""
    if name not in STAGES:
        raise ConfigError(f"unknown stage {name!r}; choose one of {sorted(STAGES)}")
    return STAGES[name]


def stage_output(cfg: Any) -> Path:
    """Where a stage's output will be, known before it runs (recipes link stages through this)."""
    return get_stage(cfg.stage).output_of(cfg)


def run_stage(cfg: Any) -> Path:
    """Run one stage to completion and return its output path."""
    return get_stage(cfg.stage).run(cfg)


def is_done(cfg: Any) -> bool:
    """True when the stage finished earlier (its DONE marker exists)."""
    return (Path(cfg.out) / DONE_MARKER).is_file()


def build_stage_config(raw: dict[str, Any], source: str) -> Any:
    """Validate ``raw`` (which names its ``stage``) as that stage's config."""
    return build_config(get_stage(raw["stage"]).config_class(), raw, source=source)


def load_stage_config(stage: str, path: str | None, overrides: list[str]):
    """Read a stage config from YAML (optional) plus overrides, and validate it."""
    get_stage(stage)
    raw = read_yaml(path) if path else {}
    raw = deep_merge(raw, parse_overrides(overrides))
    raw.setdefault("stage", stage)
    if raw["stage"] != stage:
        raise ConfigError(f"{path}: stage is {raw['stage']!r} but the command is {stage!r}")
    return build_stage_config(raw, source=str(path or "command line"))


def stages_table() -> str:
    """Markdown table of every registered stage: command, config class, runner, output, help."""
    lines = ["| stage | command | config class | runner | output | what it does |",
             "|---|---|---|---|---|---|"]
    for stage in STAGES.values():
        command = f"`alignlab {' '.join(stage.command)}`" if stage.command else "—"
        lines.append(f"| `{stage.name}` | {command} | `{stage.config}` | `{stage.runner}` | "
                     f"`<out>{'/model' if stage.output == 'model' else ''}` | {stage.help} |")
    return "\n".join(lines)
