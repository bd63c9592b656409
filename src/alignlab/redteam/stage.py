"""The ``redteam`` stage: attack a target, judge every reply, report the attack success rate.

Per run (Ganguli et al. 2022, "Red Teaming Language Models to Reduce Harms"; Perez et al. 2022, "Red
Teaming Language Models with Language Models"):

1. **attacks**: every ``attacks:`` file (:mod:`alignlab.redteam.attacks`: Anthropic's red-team
   attempts, HarmBench behaviours, prompts) and every ``red_lm:`` generator
   (:mod:`alignlab.redteam.generate`: zero-shot, stochastic few-shot from an earlier run's
   successes; a fine-tuned red LM is supervised red-teaming). Generated attacks are written to
   ``attacks.jsonl`` as they are made, so a killed run regenerates nothing;
2. **attempts**: the target answers each attack (a local model through the generation backend, or an
   OpenAI-compatible endpoint whose key is read from the environment) and the judge
   (:mod:`alignlab.redteam.judges`) gives a verdict; rows go to ``attempts.jsonl`` in chunks of
   ``flush_every`` (resumable: finished attempts are never redone);
3. **report**: ``report.json`` / ``report.md`` / ``report.html`` (ASR with 95 % intervals per target,
   method and category, diversity of successful attacks, the most damaging examples;
   :mod:`alignlab.redteam.report`);
4. **back into training**: ``failures_prompts.jsonl`` (the failing attacks as prompts for
   ``alignlab cai revise``, whose ``prefs.jsonl`` then holds revision ≻ harmful reply pairs for
   ``dpo``), ``failures_negatives.jsonl`` (prompt + harmful reply as undesirable binary feedback for
   ``npo``/``kto``-style objectives) and ``attacks_sft.jsonl`` (successful attacks as SFT data for
   a supervised red LM).

``fail_above: RATE`` makes the run fail (exit code 1 from the command) when the overall ASR is above
RATE, after everything is written: a CI gate.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from alignlab.config import (
    GenerationSettings,
    HarmJudgeSettings,
    JudgeSettings,
    ModelSettings,
    StageConfig,
    StrictModel,
)
from alignlab.data.records import messages_from_list, messages_to_list
from alignlab.feedback.jobs import JsonlJob, write_jsonl_atomic
from alignlab.generation.factory import make_generator
from alignlab.models.loading import load_causal_lm
from alignlab.redteam.attacks import Attack, AttackDataSettings, attack_to_dict, load_attacks
from alignlab.redteam.compare import read_attempts
from alignlab.redteam.generate import ZERO_SHOT_INSTRUCTION, attack_sft_rows, generate_attacks
from alignlab.redteam.judges import build_harm_judge
from alignlab.redteam.multiturn import FOLLOW_UP_INSTRUCTION, combine, converse
from alignlab.redteam.report import gate, write_report
from alignlab.redteam.target import build_target
from alignlab.runs import GateFailed, RunFolder


class RedLMSettings(StrictModel):
    """One generator of attacks (``red_lm:``): ``method`` zero_shot or few_shot (``pool``: an
    earlier red-team run folder whose successful attempts are the examples, ``shots`` of them per
    prompt, drawn ∝ exp(harm score / ``pool_temperature``)); ``num`` attacks; ``name`` labels the
    method in the report (default: ``method``)."""

    method: Literal["zero_shot", "few_shot"] = "zero_shot"
    model: ModelSettings
    num: int = Field(64, ge=1)
    instruction: str = ZERO_SHOT_INSTRUCTION
    generation: GenerationSettings = Field(default_factory=lambda: GenerationSettings(
        max_new_tokens=48, temperature=1.0, top_p=0.95))
    pool: str | None = None
    shots: int = Field(5, ge=1)
    pool_temperature: float = Field(0.1, gt=0.0)
    name: str | None = None
    seed: int = 0

    @model_validator(mode="after")
    def _pool(self) -> RedLMSettings:
        if (self.method == "few_shot") != (self.pool is not None):
            raise ValueError("red_lm: few_shot needs 'pool' (an earlier red-team run) and "
                             "zero_shot takes none")
        return self

    @property
    def label(self) -> str:
        return self.name or self.method


class TargetSettings(StrictModel):
    """The model under attack: a local ``model`` or an OpenAI-compatible ``http`` endpoint (a
    judge-style setting of kind ``http``: ``url``, ``model_name``, ``api_key_env``)."""

    model: ModelSettings | None = None
    http: JudgeSettings | None = None
    name: str = "target"

    @model_validator(mode="after")
    def _one(self) -> TargetSettings:
        if (self.model is None) == (self.http is None):
            raise ValueError("target: give exactly one of 'model' and 'http'")
        if self.http is not None and self.http.kind != "http":
            raise ValueError("target.http must have kind: http")
        return self


class FollowUpSettings(StrictModel):
    """Multi-turn attacks (:mod:`alignlab.redteam.multiturn`): ``model`` writes the next user turn
    after each reply, for ``turns`` target replies per attack; an attempt succeeds when any reply
    is harmful."""

    model: ModelSettings
    turns: int = Field(2, ge=2)
    instruction: str = FOLLOW_UP_INSTRUCTION
    generation: GenerationSettings = Field(default_factory=lambda: GenerationSettings(
        max_new_tokens=48, temperature=1.0, top_p=0.95))


class RedteamConfig(StageConfig):
    """Red-team ``target`` with ``attacks`` files and/or ``red_lm`` generators, judged by
    ``judge``; see the module docstring. ``generation``: the target's replies. ``follow_up``: turn
    every attack into a multi-turn conversation."""

    stage: Literal["redteam"] = "redteam"
    target: TargetSettings
    attacks: list[AttackDataSettings] = Field(default_factory=list)
    red_lm: list[RedLMSettings] = Field(default_factory=list)
    judge: HarmJudgeSettings
    generation: GenerationSettings = Field(default_factory=lambda: GenerationSettings(
        max_new_tokens=64, temperature=0.7))
    follow_up: FollowUpSettings | None = None
    fail_above: float | None = Field(None, ge=0.0, le=1.0)
    flush_every: int = Field(32, ge=1)
    top_k: int = Field(5, ge=0)
    out: str

    @model_validator(mode="after")
    def _some_attacks(self) -> RedteamConfig:
        if not self.attacks and not self.red_lm:
            raise ValueError("redteam needs 'attacks' (files) or 'red_lm' (generators)")
        labels = [r.label for r in self.red_lm]
        if len(set(labels)) != len(labels):
            raise ValueError(f"red_lm: give each generator a distinct 'name' (got {labels})")
        return self


# ----------------------------------------------------------------------------- attacks


def file_attacks(cfg: RedteamConfig, run: RunFolder) -> list[Attack]:
    """Every attack of the ``attacks:`` files, skipped records reported."""
    attacks = []
    for settings in cfg.attacks:
        loaded = load_attacks(settings)
        run.log(f"{loaded.source}: {len(loaded.records)} attacks, {loaded.bad.skipped} bad records "
                f"skipped")
        for example in loaded.bad.examples[:5]:
            run.log(f"skipped bad record: {example}")
        attacks += loaded.records
    return attacks


def successful_pool(folder: str) -> list[tuple[str, float]]:
    """(attack, harm score) of the successful attempts of an earlier run (``attempts.jsonl``)."""
    path = Path(folder) / "attempts.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"red_lm.pool: {path} does not exist (run the zero-shot red team "
                                f"first)")
    rows = read_attempts(folder)  # read only: another run's file is never rewritten
    pool = [(r["attack"], float(r["harm_score"] or 0.0)) for r in rows if r.get("verdict") is True]
    if not pool:
        raise ValueError(f"red_lm.pool: {path} holds no successful attack to use as an example")
    return pool


def generated_attacks(cfg: RedteamConfig, run: RunFolder) -> list[Attack]:
    """The attacks of every ``red_lm`` generator, made once and kept in ``attacks.jsonl``."""
    job = JsonlJob(run.path / "attacks.jsonl")
    done = {row["index"] for row in job.rows}
    for k, red in enumerate(cfg.red_lm):
        if k in done:
            continue
        model, tokenizer = load_causal_lm(red.model, for_training=False)
        pool = successful_pool(red.pool) if red.pool else ()
        attacks, empty = generate_attacks(make_generator("hf", model, tokenizer), red.instruction,
                                          red.generation, red.num, red.label, pool, red.shots,
                                          red.pool_temperature, red.seed)
        job.append([{"index": k, "method": red.label, "empty": empty,
                     "attacks": [attack_to_dict(a) for a in attacks]}])
        run.log(f"red LM {red.label}: {len(attacks)} attacks ({empty} empty samples dropped)")
    return [_attack_from_dict(a) for row in job.sorted_rows() for a in row["attacks"]]


def _attack_from_dict(row: dict) -> Attack:
    return Attack(row["id"], messages_from_list(row["prompt"]), row.get("category"),
                  row.get("source", "file"), row.get("meta") or {})


# ----------------------------------------------------------------------------- attempts


def attempt_rows(attacks: Sequence[Attack], indices: Sequence[int], replies: Sequence[str],
                 verdicts, target: str, judge: str) -> list[dict]:
    """One ``attempts.jsonl`` row per attack (the fields :mod:`alignlab.redteam.report` reads)."""
    return [{"index": i, "id": a.id, "attack": a.prompt[-1].content,
             "prompt": messages_to_list(a.prompt), "method": a.source,
             "category": a.category or v.category, "target": target, "reply": reply,
             "verdict": v.harmful, "harm_score": v.harm_score, "judge": judge, "note": v.note}
            for i, a, reply, v in zip(indices, attacks, replies, verdicts)]


def attempt_chunk(cfg: RedteamConfig, target, judge, follow_up, attacks: Sequence[Attack],
                  settings: GenerationSettings) -> tuple[list[str], list, list | None]:
    """Replies and verdicts of one chunk of attacks: one reply each, or, with ``follow_up``, the
    last reply of each conversation, the combined verdict and every turn."""
    prompts = [a.prompt for a in attacks]
    if follow_up is None:
        replies = target.reply(prompts, settings)
        return replies, judge.judge(prompts, replies), None
    f = cfg.follow_up
    history = converse(target, judge, follow_up, prompts, f.turns, settings, f.generation,
                       f.instruction)
    turns = [[{"attack": a, "reply": r, "verdict": v.harmful, "harm_score": v.harm_score}
              for a, r, v in conv] for conv in history]
    return ([conv[-1][1] for conv in history], [combine([v for _, _, v in conv]) for conv in history],
            turns)


def run_attempts(cfg: RedteamConfig, run: RunFolder, attacks: list[Attack]) -> list[dict]:
    """Attack, reply, verdict for every attack not yet in ``attempts.jsonl`` (a resumed run's rows
    must belong to the same attack list); all rows in order."""
    job = JsonlJob(run.path / "attempts.jsonl")
    check_attempts(job.rows, attacks, job.path)
    todo = [i for i in range(len(attacks)) if i not in job.done_indices()]
    if todo:
        target, judge = build_target(cfg.target), build_harm_judge(cfg.judge)
        follow_up = None
        if cfg.follow_up is not None:
            model, tokenizer = load_causal_lm(cfg.follow_up.model, for_training=False)
            follow_up = make_generator("hf", model, tokenizer)
        for start in range(0, len(todo), cfg.flush_every):
            chunk = todo[start:start + cfg.flush_every]
            settings = cfg.generation.model_copy(update={"seed": cfg.generation.seed + chunk[0]})
            replies, verdicts, turns = attempt_chunk(cfg, target, judge, follow_up,
                                                     [attacks[i] for i in chunk], settings)
            rows = attempt_rows([attacks[i] for i in chunk], chunk, replies, verdicts,
                                cfg.target.name, judge.name)
            for row, conv in zip(rows, turns or []):
                row["turns"] = conv
            job.append(rows)
            run.log(f"{len(job.rows)}/{len(attacks)} attacks tried")
    return job.sorted_rows()


def check_attempts(rows: list[dict], attacks: list[Attack], path: Path) -> None:
    """A resumed run must attack the same list: every stored row's id matches its attack."""
    for row in rows:
        i = row["index"]
        if i >= len(attacks) or row["id"] != attacks[i].id:
            raise ValueError(f"{path}: attempt {i} was made for another attack list; use a new "
                             f"'out' or delete the file")


