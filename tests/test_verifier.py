"""ORM / PRM: losses and aggregation against hand-derived numbers, step encoding, one forward per
solution, and both stages end to end on a tiny model."""

import dataclasses
import json
import math

import pytest
import torch
from test_train_stages import _tokenizer, _train, tiny_model  # noqa: F401

from alignlab.data.records import Message
from alignlab.data.step_tokenize import encode_steps, join_steps, split_steps, step_token_ends
from alignlab.losses.process import (
    aggregate_step_scores,
    binary_auroc,
    first_error_metrics,
    orm_loss,
    step_loss,
    step_probabilities,
    step_targets,
)

# ----------------------------------------------------------------------------- pure functions


def test_step_targets_table():
    assert step_targets([-1, 0, 1], "ternary", "three_class") == [0.0, 1.0, 2.0]
    assert step_targets([0, 1], "binary", "three_class") == [0.0, 2.0]
    assert step_targets([-1, 0, 1], "ternary", "binary") == [0.0, 0.0, 1.0]
    assert step_targets([-1, 0, 1], "ternary", "binary", neutral_as_positive=True) == [0, 1, 1]
    assert step_targets([-1, 0, 1], "ternary", "soft") == [0.0, 0.5, 1.0]
    assert step_targets([0.0, 0.25, 1.0], "soft", "binary") == [0.0, 1.0, 1.0]  # hard estimate
    assert step_targets([0.0, 0.25], "soft", "soft") == [0.0, 0.25]
    with pytest.raises(ValueError, match="three_class"):
        step_targets([0.5], "soft", "three_class")


def test_step_loss_by_hand():
    # BCE: z=0, y=1 -> ln 2; z=2, y=0 -> ln(1 + e^2) = 2.126928
    losses = step_loss(torch.tensor([[0.0], [2.0]]), torch.tensor([1.0, 0.0]))
    assert losses.tolist() == pytest.approx([math.log(2), 2.1269280110429727], abs=1e-6)
    # soft target y = 0.25 at z = 0: still ln 2 (BCE at p = 1/2 is ln 2 for any y)
    assert step_loss(torch.tensor([0.0]), torch.tensor([0.25])).item() == pytest.approx(math.log(2))
    # 3-class: uniform logits -> ln 3; logits (1, 0, 0), class 0 -> ln(1 + 2/e) = 0.551445
    three = step_loss(torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]), torch.tensor([2.0, 0.0]))
    assert three.tolist() == pytest.approx([math.log(3), 0.5514447139320511], abs=1e-6)
    # ORM: z = ln 3 (p = 3/4) with y = 1 -> -ln(3/4) = 0.287682
    assert orm_loss(torch.tensor([[math.log(3)]]), torch.tensor([1.0])).item() == \
        pytest.approx(0.2876820724517809, abs=1e-6)
    with pytest.raises(ValueError, match="targets"):
        step_loss(torch.tensor([[0.0]]), torch.tensor([1.5]))


def test_step_probabilities():
    assert step_probabilities(torch.tensor([[0.0], [math.log(3)]])).tolist() == \
        pytest.approx([0.5, 0.75])
    logits = torch.log(torch.tensor([[0.2, 0.3, 0.5]]))
    assert step_probabilities(logits).item() == pytest.approx(0.5)
    assert step_probabilities(logits, neutral_as_positive=True).item() == pytest.approx(0.8)


def test_aggregations_by_hand():
    scores = [0.9, 0.5, 0.8]
    assert aggregate_step_scores(scores, "product") == pytest.approx(0.36)
    assert aggregate_step_scores(scores, "min") == 0.5
    assert aggregate_step_scores(scores, "last") == 0.8
    assert aggregate_step_scores(scores, "mean") == pytest.approx(2.2 / 3)
    assert aggregate_step_scores([], "min") == 0.0
    with pytest.raises(ValueError, match="aggregation"):
        aggregate_step_scores(scores, "max")


def test_auroc_by_hand():
    # positives 0.35 (beats 0.1, loses to 0.4) and 0.8 (beats both): 3 of 4 pairs
    assert binary_auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert binary_auroc([0.5, 0.5], [1, 0]) == 0.5
    assert binary_auroc([0.5, 0.7], [1, 1]) is None


