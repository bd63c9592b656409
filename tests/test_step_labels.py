"""Automatic process labels (Math-Shepherd): label arithmetic, resuming, rendering, the HF path."""

from __future__ import annotations

import json

import pytest
from test_train_stages import _tokenizer, tiny_model  # noqa: F401  (fixture)

from alignlab.config import GenerationSettings, ModelSettings
from alignlab.data.records import Message
from alignlab.data.step_readers import StepDataSettings
from alignlab.data.steps import StepSolution
from alignlab.feedback.step_labels import (
    StepLabelConfig,
    continuation_text,
    label_agreement,
    label_solutions,
    plan_chunks,
    render_continuation,
    run_step_labels,
    step_labels,
)
from alignlab.generation.base import Sample
from alignlab.runs import RunFolder


class FakeCompleter:
    """Canned rollouts: ``script[prefix]`` is the list of continuations for that step prefix.

    ``fail_on``: raise (a simulated kill) on the call whose first prompt's prefix is that one."""

    def __init__(self, script: dict[str, list[str]], fail_on: str | None = None):
        self.script, self.fail_on = script, fail_on
        self.calls: list[list[str]] = []

    def generate(self, prompts, settings):
        prefixes = [p[-1].content for p in prompts]
        assert all(p[-1].role == "assistant" for p in prompts)
        if self.fail_on is not None and prefixes[0] == self.fail_on:
            raise KeyboardInterrupt("killed")
        self.calls.append(prefixes)
        out = []
        for prefix in prefixes:
            texts = self.script[prefix]
            assert len(texts) == settings.num_samples
            out.append([Sample(t, list(range(len(t)))) for t in texts])
        return out


def _solution(steps, gold="5", labels=(), label_type="binary", problem="a plus b?"):
    return StepSolution((Message("user", problem),), tuple(steps), tuple(labels), label_type,
                        None, None, gold)


def _config(tmp_path, name="run", **extra):
    base = {"data": StepDataSettings(path="unused.jsonl"), "completer": ModelSettings(path="x"),
            "generation": GenerationSettings(num_samples=4, max_new_tokens=8), "out":
            str(tmp_path / name)}
    return StepLabelConfig(**{**base, **extra})


def _label(cfg, solutions, completer):
    run = RunFolder(cfg.out, cfg, echo=False)
    out = label_solutions(cfg, run, solutions, lambda: completer)
    rows = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    return rows, json.loads((out / "cost.json").read_text())


RIGHT, WRONG = "the answer is 5", "the answer is 6"
SOLUTION = ["a is 2", "b is 3", "so a plus b is 5", "the answer is 5"]


def _script(counts, prefix_of=SOLUTION, n=4):
    """Rollouts for each non-last step prefix: ``counts[k]`` of the ``n`` reach the answer."""
    script = {}
    for k, c in enumerate(counts):
        prefix = "\n".join(prefix_of[: k + 1]) + "\n"
        script[prefix] = [RIGHT] * c + [WRONG] * (n - c - 1) + ["no answer"] * (n - c > 0)
    return script


def test_soft_and_hard_labels_are_the_rollout_fractions(tmp_path):
    completer = FakeCompleter(_script([3, 1, 0]))
    soft, cost = _label(_config(tmp_path, "soft"), [_solution(SOLUTION)], completer)
    assert soft[0]["labels"] == [0.75, 0.25, 0.0, 1.0] and soft[0]["label_type"] == "soft"
    assert soft[0]["answer"] == "5" and soft[0]["correct"] is True
    assert cost["rollouts"] == 12 and cost["rolled_out_steps"] == 3 and cost["steps"] == 4
    assert cost["generated_tokens"] == sum(len(t) for v in completer.script.values() for t in v)
    hard, _ = _label(_config(tmp_path, "hard", estimate="hard"), [_solution(SOLUTION)],
                     FakeCompleter(_script([3, 1, 0])))
    assert hard[0]["labels"] == [1.0, 1.0, 0.0, 1.0] and hard[0]["label_type"] == "binary"


def test_last_step_is_the_solutions_own_answer(tmp_path):
    wrong = SOLUTION[:-1] + ["the answer is 7"]
    completer = FakeCompleter(_script([4, 2, 1], wrong))
    rows, _ = _label(_config(tmp_path), [_solution(wrong)], completer)
    assert rows[0]["labels"] == [1.0, 0.5, 0.25, 0.0] and rows[0]["correct"] is False
    one_step, cost = _label(_config(tmp_path, "one"), [_solution(["the answer is 5"])],
                            FakeCompleter({}))
    assert one_step[0]["labels"] == [1.0] and cost["rollouts"] == 0


