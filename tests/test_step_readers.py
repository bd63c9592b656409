"""Step-level data readers: hand-written rows in each public layout, and the real GSM8K files."""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path

import pytest
from pydantic import ValidationError
from test_data_readers import DATA, shared

from alignlab.config import DataSettings
from alignlab.data.errors import DataSourceError, Location, RecordError
from alignlab.data.loading import load_records
from alignlab.data.records import Message
from alignlab.data.step_readers import (
    StepDataSettings,
    detect_step_format,
    group_by_problem,
    load_step_solutions,
    read_prm800k,
    text_id,
)
from alignlab.data.steps import StepSolution, step_solution_to_dict

WHERE = Location("prm.jsonl", 1)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def load(tmp_path: Path, rows: list, name: str = "d.jsonl", **kw):
    return load_step_solutions(StepDataSettings(path=str(write_jsonl(tmp_path / name, rows)), **kw))


def raises_at(tmp_path: Path, rows: list, where: str, field: str, problem: str, **kw) -> None:
    """Loading ``rows`` fails at ``file:line`` ``where`` naming ``field``, with ``problem``."""
    with pytest.raises(RecordError) as info:
        load(tmp_path, rows, **kw)
    assert str(info.value).startswith(f"{tmp_path / where}: field '{field}':")
    assert problem in str(info.value)


# ----------------------------------------------------------------------------- PRM800K fixtures


def completion(text: str, rating: int | None) -> dict:
    return {"text": text, "rating": rating, "flagged": None}


PRM_QUESTION = {
    "problem": "What is the value of $2 + 3 \\cdot 4$?",
    "ground_truth_solution": "Multiplication first: $3 \\cdot 4 = 12$, so $2 + 12 = \\boxed{14}$.",
    "ground_truth_answer": "14",
    "pre_generated_steps": ["I follow the order of operations.", "First, 2 + 3 = 5.",
                            "Then 5 * 4 = 20.", "# Answer\n\n20"],
    "pre_generated_answer": "20",
    "pre_generated_verifier_score": 0.0123,
}

# phase 2: one pre-generated completion per step; the labeller stops at the first error
PRM_PHASE2 = {
    "labeler": "e90a38f3-3135-4465-87af-3e6322e3d772", "timestamp": "2022-08-17T16:04:25.426963",
    "generation": 9, "is_quality_control_question": False, "is_initial_screening_question": False,
    "question": PRM_QUESTION,
    "label": {"steps": [
        {"completions": [completion("I follow the order of operations.", 1)],
         "human_completion": None, "chosen_completion": 0},
        {"completions": [completion("First, 2 + 3 = 5.", -1)],
         "human_completion": None, "chosen_completion": None},
    ], "total_time": 53413, "finish_reason": "found_error"},
}

# phase 1: several completions per step, one chosen, one step written by the labeller
PRM_PHASE1 = {
    "labeler": "340d89bc-f5b7-45e9-b272-909ba68ee363", "timestamp": "2022-07-17T19:25:03.937438",
    "generation": None, "is_quality_control_question": False,
    "is_initial_screening_question": False, "question": PRM_QUESTION,
    "label": {"steps": [
        {"completions": [completion("I follow the order of operations.", 1),
                         completion("I could just add from left to right.", 0),
                         completion("2 + 3 is 5, then times 4 is 20.", -1)],
         "human_completion": None, "chosen_completion": 0},
        {"completions": [completion("So 2 + 3 = 5 first.", -1),
                         completion("The sum is 5, so 5 * 4 = 20.", -1),
                         completion("Let me think.", None)],
         "human_completion": {"text": "Multiplication comes first: 3 * 4 = 12, and 2 + 12 = 14.",
                              "rating": None, "source": "human", "flagged": False,
                              "corrected_rating": None},
         "chosen_completion": None},
        {"completions": [completion("# Answer\n\n14", 1)],
         "human_completion": None, "chosen_completion": 0},
    ], "total_time": 312104, "finish_reason": "solution"},
}


def prm_row(steps: list, finish: str = "solution") -> dict:
    row = copy.deepcopy(PRM_PHASE2)
    row["label"].update(steps=steps, finish_reason=finish)
    return row