def test_discrimination_pooled_and_within_problem_by_hand():
    from alignlab.eval.verify import discrimination

    # a: right 0.9 < wrong 0.95; b: right 0.1 < wrong 0.2, 0.3; c: right 0.5 = wrong 0.5; d: right only.
    values = [0.9, 0.95, 0.2, 0.1, 0.3, 0.5, 0.5, 0.7]
    correct = [1, 0, 0, 1, 0, 1, 0, 1]
    ids = ["a", "a", "b", "b", "b", "c", "c", "d"]
    out = discrimination(values, correct, ids)
    # within: pairs a 1 (lost), b 2 (lost), c 1 (tie, ½) -> 0.5 / 4; d has no wrong solution
    assert out["within_problem_auroc"] == 0.125 and out["within_problem_pairs"] == 4
    # pooled over 4 right x 4 wrong: 0.9 beats 0.2, 0.3, 0.5 (3); 0.1 none; 0.5 beats 0.2, 0.3 and
    # ties 0.5 (2.5); 0.7 beats 0.2, 0.3, 0.5 (3) -> 8.5 / 16
    assert out["pooled_auroc"] == 8.5 / 16
    assert discrimination([0.3, 0.4], [1, 1], ["a", "a"]) == {
        "pooled_auroc": None, "within_problem_auroc": None, "within_problem_pairs": 0}


def test_first_error_localisation_by_hand():
    scores = [[0.9, 0.2, 0.1],   # true first error 1 -> predicted 1 (exact)
              [0.3, 0.9, 0.9],   # true 2 -> predicted 0 (early)
              [0.9, 0.9, 0.9],   # true 0 -> none (missed)
              [0.9, 0.9, 0.8],   # clean, passed
              [0.9, 0.4, 0.9]]   # clean, flagged
    out = first_error_metrics(scores, [1, 2, 0, None, None])
    assert out == pytest.approx({"exact": 1 / 3, "early": 1 / 3, "late": 0.0, "missed": 1 / 3,
                                 "clean_passed": 0.5})


# ----------------------------------------------------------------------------- encoding


def test_join_and_split_steps_round_trip():
    text, ends = join_steps(["a 1", "b 22", "c"], "\n", None)
    assert text == "a 1\nb 22\nc" and ends == [3, 8, 10]
    assert split_steps(text) == ["a 1", "b 22", "c"]
    tagged, ends = join_steps(["x", "y"], "\n", " ki")
    assert tagged == "x ki\ny ki" and ends == [4, 9]
    assert split_steps(tagged, "\n", " ki") == ["x", "y"]


def test_encode_steps_scores_each_steps_last_character():
    tok = _tokenizer()
    prompt = (Message("user", "add"),)
    enc = encode_steps(tok, prompt, ["ab", "cde", "f"], max_length=64, max_prompt_length=32)
    ids = enc.input_ids
    assert [tok.convert_ids_to_tokens(ids[p]) for p in enc.positions] == ["b", "e", "f"]
    # this template ends every turn with a newline; eos is appended as for any completion
    assert ids[enc.completion_start:] == tok("ab\ncde\nf\n", add_special_tokens=False)[
        "input_ids"] + [tok.eos_token_id]
    short = encode_steps(tok, prompt, ["ab", "cde", "f"], max_length=enc.completion_start + 4,
                         max_prompt_length=32)
    assert len(short.positions) == 1 and short.dropped == 2


def test_step_token_ends_on_sampled_tokens():
    tok = _tokenizer()
    ids = tok("ab\ncd", add_special_tokens=False)["input_ids"]
    assert step_token_ends(tok, ids, [2, 5]) == [1, 4]


def test_one_forward_scores_every_step_as_a_forward_per_step(tiny_model):  # noqa: F811
    from alignlab.config import ModelSettings
    from alignlab.models.loading import load_reward_model
    from alignlab.models.verifier import (
        VerifierSpec,
        collate_positions,
        encode_solution,
        score_encoded,
    )

    model, tok = load_reward_model(ModelSettings(path=tiny_model), for_training=False)
    spec = VerifierSpec(kind="prm", max_length=64, max_prompt_length=32)
    items = [encode_solution(tok, spec, (Message("user", q),), steps)
             for q, steps in [("hi", ["ab", "cd", "e"]), ("q", ["xyz", "w"])]]
    together = score_encoded(model, items, tok.pad_token_id, batch_size=8)
    for item, scores in zip(items, together):
        alone = []
        for p in item.positions:  # the causal prefix up to the step's token, one forward each
            prefix = type(item)(item.input_ids[: p + 1], item.completion_start, [p])
            alone += score_encoded(model, [prefix], tok.pad_token_id, batch_size=1)[0]
        assert scores == pytest.approx(alone, abs=1e-5)
    batch = collate_positions(items, tok.pad_token_id)
    assert batch["rows"].tolist() == [0, 0, 0, 1, 1]


