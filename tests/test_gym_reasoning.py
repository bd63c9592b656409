"""Tests for alignlab.gym.reasoning: problems, parsing, the gold step checker, the solver's error
modes, the data files and their rates (pure Python, fast)."""

from __future__ import annotations

import json
import random

import pytest

from alignlab.data.records import Message
from alignlab.data.steps import StepSolution
from alignlab.gym.reasoning import (
    ARITHMETIC,
    COMPENSATE,
    COPY,
    EARLY_STOP,
    ERROR_MODES,
    RIGHT_ANSWER,
    SLIP_DELTAS,
    WRONG_OP,
    ErrorRates,
    ReasoningProblem,
    ReasoningPromptError,
    apply_op,
    check_solution,
    format_solution,
    generate_problems,
    outcome_reward,
    parse_problem,
    parse_step,
    process_reward,
    reasoning_dataset,
    reasoning_prompts,
    reasoning_sft_conversations,
    sample_solution,
    sample_solution_steps,
    step_labels,
    write_reasoning_data,
)
from alignlab.rl.scorers import FunctionScorer, import_function

PROBLEM = ReasoningProblem(7, (("+", 5), ("*", 2), ("-", 3)))  # 12, 24, 21
QUESTION = "Start with 7. Add 5, then multiply by 2, then subtract 3. What is the result?"


def solution(*lines: str) -> str:
    return format_solution(lines)


def ask(text: str) -> tuple[Message, ...]:
    return (Message("user", text),)


# ----------------------------------------------------------------------------- problems


def test_problem_question_values_answer():
    assert PROBLEM.question == QUESTION
    assert PROBLEM.values == (12, 24, 21)
    assert PROBLEM.answer == 21
    assert PROBLEM.solution_lines() == ["7 + 5 = 12", "12 * 2 = 24", "24 - 3 = 21",
                                        "The answer is 21."]


def test_generated_problems_respect_the_ranges():
    problems = generate_problems(0, 300)
    assert len({p.question for p in problems}) == 300
    for p in problems:
        assert 2 <= len(p.ops) <= 4
        assert all(op in "+-*" and 2 <= n <= 9 for op, n in p.ops)
        assert all(0 <= v <= 99 for v in p.values)
    assert {len(p.ops) for p in generate_problems(1, 50, min_ops=3, max_ops=3)} == {3}
    assert {op for p in problems for op, _ in p.ops} == {"+", "-", "*"}


def test_generate_problems_is_prefix_stable_and_honours_exclude():
    assert generate_problems(4, 30)[:10] == generate_problems(4, 10)
    taken = {p.question for p in generate_problems(4, 10)}
    assert not taken & {p.question for p in generate_problems(4, 30, exclude=taken)}


def test_parse_problem_round_trips():
    for p in generate_problems(2, 200):
        assert parse_problem(p.question) == p
    assert parse_problem(ask(QUESTION)) == PROBLEM


def test_parse_problem_finds_the_question_in_a_longer_prompt():
    text = f"Hi! Please solve this, one step per line.\n{QUESTION}\nShow your work."
    assert parse_problem(text) == PROBLEM
    other = "Start with 3. Add 2. What is the result?"
    assert parse_problem(f"{other} And now: {QUESTION}") == PROBLEM  # the last question counts
    prompt = (Message("user", other), Message("assistant", "5"), Message("user", QUESTION))
    assert parse_problem(prompt) == PROBLEM
    assert parse_problem(QUESTION.lower()) == PROBLEM


@pytest.mark.parametrize("text", ["What is the capital of Zorbia?", "",
                                  "Start with 7. Divide by 2. What is the result?",
                                  "Start with 7. What is the result?"])
def test_parse_problem_rejects_other_text(text):
    with pytest.raises(ReasoningPromptError, match="not a reasoning question"):
        parse_problem(text)


def test_parse_problem_needs_a_user_turn():
    with pytest.raises(ReasoningPromptError, match="no user turn"):
        parse_problem((Message("system", QUESTION),))


# ----------------------------------------------------------------------------- checker


def test_checker_all_correct():
    check = check_solution(PROBLEM, solution(*PROBLEM.solution_lines()))
    assert check.valid == (True, True, True, True)
    assert check.first_error is None and check.correct and check.complete
    assert not check.trace_error and check.fully_correct and check.answer == "21"