def test_prm800k_phase2_stops_at_first_error(tmp_path):
    give_up, bad = prm_row([], "give_up"), prm_row([], "bad_problem")
    data = load(tmp_path, [PRM_PHASE2, give_up, bad], format="prm800k")
    assert data.rows_read == 3 and data.bad.skipped == 0
    assert data.notes == {"prm800k_bad_problem_skipped": 1, "prm800k_give_up_skipped": 1}
    [record] = data.records
    assert record == StepSolution(
        (Message("user", PRM_QUESTION["problem"]),),
        ("I follow the order of operations.", "First, 2 + 3 = 5."), (1.0, -1.0), "ternary",
        None, False, "14", text_id(PRM_QUESTION["problem"]))


def test_prm800k_phase1_path_with_human_completion():
    notes: Counter = Counter()
    [record] = read_prm800k(PRM_PHASE1, WHERE, notes)
    assert record.steps == ("I follow the order of operations.",
                            "Multiplication comes first: 3 * 4 = 12, and 2 + 12 = 14.",
                            "# Answer\n\n14")
    assert record.labels == (1.0, 1.0, 1.0) and record.label_type == "ternary"
    assert (record.answer, record.gold_answer, record.correct) == ("14", "14", True)
    assert notes == {"prm800k_human_completion": 1}


def test_prm800k_unchosen_step_ends_on_its_first_error():
    steps = [{"completions": [completion("Step A.", 0), completion("Step B.", -1),
                              completion("Step C.", -1)],
              "human_completion": None, "chosen_completion": None},
             {"completions": [completion("Never reached.", 1)], "chosen_completion": 0}]
    [record] = read_prm800k(prm_row(steps, "found_error"), WHERE, Counter())
    assert record.steps == ("Step B.",) and record.labels == (-1.0,) and record.correct is False
    steps[0]["completions"] = [completion("Only neutral.", 0)]
    [record] = read_prm800k(prm_row(steps, "found_error"), WHERE, Counter())
    assert record.steps == ("Only neutral.",) and record.labels == (0.0,) and record.correct is None


def test_prm800k_alternatives(tmp_path):
    data = load(tmp_path, [PRM_PHASE1, PRM_PHASE2], prm800k_alternatives=True)
    assert data.format == "prm800k"
    assert data.notes == {"prm800k_alternative": 4, "prm800k_human_completion": 1,
                          "prm800k_unrated_alternative_skipped": 1}
    path, *alternatives = data.records[:5]
    assert path.labels == (1.0, 1.0, 1.0)
    first = "I follow the order of operations."
    assert [(r.steps, r.labels, r.correct) for r in alternatives] == [
        (("I could just add from left to right.",), (0.0,), None),
        (("2 + 3 is 5, then times 4 is 20.",), (-1.0,), False),
        ((first, "So 2 + 3 = 5 first."), (1.0, -1.0), False),
        ((first, "The sum is 5, so 5 * 4 = 20."), (1.0, -1.0), False),
    ]
    assert data.records[5].steps == (first, "First, 2 + 3 = 5.") and len(data.records) == 6
    assert len({r.problem_id for r in data.records}) == 1
    assert len(group_by_problem(data.records)) == 1


def test_prm800k_errors_name_the_field(tmp_path):
    unrated = copy.deepcopy(PRM_PHASE1)
    unrated["label"]["steps"][2]["completions"][0]["rating"] = None
    raises_at(tmp_path, [PRM_PHASE2, unrated], "d.jsonl:2", "label.steps[2].completions[0].rating",
              "no rating")
    wrong = copy.deepcopy(PRM_PHASE1)
    wrong["label"]["steps"][0]["chosen_completion"] = 3
    raises_at(tmp_path, [wrong], "d.jsonl:1", "label.steps[0].chosen_completion",
              "expected an index below 3")
    odd = copy.deepcopy(PRM_PHASE2)
    odd["label"]["steps"][0]["completions"][0]["rating"] = 2
    raises_at(tmp_path, [odd], "d.jsonl:1", "label.steps[0].completions[0].rating",
              "expected -1, 0 or 1, got 2")
    raises_at(tmp_path, [prm_row([], "timeout")], "d.jsonl:1", "label.finish_reason", "timeout")