# ----------------------------------------------------------------------------- stages


def _step_rows(n, seed=0):
    """Solutions whose step is right iff it contains the digit 1 (wrong steps contain 0); the
    outcome is right iff every step is."""
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        labels = [int(rng.random() < 0.6) for _ in range(rng.randint(2, 4))]
        steps = [f"{rng.choice('abcd')}{'1' if y else '0'}{rng.choice('xyz')}" for y in labels]
        rows.append({"prompt": f"q{i % 7}", "steps": steps, "labels": labels,
                     "label_type": "binary", "correct": all(labels), "problem_id": f"p{i}"})
    return rows


def _run(runner, cfg):
    """Run a stage runner in its run folder; returns (result, run folder path)."""
    from alignlab.runs import RunFolder

    run = RunFolder(cfg.out, cfg, echo=False)
    try:
        return runner(cfg, run), run.path
    finally:
        run.close()


def _verifier_config(tiny_model, tmp_path, stage, rows, **extra):  # noqa: F811
    from alignlab.config import ModelSettings
    from alignlab.data.step_readers import StepDataSettings
    from alignlab.train.verifier import VerifierConfig

    data = tmp_path / f"{stage}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return VerifierConfig(stage=stage, model=ModelSettings(path=tiny_model), out=str(tmp_path / stage),
                          data=StepDataSettings(path=str(data), format="steps"), eval_fraction=0.2,
                          train=_train(max_steps=60, learning_rate=3e-3, batch_size=8), **extra)


@pytest.mark.slow
def test_prm_stage_learns_step_labels_and_saves_a_verifier(tiny_model, tmp_path):  # noqa: F811
    from alignlab.models.verifier import load_verifier
    from alignlab.train.verifier import run_verifier

    cfg = _verifier_config(tiny_model, tmp_path, "prm", _step_rows(300))
    folder, path = _run(run_verifier, cfg)
    metrics = json.loads((path / "eval.json").read_text())
    assert metrics["step_auroc"] > 0.9 and metrics["step_accuracy"] > 0.8
    assert metrics["solutions"] == 60
    verifier = load_verifier(folder)
    prompt = (Message("user", "q1"),)
    good, bad = verifier.step_scores([prompt, prompt], ["a1x\nb1y", "a1x\nb0y"])
    assert good[1] > 0.5 > bad[1]
    assert verifier.score([prompt], ["a1x\nb1y"])[0] == pytest.approx(good[0] * good[1])


@pytest.mark.slow
def test_orm_stage_learns_outcomes(tiny_model, tmp_path):  # noqa: F811
    from alignlab.train.verifier import run_verifier

    rows = _step_rows(300, seed=1) + [{"prompt": "q", "steps": ["a1x"], "problem_id": "nolabel"}]
    cfg = _verifier_config(tiny_model, tmp_path, "orm", rows)
    _, path = _run(run_verifier, cfg)
    metrics = json.loads((path / "eval.json").read_text())
    assert metrics["solution_auroc"] > 0.8
    assert "step_auroc" not in metrics
    assert "skipped_unlabelled=1" in (path / "log.txt").read_text()


# ----------------------------------------------------------------------------- verify


def _solutions_file(tmp_path):
    """Problem a: answers 3 (right), 3, 5, 7; problem b: 4 (right), 6, 6, 8."""
    rows = []
    for pid, gold, answers in [("a", "3", ["3", "3", "5", "7"]), ("b", "4", ["4", "6", "6", "8"])]:
        for k, ans in enumerate(answers):
            steps = [f"{'a1x' if ans == gold else 'a0x'}", f"The answer is {ans}."]
            rows.append({"prompt": f"q{pid}", "steps": steps, "gold_answer": gold,
                         "problem_id": pid, "labels": [int(ans == gold), 1],
                         "label_type": "binary"})
    path = tmp_path / "solutions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.slow
