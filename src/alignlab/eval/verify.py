"""``alignlab verify``: best-of-N verification against majority voting, accuracy vs N.

For every problem, N sampled solutions — read from a step-solution file (``data``), or sampled here
from ``policy`` on ``problems`` (any step format with gold answers, or ``{"prompt", "gold_answer"}``
rows; resumable: ``samples.jsonl`` keeps every finished problem) — are picked from by:

- ``majority``: the most frequent final answer (self-consistency);
- each verifier in ``verifiers`` (an ORM or PRM folder; a PRM once per requested aggregation):
  the solution it scores highest (best-of-N; Cobbe et al. 2021, Lightman et al. 2023);
- ``weighted/<verifier>``: votes weighted by that verifier's scores (Li et al. 2023);
- ``oracle``: some drawn solution is right (pass@N).

Accuracy vs N for n in ``ns`` comes from the subset estimators of :mod:`alignlab.eval.voting`
(exact for verifier selection and the oracle, ``draws`` random subsets for voting), mean ± se over
problems. With step labels (in the data, or from ``step_checker`` for sampled solutions) it also
reports, per verifier, the trace-error rate among correct picks: the share of picked right answers
reached through a wrong step (Uesato et al. 2022). ``convincing_wrong: K`` writes the K wrong-answer
solutions the first PRM (else the first verifier) scores highest — "convincing wrong-answer"
solutions, the ones Lightman et al. send to labellers (active learning) — as a ``format: steps``
file without labels.

Outputs: ``curve.json`` (one row per method and n), ``verify.md`` (a table), ``accuracy_vs_n.png``,
``summary.json`` (the solutions' own accuracy and trace-error rate among right answers, and per
verifier its AUROC pooled over problems and within problems: see :func:`discrimination`),
``scores.jsonl`` (every solution with its answer, correctness and verifier scores).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from alignlab.config import GenerationSettings, ModelSettings, StageConfig, StrictModel
from alignlab.data.errors import DataSourceError
from alignlab.data.step_readers import (
    StepDataSettings,
    group_by_problem,
    load_problems,
    load_step_solutions,
)
from alignlab.data.step_tokenize import split_steps
from alignlab.data.steps import (
    Problem,
    StepSolution,
    answers_match,
    extract_answer,
    first_error,
    step_solution_to_dict,
)
from alignlab.eval.stats import mean_se
from alignlab.eval.voting import pass_at_n, selection_accuracy, vote_accuracy
from alignlab.feedback.jobs import JsonlJob, write_jsonl_atomic
from alignlab.losses.process import aggregate_step_scores, binary_auroc
from alignlab.runs import RunFolder
from alignlab.scoring import import_function

Aggregation = Literal["product", "min", "last", "mean"]


class VerifierRef(StrictModel):
    """A trained ORM/PRM folder; ``aggregations`` (PRM): one method per aggregation, default the
    saved one."""

    path: str
    name: str | None = None
    aggregations: list[Aggregation] | None = None


class VerifyConfig(StageConfig):
    """Best-of-N verification vs majority voting (module docstring)."""

    stage: Literal["verify"] = "verify"
    data: StepDataSettings | None = None
    problems: StepDataSettings | None = None
    policy: ModelSettings | None = None
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    num_problems: int | None = Field(None, ge=1)
    verifiers: list[VerifierRef] = Field(default_factory=list)
    step_checker: str | None = None
    ns: list[int] | None = None
    draws: int = Field(256, ge=1)
    convincing_wrong: int = Field(0, ge=0)
    batch_size: int = Field(32, ge=1)
    out: str

    @model_validator(mode="after")
    def _check_inputs(self) -> VerifyConfig:
        if (self.data is None) == (self.problems is None):
            raise ValueError("verify needs exactly one of 'data' (sampled solutions) or 'problems' "
                             "(with 'policy', which samples generation.num_samples per problem)")
        if self.problems is not None and self.policy is None:
            raise ValueError("'problems' needs 'policy' (the model that samples solutions)")
        return self


# ----------------------------------------------------------------------------- solutions


def trace_error(solution: StepSolution) -> bool | None:
    """Right final answer with a wrong step (None without step labels or outcome)."""
    if not solution.labels or solution.correct is None:
        return None
    return bool(solution.correct) and first_error(solution.labels, solution.label_type) is not None


def solution_from_text(problem: Problem, text: str, checker=None) -> StepSolution:
    """A sampled completion as a StepSolution of ``problem`` (answer, outcome, checker's labels)."""
    steps = tuple(split_steps(text)) or ("",)
    answer = extract_answer(text)
    labels = tuple(float(bool(v)) for v in checker(problem.prompt, text)) if checker else ()
    if labels and len(labels) != len(steps):
        raise ValueError(f"step_checker gave {len(labels)} labels for the {len(steps)} steps of a "
                         f"solution to problem {problem.problem_id!r}; it must split steps as "
                         "alignlab.data.step_tokenize.split_steps does")
    return StepSolution(problem.prompt, steps, labels, "binary", answer,
                        answers_match(answer, problem.gold_answer), problem.gold_answer,
                        problem.problem_id)


def sample_solutions(cfg: VerifyConfig, run: RunFolder) -> list[list[StepSolution]]:
    """N solutions per problem from the policy; ``samples.jsonl`` makes a killed run resume."""
    from alignlab.generation.factory import make_generator
    from alignlab.models.loading import load_causal_lm

    problems = load_problems(cfg.problems).records[: cfg.num_problems]
    job = JsonlJob(run.path / "samples.jsonl")
    todo = [i for i in range(len(problems)) if i not in job.done_indices()]
    run.log(f"sampling {cfg.generation.num_samples} solutions for {len(todo)} of {len(problems)} "
            f"problems ({len(problems) - len(todo)} already done)")
    if todo:
        policy, tokenizer = load_causal_lm(cfg.policy, for_training=False)
        generator = make_generator("hf", policy, tokenizer)
        per_call = max(1, cfg.batch_size // cfg.generation.num_samples)
        for start in range(0, len(todo), per_call):
            chunk = todo[start:start + per_call]
            samples = generator.generate([problems[i].prompt for i in chunk], cfg.generation)
            job.append({"index": i, "texts": [s.text for s in group]}
                       for i, group in zip(chunk, samples))
    checker = import_function(cfg.step_checker) if cfg.step_checker else None
    return [[solution_from_text(problems[row["index"]], text, checker) for text in row["texts"]]
            for row in job.sorted_rows()]


def load_groups(cfg: VerifyConfig, run: RunFolder) -> list[list[StepSolution]]:
    """Solutions grouped by problem, each group with an outcome label on every solution."""
    if cfg.data is None:
        return sample_solutions(cfg, run)
    loaded = load_step_solutions(cfg.data)
    groups = group_by_problem(loaded.records)[: cfg.num_problems]
    for group in groups:
        for solution in group:
            if solution.correct is None:
                raise DataSourceError(loaded.source, f"problem {solution.problem_id!r} has a "
                                      "solution without an outcome ('correct' or 'gold_answer')")
    return groups


# ----------------------------------------------------------------------------- scoring


@dataclass
class Scored:
    """All solutions (flat, problem-major) and each method's score per solution."""

    groups: list[list[StepSolution]]
    scores: dict[str, list[float]] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)


def score_verifiers(cfg: VerifyConfig, groups: list[list[StepSolution]], run: RunFolder) -> Scored:
    """Every verifier's score of every solution (a PRM once, aggregated per requested method)."""
    from alignlab.models.verifier import load_verifier

    scored = Scored(groups)
    flat = [s for group in groups for s in group]
    for ref in cfg.verifiers:
        verifier = load_verifier(ref.path, cfg.batch_size)
        name = ref.name or Path(ref.path.rstrip("/")).parent.name or verifier.spec.kind
        steps = verifier.step_scores([s.prompt for s in flat], [s.text for s in flat])
        aggs = (ref.aggregations or [verifier.spec.aggregation]) if verifier.spec.kind == "prm" \
            else ["last"]
        for agg in aggs:
            method = f"{name}/{agg}" if verifier.spec.kind == "prm" else name
            scored.scores[method] = [aggregate_step_scores(s, agg) for s in steps]
            scored.kinds[method] = verifier.spec.kind
        run.log(f"scored {len(flat)} solutions with {name} ({verifier.spec.kind})")
    return scored


def _split(values: list[float], groups: list[list[StepSolution]]) -> list[list[float]]:
    out, start = [], 0
    for group in groups:
        out.append(values[start:start + len(group)])
        start += len(group)
    return out


# ----------------------------------------------------------------------------- curves


def default_ns(m: int) -> list[int]:
    """1, 2, 4, ... up to m, and m itself."""
    ns = [2 ** k for k in range(int(math.log2(m)) + 1)]
    return ns if ns[-1] == m else ns + [m]


def accuracy_curves(scored: Scored, ns: Sequence[int], draws: int = 256) -> list[dict]:
    """One row per method and n: accuracy mean ± se over problems; verifier rows add the
    trace-error rate among correct picks when the solutions have step labels."""
    groups = scored.groups
    answers = [[s.answer for s in g] for g in groups]
    correct = [[bool(s.correct) for s in g] for g in groups]
    traces = [[trace_error(s) for s in g] for g in groups]
    has_traces = all(t is not None for g in traces for t in g)
    rows: list[dict] = []

    def add(method: str, n: int, values: list[float], extra: dict | None = None) -> None:
        stat = mean_se(values)
        rows.append({"method": method, "n": n, "accuracy": stat.mean, "se": stat.se,
                     "problems": stat.n, **(extra or {})})

    for n in ns:
        usable = [i for i, g in enumerate(groups) if len(g) >= n]
        add("oracle", n, [pass_at_n(correct[i], n) for i in usable])
        add("majority", n, [vote_accuracy(answers[i], correct[i], n, None, draws) for i in usable])
        for method, flat in scored.scores.items():
            per = _split(flat, groups)
            picks = [selection_accuracy(per[i], correct[i], n, traces[i] if has_traces else None)
                     for i in usable]
            extra = {}
            if has_traces:
                right = math.fsum(p[0] for p in picks)
                extra["trace_error_among_correct"] = math.fsum(p[1] for p in picks) / right \
                    if right else float("nan")
            add(method, n, [p[0] for p in picks], extra)
            add(f"weighted/{method}", n, [vote_accuracy(answers[i], correct[i], n, per[i], draws)
                                       for i in usable])
    return rows


def convincing_wrong(scored: Scored, k: int) -> list[dict]:
    """The k wrong-answer solutions the first PRM (else first verifier) scores highest."""
    methods = [m for m in scored.scores if scored.kinds[m] == "prm"] or list(scored.scores)
    if not methods or k == 0:
        return []
    flat = [s for g in scored.groups for s in g]
    values = scored.scores[methods[0]]
    wrong = sorted((i for i, s in enumerate(flat) if s.correct is False), key=lambda i: -values[i])
    return [{**step_solution_to_dict(replace(flat[i], labels=())), "verifier": methods[0],
             "verifier_score": values[i]} for i in wrong[:k]]


# ----------------------------------------------------------------------------- outputs


def curve_table(rows: list[dict]) -> str:
    """Markdown: methods down, n across, ``accuracy ± se`` cells."""
    ns = sorted({r["n"] for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cell = {(r["method"], r["n"]): r for r in rows}
    lines = ["| method | " + " | ".join(f"N={n}" for n in ns) + " |",
             "|---|" + "---|" * len(ns)]
    for method in methods:
        cells = []
        for n in ns:
            r = cell.get((method, n))
            cells.append("" if r is None else f"{r['accuracy']:.3f} ± {r['se']:.3f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curves(rows: list[dict], path: Path, title: str) -> None:
    """Accuracy vs N (log2 axis), one line per method with ± se bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in dict.fromkeys(r["method"] for r in rows):
        pts = [r for r in rows if r["method"] == method]
        xs = [r["n"] for r in pts]
        ys = [r["accuracy"] for r in pts]
        se = [0.0 if math.isnan(r["se"]) else r["se"] for r in pts]
        style = "--" if method.startswith("weighted/") else (":" if method == "oracle" else "-")
        ax.plot(xs, ys, style, marker="o", markersize=3, label=method)
        ax.fill_between(xs, [y - s for y, s in zip(ys, se)], [y + s for y, s in zip(ys, se)],
                        alpha=0.15)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N (solutions per problem)")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_scores(run: RunFolder, scored: Scored) -> None:
    flat = [s for g in scored.groups for s in g]
    rows = [{"problem_id": s.problem_id, "answer": s.answer, "correct": s.correct,
             "trace_error": trace_error(s), "text": s.text,
             **{m: v[i] for m, v in scored.scores.items()}} for i, s in enumerate(flat)]
    write_jsonl_atomic(run.path / "scores.jsonl", rows)


def sample_summary(groups: list[list[StepSolution]]) -> dict[str, float]:
    """Over every solution: the share with a right answer and, with step labels, the trace-error
    rate among right answers (Uesato et al. 2022) — the sampling policy's own quality."""
    flat = [s for g in groups for s in g]
    right = [s for s in flat if s.correct]
    out = {"problems": len(groups), "solutions": len(flat),
           "accuracy": mean_se(float(bool(s.correct)) for s in flat).to_dict()}
    traces = [trace_error(s) for s in right]
    if right and all(t is not None for t in traces):
        out["trace_error_among_correct"] = mean_se(float(t) for t in traces).to_dict()
    return out


def discrimination(values: Sequence[float], correct: Sequence[bool], problem_ids: Sequence) -> dict:
    """How well a verifier's scores separate right from wrong solutions, two ways.

    ``pooled_auroc``: AUROC over every solution of every problem. ``within_problem_auroc``: P(score
    of a right solution > score of a wrong one of the *same* problem), ties ½, over all such pairs
    (problems with only right or only wrong solutions add none; ``within_problem_pairs`` counts
    them). Best-of-N selection depends only on the second: a verifier that merely scores easy
    problems higher has a high pooled AUROC and picks at random within a problem (the gap Cobbe et
    al. 2021 avoid by sampling 100 solutions per problem).
    """
    by_problem: dict = {}
    for value, right, pid in zip(values, correct, problem_ids):
        by_problem.setdefault(pid, []).append((value, bool(right)))
    wins = pairs = 0.0
    for rows in by_problem.values():
        auc = binary_auroc([v for v, _ in rows], [r for _, r in rows])
        if auc is not None:
            n_right = sum(r for _, r in rows)
            wins += auc * n_right * (len(rows) - n_right)
            pairs += n_right * (len(rows) - n_right)
    return {"pooled_auroc": binary_auroc(values, [bool(c) for c in correct]),
            "within_problem_auroc": wins / pairs if pairs else None, "within_problem_pairs": int(pairs)}


def run_verify(cfg: VerifyConfig, run: RunFolder) -> list[dict]:
    """Sample or read solutions, score them, and write the accuracy-vs-N curves."""
    groups = load_groups(cfg, run)
    if not groups:
        raise DataSourceError(str(cfg.out), "verify: no problems to evaluate")
    scored = score_verifiers(cfg, groups, run)
    m = min(len(g) for g in groups)
    ns = sorted(n for n in (cfg.ns or default_ns(m)) if n <= max(len(g) for g in groups))
    rows = accuracy_curves(scored, ns, cfg.draws)
    run.write_json("curve.json", rows)
    summary = sample_summary(groups)
    flat = [s for g in groups for s in g]
    summary["verifiers"] = {m: discrimination(v, [bool(s.correct) for s in flat], [s.problem_id for s in flat])
                            for m, v in scored.scores.items()}
    run.write_json("summary.json", summary)
    run.log(f"samples: {summary}")
    table = curve_table(rows)
    (run.path / "verify.md").write_text(f"# Verification: accuracy vs N\n\n{len(groups)} problems, "
                                        f"{m} solutions each (at least)\n\n{table}\n")
    plot_curves(rows, run.path / "accuracy_vs_n.png", f"{len(groups)} problems")
    write_scores(run, scored)
    if cfg.convincing_wrong:
        picked = convincing_wrong(scored, cfg.convincing_wrong)
        write_jsonl_atomic(run.path / "convincing_wrong.jsonl", picked)
        run.log(f"wrote {len(picked)} convincing wrong-answer solutions for labelling")
    run.log("\n" + table)
    return rows