# ----------------------------------------------------------------------------- Math-Shepherd


SHEPHERD_Q = ("Janet’s ducks lay 16 eggs per day. She eats three for breakfast every morning and "
              "bakes muffins for her friends every day with four. She sells the remainder at the "
              "farmers' market daily for $2 per fresh duck egg. How much in dollars does she make "
              "every day at the farmers' market?")
SHEPHERD_STEPS = ("Step 1: Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.",
                  ("Step 2: She makes 9 * 2 = $<<9*2=18>>18 every day at the farmer’s market. "
                   "The answer is: 18"))


def shepherd(marks: tuple[str, str]) -> str:
    return f"{SHEPHERD_Q} {SHEPHERD_STEPS[0]} {marks[0]}\n{SHEPHERD_STEPS[1]} {marks[1]}"


def test_math_shepherd_tags_and_labels(tmp_path):
    rows = [{"input": shepherd(("ки", "ки")), "label": shepherd(("+", "+")), "task": "GSM8K"},
            {"input": shepherd(("ки", "ки")), "label": shepherd(("+", "-")), "task": "GSM8K"},
            {"input": shepherd(("ки", "ки"))},
            {"input": "What is 1+1?\nOne plus one is 2. ки\nThe answer is: 2 ки",
             "label": "What is 1+1?\nOne plus one is 2. -\nThe answer is: 2 +"}]
    data = load(tmp_path, rows)
    assert data.format == "math_shepherd"
    assert data.notes == {"math_shepherd_question_split_at_newline": 1}
    first, second, unlabelled, newline = data.records
    assert first.prompt == (Message("user", SHEPHERD_Q),) and first.steps == SHEPHERD_STEPS
    assert first.labels == (1.0, 1.0) and first.label_type == "binary"
    assert (first.answer, first.correct, first.gold_answer) == ("18", True, None)
    assert second.labels == (1.0, 0.0) and second.correct is False
    assert unlabelled.labels == () and unlabelled.correct is None
    assert first.problem_id == second.problem_id == text_id(SHEPHERD_Q)
    assert newline.prompt[0].content == "What is 1+1?" and newline.labels == (0.0, 1.0)
    assert newline.steps == ("One plus one is 2.", "The answer is: 2")


def test_math_shepherd_custom_tag(tmp_path):
    row = {"input": shepherd(("<s>", "<s>")), "label": shepherd(("-", "+"))}
    [record] = load(tmp_path, [row], step_tag="<s>").records
    assert record.steps == SHEPHERD_STEPS and record.labels == (0.0, 1.0)


def test_math_shepherd_label_mismatch_errors(tmp_path):
    tagged = shepherd(("ки", "ки"))
    altered = shepherd(("+", "+")).replace("16 - 3 - 4", "16 - 3 - 5")
    raises_at(tmp_path, [{"input": tagged, "label": altered}], "d.jsonl:1", "label",
              "the text before step tag 1 differs from 'input'")
    one_mark = f"{SHEPHERD_Q} {SHEPHERD_STEPS[0]} +\n{SHEPHERD_STEPS[1]}"
    raises_at(tmp_path, [{"input": tagged, "label": one_mark}], "d.jsonl:1", "label",
              "ends before step tag 2: fewer marks than 'input' has tags (2)")
    raises_at(tmp_path, [{"input": tagged, "label": shepherd(("+", "+")) + " +"}], "d.jsonl:1",
              "label", "more marks than 'input' has tags")
    raises_at(tmp_path, [{"input": tagged, "label": shepherd(("+", "?"))}], "d.jsonl:1", "label",
              "in place of step tag 2, found '?'")
    raises_at(tmp_path, [{"input": "Q? Step 1: a\nStep 2: b"}], "d.jsonl:1", "input",
              "no step tag 'ки'")
    raises_at(tmp_path, [{"input": "no question break ки"}], "d.jsonl:1", "input",
              "cannot separate the question from the first step")


# ----------------------------------------------------------------------------- canonical, TRL