def test_checker_arithmetic_slip_carried_forward():
    check = check_solution(PROBLEM, solution("7 + 5 = 12", "12 * 2 = 25", "25 - 3 = 22",
                                             "The answer is 22."))
    assert check.valid == (True, False, True, True)  # later steps are locally valid
    assert check.first_error == 1 and check.answer == "22"
    assert not check.correct and not check.trace_error


def test_checker_right_answer_after_a_wrong_step():
    check = check_solution(PROBLEM, solution("7 + 5 = 12", "12 * 2 = 25", "25 - 3 = 22",
                                             "The answer is 21."))
    assert check.valid == (True, False, True, False)
    assert check.correct and check.trace_error and not check.fully_correct


def test_checker_compensating_slip():
    check = check_solution(PROBLEM, solution("7 + 5 = 13", "13 * 2 = 26", "26 - 3 = 21",
                                             "The answer is 21."))
    assert check.valid == (False, True, False, True)
    assert check.first_error == 0 and check.correct and check.trace_error


def test_checker_copy_slip_and_wrong_operation():
    copy = check_solution(PROBLEM, solution("7 + 5 = 12", "13 * 2 = 26", "26 - 3 = 23",
                                            "The answer is 23."))
    assert copy.valid == (True, False, True, True) and not copy.correct
    wrong = check_solution(PROBLEM, solution("7 + 5 = 12", "12 + 2 = 14", "14 - 3 = 11",
                                             "The answer is 11."))
    assert wrong.valid == (True, False, True, True) and wrong.first_error == 1
    operand = check_solution(PROBLEM, solution("7 + 5 = 12", "12 * 3 = 36", "36 - 3 = 33",
                                               "The answer is 33."))
    assert operand.valid == (True, False, True, True)


def test_checker_early_stop_and_truncation():
    early = check_solution(PROBLEM, solution("7 + 5 = 12", "The answer is 12."))
    assert early.valid == (True, False) and early.first_error == 1
    assert not early.correct and not early.complete
    truncated = check_solution(PROBLEM, solution("7 + 5 = 12", "12 * 2 = 24"))
    assert truncated.valid == (True, True)
    assert truncated.first_error == 2  # the first missing step
    assert truncated.answer is None and not truncated.correct and not truncated.fully_correct


def test_checker_extra_steps():
    after = check_solution(PROBLEM, solution(*PROBLEM.solution_lines(), "21 + 0 = 21"))
    assert after.valid == (True, True, True, True, False)
    assert after.correct and after.trace_error and after.first_error == 4
    inserted = check_solution(PROBLEM, solution("7 + 5 = 12", "12 * 2 = 24", "24 - 3 = 21",
                                                "21 + 1 = 22", "The answer is 22."))
    assert inserted.valid == (True, True, True, False, False) and not inserted.complete


@pytest.mark.parametrize("text", ["", "hello world\n\n???", "The answer is", "= = =\n+ - *",
                                  "9" * 5000 + " + 1 = 2", "7 + 5 = 12\n" * 40,
                                  "\x00\u2028 7 + 5 = 12 \u00a0", "The answer is 21. " * 3])
def test_checker_never_raises_on_garbage(text):
    check = check_solution(PROBLEM, text)
    assert len(check.valid) == len(check.steps)
    assert not check.fully_correct


def test_checker_garbage_lines_are_invalid():
    check = check_solution(PROBLEM, "hello world\n\n???")
    assert check.steps == ("hello world", "???") and check.valid == (False, False)
    assert check.first_error == 0 and check.answer is None and not check.correct
    empty = check_solution(PROBLEM, "")
    assert empty.steps == () and empty.first_error == 0 and not empty.correct


def test_checker_accepts_steps_and_loose_spacing():
    lines = ["7+5=12", "  12 *2 = 24", "24 - 3=21", "the answer is 21"]
    assert check_solution(PROBLEM, lines).fully_correct
    assert check_solution(PROBLEM, "\n\n".join(lines)).valid == (True,) * 4


# ----------------------------------------------------------------------------- scorers


