"""Typed stage configs, read from YAML with ``key.sub=value`` overrides.

Every config is validated before any model or dataset is loaded. Unknown keys fail with their
dotted path and the closest valid name; wrong types and out-of-range values fail with the key and
the accepted values. Misspelled keys never fall back to defaults silently (``extra="forbid"``).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A config that cannot be used; the message names every bad key and what it accepts."""


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraSettings(StrictModel):
    """LoRA adapter (Hu et al., 2021) applied through peft."""

    r: int = Field(8, ge=1, le=1024)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: Union[str, list[str]] = "all-linear"


class ModelSettings(StrictModel):
    """Where a causal LM (or reward model) comes from and how it is loaded.

    ``path`` is a hub name, a local Hugging Face folder, or a ``.gguf`` file (then converted once to a
    cached safetensors folder). ``gguf_file`` names the GGUF file inside ``path`` when ``path`` is a folder.
    """

    path: str
    gguf_file: str | None = None
    revision: str | None = None
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    trust_remote_code: bool = False
    lora: LoraSettings | None = None


class DataSettings(StrictModel):
    """A data source: a local ``.jsonl``/``.json``/``.parquet`` file or a hub dataset name.

    ``offset`` skips the first records and ``limit`` caps how many are read after that (records
    count after parsing, so a held-out slice is ``offset: N``).
    """

    path: str
    format: Literal["auto", "alignlab", "hh", "chat", "sharegpt", "alpaca", "kto", "oasst"] = "auto"
    split: str = "train"
    on_bad_record: Literal["error", "skip"] = "error"
    offset: int = Field(0, ge=0)
    limit: int | None = Field(None, ge=1)