def test_steps_round_trip_and_label_type_inference(tmp_path):
    original = StepSolution((Message("system", "Be terse."), Message("user", "2+2?")),
                            ("2+2 = 4.", "The answer is 4"), (1.0, 0.0), "ternary", "4", True, "4",
                            "p1")
    rows = [step_solution_to_dict(original),
            {"prompt": "q", "steps": ["a", "b"], "labels": [True, False]},
            {"prompt": "q", "steps": ["a", "b"], "labels": [1, -1]},
            {"prompt": "q", "steps": ["a", "b"], "labels": [0.25, 1]},
            {"prompt": "q", "steps": ["x", "So #### 1,000.0"], "gold_answer": "1000"},
            {"prompt": "q", "steps": ["x", "The answer is 7"], "gold_answer": "8", "correct": True}]
    data = load(tmp_path, rows)
    assert data.format == "steps" and data.records[0] == original
    assert [(r.labels, r.label_type) for r in data.records[1:4]] == [
        ((1.0, 0.0), "binary"), ((1.0, -1.0), "ternary"), ((0.25, 1.0), "soft")]
    derived, given = data.records[4:]
    assert (derived.answer, derived.correct, derived.gold_answer) == ("1000", True, "1000")
    assert (given.answer, given.correct) == ("7", True)
    assert data.notes == {"steps_answer_extracted": 2, "steps_correct_from_answer": 1}


def test_steps_errors(tmp_path):
    raises_at(tmp_path, [{"prompt": "q", "steps": ["a", "b"], "labels": [1]}], "d.jsonl:1",
              "labels", "expected a list of 2 numbers")
    raises_at(tmp_path, [{"prompt": "q", "steps": ["a", 3]}], "d.jsonl:1", "steps[1]",
              "expected a string, got int")
    raises_at(tmp_path, [{"prompt": "q", "steps": []}], "d.jsonl:1", "steps", "non-empty")
    raises_at(tmp_path, [{"prompt": "q", "steps": ["a"], "labels": [0.5], "label_type": "binary"}],
              "d.jsonl:1", "labels", "a binary label is 0 or 1")
    raises_at(tmp_path, [{"prompt": "q", "steps": ["a"], "labels": [1], "label_type": "hard"}],
              "d.jsonl:1", "label_type", "expected one of")


def test_trl_stepwise(tmp_path):
    rows = [{"prompt": "What is 3*4+1?", "labels": [True, True],
             "completions": ["3*4 = 12.", "12+1 = 13. The answer is 13"]},
            {"prompt": "What is 3*4+1?", "completions": ["3*4 = 7."], "labels": [False]}]
    data = load(tmp_path, rows)
    assert data.format == "trl_stepwise"
    good, bad = data.records
    assert good.steps == ("3*4 = 12.", "12+1 = 13. The answer is 13") and good.answer == "13"
    assert good.labels == (1.0, 1.0) and bad.labels == (0.0,) and bad.label_type == "binary"
    assert len(group_by_problem(data.records)) == 1  # no problem_id: grouped by prompt
    raises_at(tmp_path, [{"prompt": "q", "completions": ["a", "b"], "labels": [True]}],
              "d.jsonl:1", "labels", "1 labels for 2 completions")
    raises_at(tmp_path, [{"prompt": "q", "completions": ["a"], "labels": ["yes"]}],
              "d.jsonl:1", "labels[0]", "expected true or false")


# ----------------------------------------------------------------------------- GSM8K


GSM8K_ROW = {"question": "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 "
                         "minutes of babysitting. How much did she earn?",
             "answer": "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\n\nWorking 50 minutes, "
                       "she earned 0.2 x 50 = $<<0.2*50=10>>10.\n#### 1,0.0"}


def test_gsm8k_reference_solutions(tmp_path):
    data = load(tmp_path, [GSM8K_ROW], format="gsm8k", strip_calculator=True)
    [record] = data.records
    assert record.steps == ("Weng earns 12/60 = $0.2 per minute.",
                            "Working 50 minutes, she earned 0.2 x 50 = $10.")
    assert (record.answer, record.gold_answer, record.correct, record.labels) == \
        ("10", "10", True, ())
    assert record.problem_id == f"{tmp_path / 'd.jsonl'}:1"
    assert data.notes == {"gsm8k_blank_line_skipped": 1}
    [kept] = load(tmp_path, [GSM8K_ROW]).records
    assert kept.steps[0] == "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute."
    missing = dict(GSM8K_ROW, answer="Weng earns 10.\nThe answer is 10")
    raises_at(tmp_path, [GSM8K_ROW, missing], "d.jsonl:2", "answer", "no final '#### N' line")