def test_gold_scorers():
    prompt = ask(QUESTION)
    right = solution(*PROBLEM.solution_lines())
    trace = solution("7 + 5 = 13", "13 * 2 = 26", "26 - 3 = 21", "The answer is 21.")
    wrong = solution("7 + 5 = 12", "The answer is 12.")
    assert [outcome_reward(prompt, c) for c in (right, trace, wrong)] == [1.0, 1.0, 0.0]
    assert [process_reward(prompt, c) for c in (right, trace, wrong)] == [1.0, 0.0, 0.0]
    assert step_labels(prompt, trace) == (False, True, False, True)
    scorer = FunctionScorer(import_function("alignlab.gym.reasoning:outcome_reward"), "outcome")
    assert scorer.score([prompt, prompt], [right, wrong]) == [1.0, 0.0]
    with pytest.raises(ReasoningPromptError):
        outcome_reward(ask("What is the capital of Zorbia?"), right)


# ----------------------------------------------------------------------------- solver


def test_exact_solver():
    rng = random.Random(0)
    for p in generate_problems(5, 100):
        text = sample_solution(p, rng, ErrorRates.none())
        assert text == format_solution(p.solution_lines())
        assert check_solution(p, text).fully_correct


@pytest.fixture(scope="module")
def sampled():
    """(problem, solver steps, check) for 400 problems × 6 samples with the default rates."""
    rng = random.Random(123)
    out = []
    for p in generate_problems(9, 400):
        for _ in range(6):
            steps = sample_solution_steps(p, rng)
            out.append((p, steps, check_solution(p, [s.text for s in steps])))
    return out


def test_solver_produces_every_error_mode(sampled):
    seen = {s.error for _, steps, _ in sampled for s in steps}
    assert seen == {None, *ERROR_MODES}


def test_checker_flags_exactly_the_injected_errors(sampled):
    for p, steps, check in sampled:
        assert check.valid == tuple(s.error is None for s in steps), (p.question, steps)
        injected = [i for i, s in enumerate(steps) if s.error]
        expected_first = injected[0] if injected else None
        assert check.first_error == expected_first
        assert check.complete == (steps[-1].error != EARLY_STOP)


def _errors(steps):
    return [s.error for s in steps if s.error]


def test_error_mode_consequences(sampled):
    for p, steps, check in sampled:
        errors = _errors(steps)
        for i, s in enumerate(steps):
            if s.error == RIGHT_ANSWER:
                assert i == len(p.ops) and check.correct and check.trace_error
                assert any(e != RIGHT_ANSWER for e in errors)
            elif s.error == COMPENSATE:
                assert s.value == p.values[i]
                assert ARITHMETIC in [x.error for x in steps[:i]]
            elif s.error == EARLY_STOP:
                assert 0 < i < len(p.ops) and i == len(steps) - 1
            elif s.error == ARITHMETIC:
                a, op, b, c = parse_step(s.text)
                slip = c - apply_op(a, op, b)
                assert slip in SLIP_DELTAS or c == int(str(apply_op(a, op, b))[::-1])
                assert 0 <= c <= 199
        if errors in ([ARITHMETIC], [COPY]):  # a lone slip cannot be undone: + - * are injective
            assert not check.correct


def test_trace_errors_come_from_the_solver(sampled):
    traces = [steps for _, steps, check in sampled if check.trace_error]
    assert traces
    assert any(RIGHT_ANSWER in _errors(s) for s in traces)
    assert any(COMPENSATE in _errors(s) for s in traces)
    wrong_op = [check for _, steps, check in sampled if WRONG_OP in _errors(steps)]
    assert wrong_op and not any(c.fully_correct for c in wrong_op)


def test_problem_difficulty_varies(sampled):
    by_problem: dict[str, list[bool]] = {}
    for p, _, check in sampled:
        by_problem.setdefault(p.question, []).append(check.correct)
    accuracy = [sum(v) / len(v) for v in by_problem.values()]
    assert sum(a == 1.0 for a in accuracy) > 0.2 * len(accuracy)  # easy problems
    assert sum(a <= 1 / 3 for a in accuracy) > 0.05 * len(accuracy)  # hard problems


def test_error_rates_validate():
    with pytest.raises(ValueError, match="arithmetic"):
        ErrorRates(arithmetic=1.5)
    with pytest.raises(ValueError, match="difficulty_spread"):
        ErrorRates(difficulty_spread=-1.0)


