"""``gym-annotate``: the gym's annotators compare a policy's samples, with the helpful/harmless mix."""

import json
import random

import pytest

from alignlab.data.records import messages_to_list
from alignlab.gym.prompts import sample_prompt
from alignlab.gym.styles import render_style
from alignlab.gym.world import generate_world
from alignlab.stages import build_stage_config, run_stage


def _gym(tmp_path, temperature):
    world = generate_world(0)
    (tmp_path / "gym").mkdir()
    (tmp_path / "gym" / "world.json").write_text(json.dumps(
        {"world": world.to_dict(), "annotator": {"temperature": temperature, "length_bias": 0.0}}))
    return world


def _samples(tmp_path, world, n=40):
    """n prompts; sample A is the worse style, B the better, one prompt with identical samples."""
    rng, rows = random.Random(1), []
    for i in range(n):
        task, prompt = sample_prompt(rng, world)
        worse, better = ("harmful_compliance", "explained_refusal") if task.harmful else \
            ("wrong", "correct")
        a, b = render_style(rng, world, task, worse), render_style(rng, world, task, better)
        rows.append({"index": i, "prompt": messages_to_list(prompt), "harmful": task.harmful,
                     "samples": [{"text": " " + a, "score": 0.0},
                                 {"text": a if i == 0 else b, "score": 0.0}]})
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows, path


@pytest.mark.parametrize("labels,temperature", [("gold", 1.0), ("annotator", 1e-3)])
def test_annotate_mixes_tasks_and_prefers_the_better_sample(tmp_path, labels, temperature):
    world = _gym(tmp_path, temperature)
    rows, samples = _samples(tmp_path, world)
    earlier = tmp_path / "earlier.jsonl"
    earlier.write_text(json.dumps({"prompt": "x", "chosen": "a", "rejected": "b"}) + "\n")
    cfg = build_stage_config({"stage": "gym-annotate", "out": str(tmp_path / "r"),
                              "gym": str(tmp_path / "gym"), "samples": str(samples),
                              "num_comparisons": 8, "helpful_fraction": 0.25, "labels": labels,
                              "include": [{"path": str(earlier)}]}, source="test")
    out = run_stage(cfg)
    made = [json.loads(x) for x in (out / "comparisons.jsonl").read_text().splitlines()]
    counts = json.loads((out / "annotate.json").read_text())
    assert counts["helpful"] == 2 and counts["harmless"] == 6 and len(made) == 8
    assert [m["task"] for m in made].count("helpful") == 2
    # the better style always wins: gold labels, or a near-zero annotator temperature
    by_prompt = {json.dumps(r["prompt"]): r["samples"][1]["text"] for r in rows}
    assert all(m["chosen"] == by_prompt[json.dumps(m["prompt"])] for m in made)
    assert counts["gold_agreement"] == 1.0
    assert counts["same_text_skipped"] == 1  # prompt 0: the same text once stripped
    assert len((out / "all.jsonl").read_text().splitlines()) == counts["all"] == 9


def test_annotator_noise_at_the_gym_temperature_flips_some_labels(tmp_path):
    world = _gym(tmp_path, 2.0)
    _, samples = _samples(tmp_path, world, n=200)
    cfg = build_stage_config({"stage": "gym-annotate", "out": str(tmp_path / "r"),
                              "gym": str(tmp_path / "gym"), "samples": str(samples)}, source="test")
    counts = json.loads((run_stage(cfg) / "annotate.json").read_text())
    # gaps of 3 (helpful: correct 2 vs wrong -1) and 4.5 (harmless: 1.5 vs -3) at T = 2:
    # sigma(1.5) = 0.82 and sigma(2.25) = 0.90, so some labels flip but most agree
    assert 0.75 < counts["gold_agreement"] < 0.97


def test_annotate_names_the_bad_samples_line(tmp_path):
    world = _gym(tmp_path, 1.0)
    _, samples = _samples(tmp_path, world, n=2)
    samples.write_text(samples.read_text() + json.dumps({"index": 2, "samples": [{"text": "x"}]}) + "\n")
    cfg = build_stage_config({"stage": "gym-annotate", "out": str(tmp_path / "r"),
                              "gym": str(tmp_path / "gym"), "samples": str(samples)}, source="test")
    with pytest.raises(ValueError, match=r"samples\.jsonl:3: field 'samples': need at least two"):
        run_stage(cfg)