SOLUTIONS_ROW = {
    "question": "A robe takes 2 bolts of blue fiber and half that much white fiber.  How many "
                "bolts in total does it take?",
    "ground_truth": "It takes 2/2=<<2/2=1>>1 bolt of white fiber\nSo the total amount of fabric "
                    "is 2+1=<<2+1=3>>3 bolts of fabric\nA: 3",
    "6b_finetuning": {"is_correct": True, "solution": "It takes 2*1/2=<<2*1/2=1.0>>1 bolt of "
                      "white fiber\nSo it takes 2+1=<<2+1=3>>3 bolts in all\nA: 3"},
    "175b_finetuning": {"is_correct": False, "solution": "It takes 2*2=<<2*2=4>>4 bolts of "
                        "white fiber\nA: 6"},
    "175b_verification": {"is_correct": True, "solution": "White: 1 bolt\nA: 2"},
}


def test_gsm8k_model_solutions(tmp_path):
    truncated = dict(SOLUTIONS_ROW, **{"6b_finetuning": {"is_correct": False,
                                                         "solution": "It takes 2*1/2 ="}})
    data = load(tmp_path, [SOLUTIONS_ROW, truncated])
    assert data.format == "gsm8k_solutions" and len(data.records) == 6
    first, second, third = data.records[:3]
    assert first.steps == ("It takes 2*1/2=<<2*1/2=1.0>>1 bolt of white fiber",
                           "So it takes 2+1=<<2+1=3>>3 bolts in all", "A: 3")
    assert (first.answer, first.gold_answer, first.correct, first.labels) == ("3", "3", True, ())
    assert (second.answer, second.correct) == ("6", False)
    assert (third.answer, third.correct) == ("2", True)  # the given label is kept
    assert data.records[3].answer is None and data.records[3].steps == ("It takes 2*1/2 =",)
    assert data.notes == {"gsm8k_label_disagrees_with_answer": 2,
                          "gsm8k_solution_without_final_answer": 1}
    assert [len(g) for g in group_by_problem(data.records)] == [3, 3]
    not_bool = dict(SOLUTIONS_ROW, **{"175b_finetuning": {"is_correct": 0, "solution": "A: 6"}})
    raises_at(tmp_path, [not_bool], "d.jsonl:1", "175b_finetuning.is_correct",
              "expected true or false, got int")
    raises_at(tmp_path, [dict(SOLUTIONS_ROW, ground_truth="3")], "d.jsonl:1", "ground_truth",
              "no final 'A: N' line")


# ----------------------------------------------------------------------------- loading


def test_skip_bad_records_and_limit(tmp_path):
    rows = [GSM8K_ROW, {"question": "q", "answer": "no marker"}, "{oops", GSM8K_ROW, GSM8K_ROW]
    data = load(tmp_path, rows, on_bad_record="skip", format="gsm8k", offset=1, limit=1)
    assert len(data.records) == 1 and data.bad.skipped == 2
    assert data.records[0].problem_id.endswith("d.jsonl:4")
    assert "d.jsonl:2: field 'answer': no final '#### N' line" in data.bad.examples[0]


def test_detect_step_format():
    assert detect_step_format({"prompt": "q", "steps": ["a"]}, "f") == "steps"
    assert detect_step_format(PRM_PHASE2, "f") == "prm800k"
    assert detect_step_format({"input": "x ки", "label": "x +", "task": "MATH"}, "f") == \
        "math_shepherd"
    assert detect_step_format({"input": "x ки"}, "f") == "math_shepherd"
    assert detect_step_format({"prompt": "q", "completions": [], "labels": []}, "f") == \
        "trl_stepwise"
    assert detect_step_format(GSM8K_ROW, "f") == "gsm8k"
    assert detect_step_format(SOLUTIONS_ROW, "f") == "gsm8k_solutions"
    with pytest.raises(DataSourceError, match=r"fit several formats \(gsm8k, gsm8k_solutions"):
        detect_step_format({"question": "q", "answer": "a", "ground_truth": "A: 1"}, "f")
    with pytest.raises(DataSourceError, match="cannot detect the step-data format.*set format"):
        detect_step_format({"text": "q"}, "f")