class TrainSettings(StrictModel):
    """Optimisation settings shared by every training stage.

    Truncation policy: the prompt keeps its most recent ``max_prompt_length`` tokens (oldest turns go
    first); the completion is then cut on the right so prompt + completion fit ``max_length``.
    """

    learning_rate: float = Field(1e-4, gt=0, le=1.0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    lr_schedule: Literal["constant", "linear", "cosine"] = "linear"
    seed: int = 0
    max_length: int = Field(512, ge=8)
    max_prompt_length: int = Field(256, ge=1)
    log_every: int = Field(10, ge=1)
    save_every: int | None = Field(None, ge=1)
    gradient_checkpointing: bool = False


class GenerationSettings(StrictModel):
    """Sampling settings for every generation backend."""

    max_new_tokens: int = Field(64, ge=1)
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    num_samples: int = Field(1, ge=1)
    batch_size: int = Field(64, ge=1)
    stop: list[str] = Field(default_factory=list)
    seed: int = 0


class SFTConfig(StrictModel):
    """Supervised fine-tuning: prompt-masked NLL on assistant turns."""

    stage: Literal["sft"] = "sft"
    model: ModelSettings
    data: DataSettings
    train: TrainSettings = Field(default_factory=TrainSettings)
    packing: bool = False
    out: str


class RMConfig(StrictModel):
    """Reward model: Bradley–Terry pairwise loss (soft labels allowed)."""

    stage: Literal["rm"] = "rm"
    model: ModelSettings
    data: DataSettings
    eval_data: DataSettings | None = None
    eval_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    train: TrainSettings = Field(default_factory=TrainSettings)
    out: str


class LossTerm(BaseModel):
    """One objective of the preference stage: ``{name: dpo, beta: 0.1, weight: 1.0}``.

    Keys other than ``name`` and ``weight`` are the objective's own parameters, validated against its
    registered parameter model (``alignlab.losses``) when the config is read.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str
    weight: float = Field(1.0, gt=0.0)

    @model_validator(mode="after")
    def _check_params(self) -> "LossTerm":
        from alignlab.losses import get_loss

        try:
            spec = get_loss(self.name)
        except KeyError as err:
            raise ValueError(err.args[0]) from None
        spec.parse(self.params)
        return self

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def loss_term_list(value):
    """``loss:`` may be one name, one mapping or a list of either; always a list of mappings."""
    if isinstance(value, (dict, str)):
        value = [value]
    return [{"name": v} if isinstance(v, str) else v for v in value]


class SDPOSettings(StrictModel):
    """sDPO (Kim et al. 2024): train on ``stages`` consecutive chunks of the data; each chunk's
    reference is the model that finished the previous chunk."""

    stages: int = Field(2, ge=2)


class PreferenceConfig(StrictModel):
    """Offline preference optimisation: any registered objective (or a weighted sum of several).

    ``stage: dpo`` and ``stage: preference`` are the same stage. ``reference_cache`` is the folder of
    the on-disk reference log-prob cache (``auto``: ``$ALIGNLAB_CACHE/reference``; ``none``: compute
    every run, keep nothing). ``reference_cache_weights`` says how the cache recognises the reference
    weights: ``stat`` (default; size, mtime and ctime of every file) or ``content`` (SHA-256 of every
    file: survives copying the model folder, costs one read of the weights per run).
    """

    stage: Literal["dpo", "preference"] = "dpo"
    model: ModelSettings
    ref_model: ModelSettings | None = None
    data: DataSettings
    train: TrainSettings = Field(default_factory=TrainSettings)
    loss: list[LossTerm] = Field(default_factory=lambda: [LossTerm(name="dpo", beta=0.1)],
                                 min_length=1)
    reference_cache: str = "auto"
    reference_cache_weights: Literal["stat", "content"] = "stat"
    sdpo: SDPOSettings | None = None
    out: str

    @field_validator("loss", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        return loss_term_list(value)

    @model_validator(mode="after")
    def _check_combination(self) -> "PreferenceConfig":
        from alignlab.losses import get_loss

        specs = [get_loss(term.name) for term in self.loss]
        kinds = {spec.data_kind for spec in specs}
        if len(kinds) > 1:
            raise ValueError("loss: combined objectives must train on one data kind, got "
                             + ", ".join(f"{s.name}={s.data_kind}" for s in specs))
        if len({term.name for term in self.loss}) != len(self.loss):
            raise ValueError("loss: an objective is listed twice")
        if self.sdpo is not None and self.ref_model is not None:
            raise ValueError("sdpo: the reference moves to each stage's starting model, so "
                             "ref_model must not be set")
        return self


DPOConfig = PreferenceConfig


# ----------------------------------------------------------------------------- AI feedback (RLAIF / CAI)


class JudgeSettings(StrictModel):
    """A feedback model behind the one judge interface (:mod:`alignlab.feedback.judges`).

    ``kind``: ``local`` (a causal LM; option probabilities read from one forward pass),
    ``reward_model`` (``model`` is a reward-model folder; P(first) = sigmoid(r_first - r_second)) or
    ``http`` (an OpenAI-compatible ``/v1/completions`` endpoint at ``url`` that returns
    ``logprobs``, e.g. a vLLM server; ``model_name`` is the request's ``model`` field; ``model``, when
    set, only lends its tokenizer's chat template for rendering, otherwise the HH format). The API key
    is read from the environment variable named by ``api_key_env`` and is never written anywhere.
    ``top_logprobs`` is how many alternatives the endpoint is asked for (an option outside them gets
    no probability mass; vLLM serves at most its ``--max-logprobs``, 20 by default).
    """

    kind: Literal["local", "reward_model", "http"] = "local"
    model: ModelSettings | None = None
    url: str | None = None
    model_name: str | None = None
    api_key_env: str | None = None
    top_logprobs: int = Field(20, ge=1, le=1000)
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(3, ge=0)
    batch_size: int = Field(16, ge=1)
    max_length: int = Field(1024, ge=16)

    @model_validator(mode="after")
    def _check_source(self) -> "JudgeSettings":
        if self.kind in ("local", "reward_model") and self.model is None:
            raise ValueError(f"judge kind {self.kind!r} needs 'model'")
        if self.kind == "http" and not self.url:
            raise ValueError("judge kind 'http' needs 'url' (e.g. http://localhost:8000/v1)")
        if self.api_key_env is not None and not self.api_key_env.replace("_", "").isalnum():
            raise ValueError("api_key_env is the NAME of an environment variable (e.g. OPENAI_API_KEY), "
                             "not the key itself")
        return self


class LabelConfig(StrictModel):
    """AI preference labels (Bai et al. 2022, "Constitutional AI", section 4.1).

    Each pair in ``data`` (its ``chosen``/``rejected`` order is only the order written on disk) is
    shown to the judge with a comparison principle and the options (A)/(B); the label is
    P(chosen preferred), the normalised option probability from one forward pass, averaged over
    ``principles_per_pair`` principles drawn at random from the constitution and over both option
    orders (``both_orders``). ``cot``: the judge first writes a rationale
    (``cot_generation``), then the option probabilities are read; ``cot_clamp`` clamps them to a band
    (the paper uses 0.4-0.6). With ``policy`` set, ``data`` holds prompts and two responses per prompt
    are sampled from ``policy`` before labelling. The job is resumable: rerun the same command.
    """

    stage: Literal["label"] = "label"
    judge: JudgeSettings
    data: DataSettings
    constitution: str = "default"
    principles_per_pair: int = Field(1, ge=1)
    both_orders: bool = True
    few_shot: int = Field(0, ge=0)
    cot: bool = False
    cot_clamp: tuple[float, float] | None = (0.4, 0.6)
    cot_generation: GenerationSettings = Field(
        default_factory=lambda: GenerationSettings(max_new_tokens=96, temperature=0.0))
    policy: ModelSettings | None = None
    generation: GenerationSettings = Field(default_factory=lambda: GenerationSettings(num_samples=2))
    flush_every: int = Field(16, ge=1)
    seed: int = 0
    out: str

    @model_validator(mode="after")
    def _check(self) -> "LabelConfig":
        if self.cot_clamp is not None and not 0.0 <= self.cot_clamp[0] <= self.cot_clamp[1] <= 1.0:
            raise ValueError(f"cot_clamp must be (low, high) with 0 <= low <= high <= 1, got {self.cot_clamp}")
        if self.cot and self.judge.kind == "reward_model":
            raise ValueError("cot needs a generating judge (local or http), not a reward model")
        return self


class ReviseConfig(StrictModel):
    """Critique -> revision (Bai et al. 2022, "Constitutional AI", section 3).

    ``model`` answers each prompt in ``prompts``; then, ``rounds`` times, a principle drawn at random
    from the constitution asks ``reviser`` (default: ``model``) for a critique and then a revision of
    the latest answer. ``few_shot`` prepends that many of the constitution's worked examples.
    ``generation`` samples the answers and, unless ``reviser_generation`` is set (e.g. sampled
    answers, greedy critiques), the critiques and revisions too.
    Writes ``revisions.jsonl`` (every step), ``sft.jsonl`` (prompt + final revision, the SL-CAI data)
    and ``prefs.jsonl`` (final revision preferred to the initial answer). Resumable.
    """

    stage: Literal["revise"] = "revise"
    model: ModelSettings
    reviser: ModelSettings | None = None
    prompts: DataSettings
    constitution: str = "default"
    rounds: int = Field(1, ge=1)
    few_shot: int = Field(0, ge=0)
    generation: GenerationSettings = Field(default_factory=lambda: GenerationSettings(max_new_tokens=128))
    reviser_generation: GenerationSettings | None = None
    flush_every: int = Field(16, ge=1)
    seed: int = 0
    out: str


class DistillConfig(StrictModel):
    """Context distillation (Askell et al. 2021, "A General Language Assistant as a Laboratory for
    Alignment", section 3.1).

    The teacher (``teacher``; default: the student's starting weights) reads ``context`` (the HHH
    prompt; ``default`` is the one shipped with alignlab, or a path to a text file) followed by each
    conversation in ``data``; its top-``top_k`` next-token probabilities at every position of the
    conversation (``positions``) are stored. The student (``model``) is trained without the context
    on the KL from those stored distributions. With ``generation`` set, ``data`` holds prompts and
    the teacher first samples the responses (with the context).
    """

    stage: Literal["distill"] = "distill"
    model: ModelSettings
    teacher: ModelSettings | None = None
    data: DataSettings
    context: str = "default"
    top_k: int = Field(50, ge=1)
    positions: Literal["all", "assistant"] = "all"
    generation: GenerationSettings | None = None
    train: TrainSettings = Field(default_factory=TrainSettings)
    out: str


class SynthConfig(StrictModel):
    """Instruction data synthesis (``alignlab synth``).

    ``mode: self_instruct`` (Wang et al. 2023, "Self-Instruct"): ``model`` writes new instructions
    from prompts of ``prompt_tasks`` example tasks (``machine_tasks`` of them from its own accepted
    output once there is some), filtered and ROUGE-L de-duplicated (``rouge_threshold``), then
    answers them; it stops after ``max_requests`` requests (default 3 per instruction asked for) even
    when fewer were accepted. ``mode: template``: every labelled instance of ``seed_tasks`` is turned into an
    instruction conversation with ``templates``. ``seed_tasks`` has the format of self-instruct's
    ``seed_tasks.jsonl``. Resumable.
    """

    stage: Literal["synth"] = "synth"
    mode: Literal["self_instruct", "template"] = "self_instruct"
    model: ModelSettings | None = None
    seed_tasks: str
    num_instructions: int = Field(100, ge=1)
    max_requests: int | None = Field(None, ge=1)
    prompt_tasks: int = Field(8, ge=1)
    machine_tasks: int = Field(2, ge=0)
    rouge_threshold: float = Field(0.7, gt=0.0, le=1.0)
    min_words: int = Field(3, ge=1)
    max_words: int = Field(150, ge=1)
    answer: bool = True
    generation: GenerationSettings = Field(
        default_factory=lambda: GenerationSettings(max_new_tokens=256, temperature=0.7, top_p=0.5))
    templates: list[str] = Field(default_factory=list)
    seed: int = 0
    out: str

    @model_validator(mode="after")
    def _check(self) -> "SynthConfig":
        if self.mode == "self_instruct" and self.model is None:
            raise ValueError("mode 'self_instruct' needs 'model'")
        if self.machine_tasks > self.prompt_tasks:
            raise ValueError("machine_tasks cannot exceed prompt_tasks")
        if self.templates:
            from alignlab.data.synth import check_templates

            check_templates(self.templates)
        return self


# ----------------------------------------------------------------------------- online

class ScorerSettings(StrictModel):
    """One reward source of the online stage; several are summed with their ``weight``.

    ``kind``: ``reward_model`` (``path``: a reward-model folder), ``gym_gold`` (``gym``: a gym folder;
    the gym's true reward), ``function`` (``function``: ``"module:callable"`` taking (prompt messages,
    completion text) and returning a float), ``self_judge`` (the live policy asked ``template``
    and scored by the probability it gives to ``yes`` over ``no``; Yuan et al. 2024, "Self-Rewarding
    Language Models", as a pointwise judge) or ``judge`` (direct RLAIF, Lee et al. 2024: the feedback
    model ``judge`` answers the ``constitution``'s rating question and the score is the expected
    rating under its option probabilities, scaled to [0, 1]).
    """

    kind: Literal["reward_model", "gym_gold", "function", "self_judge", "judge"]
    weight: float = 1.0
    name: str | None = None
    path: str | None = None
    gym: str | None = None
    function: str | None = None
    template: str | None = None
    judge: JudgeSettings | None = None
    constitution: str = "default"
    batch_size: int = Field(32, ge=1)

    @model_validator(mode="after")
    def _check_source(self) -> "ScorerSettings":
        needed = {"reward_model": "path", "gym_gold": "gym", "function": "function",
                  "judge": "judge"}.get(self.kind)
        if needed and getattr(self, needed) is None:
            raise ValueError(f"reward kind {self.kind!r} needs {needed!r}")
        if self.kind == "function" and ":" not in (self.function or ""):
            raise ValueError(f"function must be 'module:callable', got {self.function!r}")
        return self


class RLSettings(StrictModel):
    """Knobs of the online algorithms (see ``alignlab.rl.algorithms`` for which one reads what).

    KL: ``kl_coef`` is beta (fixed), or the starting beta of the adaptive controller when
    ``kl_target`` is set (Ziegler et al. 2019). PPO, RLOO and REINFORCE++ put the KL in the reward;
    GRPO puts the k3 estimate in the loss. ``ref_sync_every`` > 0 replaces the reference by the
    current policy every that many iterations (iterative methods); 0 keeps the starting model.
    ``whiten_advantages`` None means the algorithm's default (on for PPO, off for the others).
    ``minibatch_size`` and ``micro_batch_size`` count sequences (pairs for online DPO); None: one
    minibatch / no split.
    """

    ppo_epochs: int = Field(1, ge=1)
    minibatch_size: int | None = Field(None, ge=1)
    micro_batch_size: int | None = Field(None, ge=1)
    clip_eps: float = Field(0.2, gt=0.0)
    clip_eps_high: float | None = Field(None, gt=0.0)
    kl_coef: float = Field(0.05, ge=0.0)
    kl_target: float | None = Field(None, gt=0.0)
    kl_horizon: float = Field(10000.0, gt=0.0)
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    gamma: float = Field(1.0, ge=0.0, le=1.0)
    lam: float = Field(0.95, ge=0.0, le=1.0)
    whiten_advantages: bool | None = None
    score_norm: Literal["none", "batch"] = "none"
    reward_clip: float | None = Field(None, gt=0.0)
    missing_eos_penalty: float | None = None
    vf_coef: float = Field(0.1, ge=0.0)
    value_clip: float | None = Field(0.2, gt=0.0)
    critic_learning_rate: float | None = Field(None, gt=0.0)
    grpo_scale: Literal["std", "none"] = "std"
    reduction: Literal["auto", "token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] = "auto"
    ptx_coef: float = Field(0.0, ge=0.0)
    ref_sync_every: int = Field(0, ge=0)


class OnlineConfig(StrictModel):
    """Online RL from feedback: rollout -> score -> advantage -> update, one loop for every algorithm.

    ``train.max_steps`` counts iterations (one rollout each; default: one pass over the prompts);
    ``train.batch_size`` is prompts per iteration per process, each sampled
    ``generation.num_samples`` times. ``loss`` is the preference objective of ``online_dpo``.
    ``ptx_data`` is the pretraining/SFT data of PPO-ptx (with ``rl.ptx_coef`` > 0).
    """

    stage: Literal["online"] = "online"
    algorithm: Literal["ppo", "rloo", "grpo", "reinforce_pp", "online_dpo"]
    model: ModelSettings
    ref_model: ModelSettings | None = None
    critic: ModelSettings | None = None
    prompts: DataSettings
    reward: list[ScorerSettings] = Field(min_length=1)
    monitor: list[ScorerSettings] = Field(default_factory=list)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    backend: Literal["hf", "vllm"] = "hf"
    train: TrainSettings = Field(default_factory=TrainSettings)
    rl: RLSettings = Field(default_factory=RLSettings)
    loss: list[LossTerm] = Field(default_factory=lambda: [LossTerm(name="dpo", beta=0.1)],
                                 min_length=1)
    ptx_data: DataSettings | None = None
    out: str

    @field_validator("reward", "monitor", mode="before")
    @classmethod
    def _one_or_many_scorers(cls, value):
        return [value] if isinstance(value, dict) else value

    @field_validator("loss", mode="before")
    @classmethod
    def _one_or_many_losses(cls, value):
        return loss_term_list(value)

    @model_validator(mode="after")
    def _check_algorithm(self) -> "OnlineConfig":
        from alignlab.rl.algorithms import check_config

        check_config(self)
        return self


class EvalConfig(StrictModel):
    """Generate on held-out prompts and report gold/proxy reward, rates, KL and win rate."""

    stage: Literal["eval"] = "eval"
    policy: ModelSettings
    reference: ModelSettings | None = None
    reward_model: ModelSettings | None = None
    prompts: DataSettings
    gym: str | None = None
    num_prompts: int | None = Field(None, ge=1)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    out: str


class GymBuildConfig(StrictModel):
    """Build the alignment gym: world, data files and the pretrained tiny base model."""

    stage: Literal["gym"] = "gym"
    out: str
    seed: int = 0
    pretrain_seconds: float = Field(75.0, gt=0)
    pretrain_steps: int | None = Field(None, ge=1)
    length_bias: float = 0.0


class ReportConfig(StrictModel):
    """Merge several evaluations into one report (report.md, report.json, a PNG plot)."""

    stage: Literal["report"] = "report"
    inputs: dict[str, str]
    title: str = "alignlab report"
    compare: list[tuple[str, str]] = Field(default_factory=list)
    out: str


STAGE_CONFIGS: dict[str, type[StrictModel]] = {
    "sft": SFTConfig,
    "rm": RMConfig,
    "dpo": PreferenceConfig,
    "preference": PreferenceConfig,
    "online": OnlineConfig,
    "eval": EvalConfig,
    "gym": GymBuildConfig,
    "report": ReportConfig,
    "label": LabelConfig,
    "revise": ReviseConfig,
    "distill": DistillConfig,
    "synth": SynthConfig,
}


# ----------------------------------------------------------------------------- reading


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ``["train.batch_size=4", "model.path=x"]`` into a nested dict (values parsed as YAML)."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key.sub=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        set_dotted(nested, key.strip(), value)
    return nested


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``tree[a][b][c] = value`` for ``dotted == "a.b.c"``, creating sections as needed."""
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``extra`` into a copy of ``base`` (``extra`` wins)."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a non-mapping is a ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    return data


def build_config(cls: type[StrictModel], raw: dict[str, Any], source: str = "config"):
    """Validate ``raw`` as ``cls``; on failure raise a ConfigError listing every problem."""
    try:
        return cls.model_validate(raw)
    except ValidationError as exc:
        lines = [describe_error(cls, err) for err in exc.errors()]
        raise ConfigError(f"{source}: invalid {cls.__name__}:\n  " + "\n  ".join(lines)) from None


def load_stage_config(stage: str, path: str | None, overrides: list[str]):
    """Read a stage config from YAML (optional) plus overrides, and validate it."""
    if stage not in STAGE_CONFIGS:
        raise ConfigError(f"unknown stage {stage!r}; choose one of {sorted(STAGE_CONFIGS)}")
    raw = read_yaml(path) if path else {}
    raw = deep_merge(raw, parse_overrides(overrides))
    raw.setdefault("stage", stage)
    if raw["stage"] != stage:
        raise ConfigError(f"{path}: stage is {raw['stage']!r} but the command is {stage!r}")
    return build_config(STAGE_CONFIGS[stage], raw, source=str(path or "command line"))


# ----------------------------------------------------------------------------- error messages


def describe_error(cls: type[BaseModel], err: dict[str, Any]) -> str:
    """One readable line for one pydantic error: dotted key, problem, accepted values."""
    loc = [str(p) for p in err["loc"] if not _is_union_tag(p)]
    dotted = ".".join(loc) or "<root>"
    kind = err["type"]
    if kind == "extra_forbidden":
        valid = _valid_keys(cls, loc[:-1])
        close = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"{dotted}: unknown key{hint} (valid keys here: {', '.join(sorted(valid))})"
    if kind == "missing":
        return f"{dotted}: required key is missing"
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return f"{dotted}: must be one of {expected} (got {err.get('input')!r})"
    ctx = err.get("ctx") or {}
    bounds = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in ctx.items() if k in _BOUNDS)
    accepted = f" (accepted: {bounds})" if bounds else ""
    return f"{dotted}: {err['msg']}{accepted} (got {err.get('input')!r})"


_BOUNDS = {"gt": 0, "ge": 0, "lt": 0, "le": 0}


def _is_union_tag(part: Any) -> bool:
    """pydantic adds union member names (e.g. 'list[str]') to error paths; they are not keys."""
    return isinstance(part, str) and ("[" in part or part in {"str", "int", "float", "bool", "none"})


def _valid_keys(cls: type[BaseModel], loc: list[str]) -> list[str]:
    """The field names of the config section at ``loc`` inside ``cls``."""
    model: Any = cls
    for part in loc:
        if part.isdigit():
            continue
        field = model.model_fields.get(part) if _is_model(model) else None
        if field is None:
            return []
        model = _section_model(field.annotation)
    return list(model.model_fields) if _is_model(model) else []


def _is_model(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, BaseModel)


def _section_model(annotation: Any) -> Any:
    """The BaseModel inside ``X``, ``X | None`` or ``list[X]``, if any."""
    if _is_model(annotation):
        return annotation
    if get_origin(annotation) is not None:
        for arg in get_args(annotation):
            found = _section_model(arg)
            if found is not None:
                return found
    return None


def dump_config(cfg: BaseModel) -> str:
    """The resolved config as YAML (every default filled in)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