def test_verify_stage_curves_and_convincing_wrong(tiny_model, tmp_path):  # noqa: F811
    from alignlab.eval.verify import run_verify
    from alignlab.stages import build_stage_config
    from alignlab.train.verifier import run_verifier

    prm = _verifier_config(tiny_model, tmp_path, "prm", _step_rows(40))
    folder, _ = _run(run_verifier, prm)
    cfg = build_stage_config({"stage": "verify", "out": str(tmp_path / "verify"),
                              "data": {"path": str(_solutions_file(tmp_path))},
                              "verifiers": [{"path": str(folder), "name": "prm",
                                             "aggregations": ["product", "min"]}],
                              "convincing_wrong": 3, "draws": 64}, "test")
    rows, path = _run(run_verify, cfg)
    cell = {(r["method"], r["n"]): r["accuracy"] for r in rows}
    assert sorted({r["n"] for r in rows}) == [1, 2, 4]
    assert cell[("oracle", 1)] == (2 / 4 + 1 / 4) / 2 and cell[("oracle", 4)] == 1.0
    # n = 4: problem a's majority is "3" (right); problem b's is "6" (wrong)
    assert cell[("majority", 4)] == 0.5
    assert {"prm/product", "prm/min", "weighted/prm/min"} <= {m for m, _ in cell}
    picked = [json.loads(line) for line in (path / "convincing_wrong.jsonl").open()]
    assert len(picked) == 3 and all(not p["correct"] for p in picked)
    assert [p["verifier_score"] for p in picked] == sorted((p["verifier_score"] for p in picked),
                                                            reverse=True)
    assert "labels" not in picked[0]
    summary = json.loads((path / "summary.json").read_text())
    assert summary["accuracy"]["mean"] == 3 / 8 and summary["trace_error_among_correct"]["mean"] == 0
    # a: 2 right x 2 wrong, b: 1 right x 3 wrong -> 7 within-problem pairs per verifier method
    assert set(summary["verifiers"]) == {"prm/product", "prm/min"}
    assert all(v["within_problem_pairs"] == 7 for v in summary["verifiers"].values())
    assert (path / "accuracy_vs_n.png").stat().st_size > 1000


@pytest.mark.slow
def test_verify_samples_from_a_policy_and_resumes(tiny_model, tmp_path):  # noqa: F811
    from alignlab.eval.verify import run_verify
    from alignlab.stages import build_stage_config

    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps({"prompt": f"q{i}", "gold_answer": "4",
                                            "problem_id": f"p{i}"}) + "\n" for i in range(3)))
    raw = {"stage": "verify", "out": str(tmp_path / "v"), "problems": {"path": str(problems)},
           "policy": {"path": tiny_model}, "batch_size": 4,
           "generation": {"max_new_tokens": 4, "num_samples": 2, "seed": 3}}
    cfg = build_stage_config(raw, "test")
    _, path = _run(run_verify, cfg)
    samples = path / "samples.jsonl"
    first = samples.read_text().splitlines()
    assert [json.loads(line)["index"] for line in first] == [0, 1, 2]
    samples.write_text(first[0] + "\n" + first[1][:10])  # killed while writing the second row
    _run(run_verify, build_stage_config(raw, "test"))
    again = samples.read_text().splitlines()
    assert again[0] == first[0] and len(again) == 3
    assert "for 2 of 3 problems (1 already done)" in (path / "log.txt").read_text()


@pytest.mark.slow
def test_three_class_prm_on_ternary_labels(tiny_model, tmp_path):  # noqa: F811
    from alignlab.models.verifier import load_verifier
    from alignlab.train.verifier import run_verifier

    rows = _step_rows(60, seed=2)
    for row in rows:  # ternary: wrong -> -1, right -> +1, and every third step neutral
        row["labels"] = [0 if i % 3 == 2 else (1 if y else -1) for i, y in enumerate(row["labels"])]
        row["label_type"] = "ternary"
    cfg = _verifier_config(tiny_model, tmp_path, "prm", rows, target="three_class")
    cfg.train.max_steps = 10
    folder, _ = _run(run_verifier, cfg)
    verifier = load_verifier(folder)
    assert verifier.model.config.num_labels == 3 and verifier.spec.target == "three_class"
    prompt = (Message("user", "q1"),)
    strict = verifier.step_scores([prompt], ["a1x\nb0y"])[0]
    lenient = load_verifier(folder)
    lenient.spec = dataclasses.replace(lenient.spec, neutral_as_positive=True)
    loose = lenient.step_scores([prompt], ["a1x\nb0y"])[0]
    assert all(0 < s < 1 for s in strict) and all(b > a for a, b in zip(strict, loose))


def test_a_step_checker_that_splits_steps_differently_is_an_error():
    from alignlab.data.steps import Problem
    from alignlab.eval.verify import solution_from_text

    problem = Problem((Message("user", "q"),), "3", "p")
    solution = solution_from_text(problem, "a\n\nThe answer is 3.", lambda p, t: (True, True))
    assert solution.labels == (1.0, 1.0) and solution.correct
    with pytest.raises(ValueError, match="step_checker gave 3 labels for the 2 steps"):
        solution_from_text(problem, "a\nThe answer is 3.", lambda p, t: (True, True, False))