# ----------------------------------------------------------------------------- data


def test_reasoning_dataset_records():
    rows = reasoning_dataset(3, 20, 4)
    assert len(rows) == 80 and all(isinstance(r, StepSolution) for r in rows)
    assert [r.problem_id for r in rows[:5]] == ["r3-0"] * 4 + ["r3-1"]
    for r in rows:
        problem = parse_problem(r.prompt)
        check = check_solution(problem, r.text)
        assert r.labels == tuple(int(v) for v in check.valid) and r.label_type == "binary"
        assert r.correct == check.correct and r.answer == check.answer
        assert r.gold_answer == str(problem.answer)


def test_determinism_for_a_seed():
    assert reasoning_dataset(3, 20, 4) == reasoning_dataset(3, 20, 4)
    assert reasoning_dataset(3, 20, 4) != reasoning_dataset(4, 20, 4)
    assert reasoning_sft_conversations(3, 10) == reasoning_sft_conversations(3, 10)
    assert reasoning_prompts(3, 10) == reasoning_prompts(3, 10)
    p = generate_problems(3, 1)[0]
    assert sample_solution(p, random.Random(5)) == sample_solution(p, random.Random(5))


def test_sft_and_prompt_rows():
    conv = reasoning_sft_conversations(1, 5)
    assert [m.role for m in conv[0].messages] == ["user", "assistant"]
    assert parse_problem(conv[0].messages[:1]) == generate_problems(1, 1)[0]
    row = reasoning_prompts(1, 3)[2]
    problem = generate_problems(1, 3)[2]
    assert row == {"prompt": problem.question, "gold_answer": str(problem.answer),
                   "problem_id": "r1-2"}


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_write_reasoning_data_small(tmp_path):
    info = write_reasoning_data(tmp_path, seed=2, n_train=40, n_test=10, samples=3,
                                test_samples=8, n_sft=50, n_prompts_train=60)
    assert info["counts"] == {"train_steps.jsonl": 120, "test_steps.jsonl": 80, "sft.jsonl": 50,
                              "prompts_train.jsonl": 60, "prompts_test.jsonl": 10}
    assert json.loads((tmp_path / "reasoning.json").read_text()) == info
    train = read_jsonl(tmp_path / "train_steps.jsonl")
    test = read_jsonl(tmp_path / "test_steps.jsonl")
    sft = read_jsonl(tmp_path / "sft.jsonl")
    prompts_train = read_jsonl(tmp_path / "prompts_train.jsonl")
    prompts_test = read_jsonl(tmp_path / "prompts_test.jsonl")
    train_side = ({r["prompt"][-1]["content"] for r in train}
                  | {r["messages"][0]["content"] for r in sft}
                  | {r["prompt"] for r in prompts_train})
    test_side = {r["prompt"][-1]["content"] for r in test} | {r["prompt"] for r in prompts_test}
    assert len(test_side) == 10 and not train_side & test_side
    assert {r["problem_id"] for r in test} == {r["problem_id"] for r in prompts_test}
    assert not {r["problem_id"] for r in test} & {r["problem_id"] for r in train}
    assert set(train[0]) >= {"prompt", "steps", "labels", "label_type", "answer", "correct",
                             "gold_answer", "problem_id"}
    assert sft[0]["messages"][1]["role"] == "assistant"


@pytest.fixture(scope="module")
def default_info(tmp_path_factory):
    return write_reasoning_data(tmp_path_factory.mktemp("reasoning"), seed=0)


def test_default_rates_are_sensible(default_info):
    for split in ("train", "test"):
        rates = default_info[split]
        assert 0.3 < rates["fraction_correct"] < 0.7, rates
        assert 0.3 < rates["fraction_fully_correct"] < 0.65, rates
        assert 0.02 < rates["trace_error_rate_among_correct"] < 0.35, rates
        assert 0.25 < rates["fraction_any_step_error"] < 0.7, rates
        assert 0.2 < rates["mean_first_error"] < 2.0, rates
    voting = default_info["test_voting"]
    assert 0.7 < voting["majority_accuracy"] < 1.0 and voting["pass_at_n"] > 0.9
    assert default_info["counts"]["test_steps.jsonl"] == 100 * 64
    assert default_info["counts"]["train_steps.jsonl"] == 600 * 4