def test_settings_and_record_loaders_stay_apart(tmp_path):
    assert StepDataSettings(path="x").format == "auto"
    with pytest.raises(ValidationError):
        StepDataSettings(path="x", format="hh")
    with pytest.raises(ValidationError):
        StepDataSettings(path="x", step_tags="ки")
    with pytest.raises(ValidationError):
        DataSettings(path="x", format="prm800k")
    path = write_jsonl(tmp_path / "g.jsonl", [GSM8K_ROW])
    with pytest.raises(DataSourceError, match="unknown format 'gsm8k'"):
        load_records(StepDataSettings(path=str(path), format="gsm8k"), "pair")


# ----------------------------------------------------------------------------- real files


@shared
@pytest.mark.shared_data
def test_gsm8k_model_solutions_real_file():
    data = load_step_solutions(StepDataSettings(path=str(DATA / "gsm8k/model_solutions.dev.jsonl")))
    assert data.format == "gsm8k_solutions" and data.rows_read == 879 and data.bad.skipped == 0
    assert len(data.records) == 3516 and sum(r.correct for r in data.records) == 1337
    assert data.notes == {"gsm8k_solution_without_final_answer": 3}  # truncated samples
    by_model = [sum(r.correct for r in data.records[i::4]) for i in range(4)]
    assert by_model == [189, 347, 302, 499]  # 6b/175b finetuning vs verifier-picked samples
    first = data.records[0]
    assert first.prompt == (Message("user", "A robe takes 2 bolts of blue fiber and half that much "
                                            "white fiber.  How many bolts in total does it take?"),)
    assert first.steps[-1] == "A: 3" and len(first.steps) == 3
    assert (first.answer, first.gold_answer, first.correct) == ("3", "3", True)
    assert data.records[2].correct is False and data.records[2].answer == "250"
    groups = group_by_problem(data.records)
    assert len(groups) == 879 and all(len(g) == 4 for g in groups)


@shared
@pytest.mark.shared_data
def test_gsm8k_train_real_file():
    path = str(DATA / "gsm8k/train_1500.jsonl")
    data = load_step_solutions(StepDataSettings(path=path, strip_calculator=True))
    assert data.format == "gsm8k" and len(data.records) == 1500 and data.bad.skipped == 0
    assert data.notes == {"gsm8k_blank_line_skipped": 1}
    assert all(r.gold_answer and r.answer == r.gold_answer and r.correct for r in data.records)
    assert not any("<<" in step for r in data.records for step in r.steps)
    assert data.records[0].steps == ("Natalia sold 48/2 = 24 clips in May.",
                                     "Natalia sold 48+24 = 72 clips altogether in April and May.")
    assert data.records[0].gold_answer == "72"


def test_load_problems_from_prompt_rows_and_from_solutions(tmp_path):
    from alignlab.data.step_readers import load_problems

    rows = tmp_path / "problems.jsonl"
    rows.write_text('{"prompt": "What is 2+2?", "gold_answer": "4.0", "problem_id": 7}\n'
                    '{"prompt": "What is 1+1?", "gold_answer": 2}\n')
    loaded = load_problems(StepDataSettings(path=str(rows)))
    assert [(p.prompt[0].content, p.gold_answer, p.problem_id) for p in loaded.records] == \
        [("What is 2+2?", "4", "7"), ("What is 1+1?", "2", None)]
    # solutions: one problem per problem_id, the gold answer required
    sols = tmp_path / "sols.jsonl"
    sols.write_text("".join(json.dumps({"prompt": "q", "steps": [s], "gold_answer": "3",
                                        "problem_id": "a"}) + "\n" for s in ("x", "y")))
    assert len(load_problems(StepDataSettings(path=str(sols))).records) == 1
    sols.write_text(json.dumps({"prompt": "q", "steps": ["x"]}) + "\n")
    with pytest.raises(RecordError, match=r"sols.jsonl:1: field 'gold_answer'"):
        load_problems(StepDataSettings(path=str(sols), format="steps"))