def test_stop_after_first_zero_skips_later_steps(tmp_path):
    completer = FakeCompleter(_script([2, 0, 4]))
    cfg = _config(tmp_path, stop_after_first_zero=True)
    rows, cost = _label(cfg, [_solution(SOLUTION)], completer)
    assert rows[0]["labels"] == [0.5, 0.0, 0.0, 0.0]  # even the right final answer gets 0
    assert [len(c) for c in completer.calls] == [1, 1] and cost["rollouts"] == 8
    assert cost["steps_skipped_by_early_exit"] == 1


def test_step_labels_arithmetic():
    assert step_labels([3, 0], 4, 3, True, "soft") == (0.75, 0.0, 1.0)
    assert step_labels([3, 0], 4, 3, True, "hard") == (1.0, 0.0, 1.0)
    assert step_labels([3, 0], 4, 3, True, "hard", stop_after_first_zero=True) == (1.0, 0.0, 0.0)
    assert step_labels([0], 4, 4, True, "soft", True) == (0.0, 0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        step_labels([1, 1, 1], 4, 3, True, "soft")


def test_agreement_with_input_labels(tmp_path):
    given = _solution(SOLUTION, labels=(1, 1, -1, 0), label_type="ternary")
    _, cost = _label(_config(tmp_path), [given], FakeCompleter(_script([1, 0, 0])))
    agreement = cost["agreement_with_input_labels"]
    # hard: 1, 0, 0, 1 vs 1, 1, -1, (neutral, left out) → steps 0 and 2 agree
    assert agreement["steps"] == 3 and agreement["neutral_steps_left_out"] == 1
    assert agreement["hard_accuracy"] == round(2 / 3, 4)
    assert agreement["hard_accuracy_on_right_steps"] == 0.5
    assert agreement["hard_accuracy_on_wrong_steps"] == 1.0
    assert agreement["soft_accuracy"] == round(1 / 3, 4)  # soft 0.25, 0, 0: only step 2 agrees
    assert label_agreement([_solution(SOLUTION)], [(1.0,) * 4], [(1.0,) * 4]) is None


def test_chunks_pack_solutions_into_calls(tmp_path):
    sols = [_solution(SOLUTION), _solution(SOLUTION[:2]), _solution(SOLUTION[-1:])]
    assert plan_chunks(sols, 4, False) == [[0, 1, 2]]
    assert plan_chunks(sols, 3, False) == [[0], [1, 2]]
    assert plan_chunks(sols, 1, True) == [[0], [1, 2]]


def _three():
    a = SOLUTION
    b = ["a is 1", "b is 4", "the answer is 5"]
    c = ["a is 9", "the answer is 9"]
    script = {**_script([3, 1, 0], a), **_script([2, 4], b), **_script([0], c)}
    return [_solution(a), _solution(b), _solution(c)], script


def test_a_killed_job_resumes_without_redoing_finished_solutions(tmp_path):
    solutions, script = _three()
    cfg = _config(tmp_path, "a", batch_size=4)  # one prefix per call, one solution per chunk
    killed = FakeCompleter(script, fail_on="a is 1\n")
    with pytest.raises(KeyboardInterrupt):
        _label(cfg, solutions, killed)
    assert len(killed.calls) == 3  # solution 0's three prefixes
    assert len((tmp_path / "a" / "labels.jsonl").read_text().splitlines()) == 1
    resumed = FakeCompleter(script)
    rows, cost = _label(cfg, solutions, resumed)
    assert [c[0] for c in resumed.calls] == ["a is 1\n", "a is 1\nb is 4\n", "a is 9\n"]
    assert cost["this_run"]["solutions"] == 2 and cost["this_run"]["rollouts"] == 12
    straight = FakeCompleter(script)
    expected, _ = _label(_config(tmp_path, "b", batch_size=4), solutions, straight)
    assert len(straight.calls) == 6 and rows == expected
    files = [(tmp_path / name / "steps.jsonl").read_text() for name in ("a", "b")]
    assert files[0] == files[1]
    assert [r["labels"] for r in rows] == [[0.75, 0.25, 0.0, 1.0], [0.5, 1.0, 1.0], [0.0, 0.0]]


def test_resuming_on_other_data_is_refused(tmp_path):
    solutions, script = _three()
    cfg = _config(tmp_path, "a")
    _label(cfg, solutions, FakeCompleter(script))
    with pytest.raises(ValueError, match="does not fit the data"):
        _label(cfg, [_solution(SOLUTION[:2])] + solutions[1:], FakeCompleter(script))


# ----------------------------------------------------------------------------- rendering


def test_continuation_keeps_the_template_lead_in_and_drops_end_of_turn():
    tok = _tokenizer()
    prompt = (Message("user", "q"),)
    assert continuation_text(tok, prompt, "a is 2\n") == "<user>q\n<assistant>a is 2\n"
    tok.chat_template = None  # HH fallback: the reply starts after a space
    assert continuation_text(tok, prompt, "a is 2\n") == "\n\nHuman: q\n\nAssistant: a is 2\n"
    assert render_continuation(tok, prompt) == "\n\nHuman: q\n\nAssistant:"


def test_continuation_with_a_template_that_trims_content():
    tok = _tokenizer()
    tok.chat_template = ("{% for m in messages %}[{{ m['role'] }}]{{ m['content'] | trim }}[end]"
                         "{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}")
    text = continuation_text(tok, (Message("user", "q"),), "a is 2\n")
    assert text == "[user]q[end][assistant]a is 2\n"


# ----------------------------------------------------------------------------- the HF backend


def test_end_to_end_through_the_hf_backend(tiny_model, tmp_path, monkeypatch):  # noqa: F811
    from alignlab.generation.hf import HFGenerator

    rows = [{"prompt": [{"role": "user", "content": "a plus b?"}], "steps": SOLUTION,
             "gold_answer": "5", "labels": [1, 1, 1, 1]},
            {"prompt": "c?", "steps": ["c is 1", "the answer is 2"], "gold_answer": "3"}]
    data = tmp_path / "steps.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    seen: list[list[int]] = []
    original = HFGenerator._generate_batch

    def spy(self, prompt_ids, settings, device, *rest):
        seen.extend(prompt_ids)
        return original(self, prompt_ids, settings, device, *rest)

    monkeypatch.setattr(HFGenerator, "_generate_batch", spy)
    cfg = StepLabelConfig(data=StepDataSettings(path=str(data)),
                          completer=ModelSettings(path=tiny_model), batch_size=4,
                          generation=GenerationSettings(num_samples=2, max_new_tokens=4),
                          out=str(tmp_path / "run"))
    out = run_step_labels(cfg, RunFolder(cfg.out, cfg, echo=False))
    tok = _tokenizer()
    decoded = sorted(tok.decode(ids) for ids in seen)
    assert len(decoded) == 4  # three prefixes of the first solution, one of the second
    assert decoded[0].endswith("<assistant>a is 2\n")
    assert any(d.endswith("<assistant>a is 2\nb is 3\nso a plus b is 5\n") for d in decoded)
    assert any(d.endswith("<user>c?\n<assistant>c is 1\n") for d in decoded)
    labelled = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert [len(r["labels"]) for r in labelled] == [4, 2]
    assert labelled[0]["labels"][-1] == 1.0 and labelled[1]["labels"][-1] == 0.0
    cost = json.loads((out / "cost.json").read_text())
    assert cost["rollouts"] == 8 and 0 < cost["generated_tokens"] <= 8 * 4
    assert cost["agreement_with_input_labels"]["steps"] == 4
    labels = [json.loads(line) for line in (out / "labels.jsonl").read_text().splitlines()]
    assert [r["rollouts"] for r in labels] == [6, 2]


def test_vllm_backend_gets_the_continuation_renderer(tiny_model, tmp_path,  # noqa: F811
                                                     monkeypatch):
    from alignlab.feedback.step_labels import build_completer
    from alignlab.generation import factory

    calls = []
    monkeypatch.setattr(factory, "make_generator", lambda *a, **k: calls.append((a, k)) or "gen")
    cfg = StepLabelConfig(data=StepDataSettings(path="x.jsonl"), backend="vllm",
                          completer=ModelSettings(path=tiny_model), out=str(tmp_path / "run"))
    assert build_completer(cfg) == "gen"
    (args, kwargs), = calls
    assert args == ("vllm",) and kwargs["model_path"] == tiny_model
    assert kwargs["render_prompt"] is render_continuation
    assert kwargs["gpu_memory_utilization"] == 0.85