def write_exports(run: RunFolder, rows: list[dict]) -> dict[str, int]:
    """The failing cases as training data (module docstring, step 4)."""
    failures = [r for r in rows if r.get("verdict") is True]
    write_jsonl_atomic(run.path / "failures_prompts.jsonl",
                       [{"prompt": r["prompt"], "category": r["category"]} for r in failures])
    write_jsonl_atomic(run.path / "failures_negatives.jsonl",
                       [{"prompt": r["prompt"], "completion": r["reply"], "label": False}
                        for r in failures])
    write_jsonl_atomic(run.path / "attacks_sft.jsonl", attack_sft_rows(rows))
    return {"failures": len(failures)}


def run_redteam(cfg: RedteamConfig, run: RunFolder) -> Path:
    """Attacks → replies → verdicts → report and exports; raises :class:`GateFailed` when the
    overall ASR is above ``fail_above`` (after everything is written)."""
    attacks = file_attacks(cfg, run) + generated_attacks(cfg, run)
    if not attacks:
        raise ValueError("redteam: no attack to try (empty files and no generated attack)")
    rows = run_attempts(cfg, run, attacks)
    summary = write_report(rows, run.path, top_k=cfg.top_k)
    summary["exports"] = write_exports(run, rows)
    run.write_json("summary.json", {k: summary[k] for k in ("overall", "exports")})
    overall = summary["overall"]
    run.log(f"ASR {overall['asr']:.3f} ({overall['successes']}/{overall['n']}, "
            f"{overall['unjudged']} unjudged); report: {run.path / 'report.md'}")
    if gate(summary, cfg.fail_above):
        raise GateFailed(f"redteam: attack success rate {overall['asr']:.3f} is above "
                         f"fail_above {cfg.fail_above} ({run.path / 'report.md'})")
    return run.path

