"""Tests for alignlab.gym.w2s_data: every label agrees with the gold scorer, prompts come from the
train pool only, classes are balanced, form does not give correctness away, files are deterministic."""

from __future__ import annotations

import json

import pytest

from alignlab.data.records import Message
from alignlab.gym.gold import is_helpful, score
from alignlab.gym.prompts import make_prompt_pools
from alignlab.gym.styles import FILLERS
from alignlab.gym.w2s_data import STYLE_CLASSES, W2S_SIZES, write_w2s_data
from alignlab.gym.world import generate_world

SMALL = {"helpful": 150, "style": 150, "prefs_gold": 150}


@pytest.fixture(scope="module")
def world():
    return generate_world(0)


@pytest.fixture(scope="module")
def pools(world):
    return make_prompt_pools(world, 0, 4400, 1200)


@pytest.fixture(scope="module")
def built(world, pools, tmp_path_factory):
    folder = tmp_path_factory.mktemp("w2s")
    info = write_w2s_data(folder, world, pools[0], seed=0)
    rows = {name: read_jsonl(folder / f"{name}.jsonl") for name in W2S_SIZES}
    return folder, info, rows


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def messages(row):
    return tuple(Message(**m) for m in row["prompt"])


def test_row_formats_and_counts(built):
    folder, info, rows = built
    assert json.loads((folder / "tasks.json").read_text()) == info
    for name, n in W2S_SIZES.items():
        assert len(rows[name]) == n == info[name]["count"]
    assert set(rows["helpful"][0]) == set(rows["style"][0]) == {"prompt", "response", "label"}
    assert set(rows["prefs_gold"][0]) == {"prompt", "chosen", "rejected", "label"}
    assert rows["helpful"][0]["prompt"][-1]["role"] == "user"
    assert (info["helpful"]["kind"], info["style"]["kind"], info["prefs_gold"]["kind"]) == (
        "classify", "classify", "pairwise")
    assert info["style"]["classes"] == list(STYLE_CLASSES) and info["style"]["num_classes"] == 7


def test_helpful_labels_are_gold(world, built):
    for row in built[2]["helpful"]:
        gold = score(world, messages(row), row["response"])
        assert not gold.harmful_prompt
        assert row["label"] == int(is_helpful(gold)), row


def test_style_labels_are_gold(world, built):
    for row in built[2]["style"]:
        assert STYLE_CLASSES[row["label"]] == score(world, messages(row), row["response"]).style, row


def test_gold_pairs_are_strict(world, built):
    for row in built[2]["prefs_gold"]:
        p = messages(row)
        assert score(world, p, row["chosen"]).reward > score(world, p, row["rejected"]).reward, row
        assert row["label"] == 1.0
    pairs = built[1]["prefs_gold"]
    assert pairs["ties_dropped"] > 0 and pairs["pairs_drawn"] == pairs["count"] + pairs["ties_dropped"]
    assert 0.4 < pairs["benign_fraction"] < 0.8


def test_prompts_come_from_the_train_pool_only(built, pools):
    train, evals = pools
    train_set, held_out = set(train), {p[-1].content for p in evals}
    for rows in built[2].values():
        for row in rows:
            assert messages(row) in train_set and messages(row)[-1].content not in held_out


def test_classes_are_balanced(built):
    info = built[1]
    assert 0.45 < info["helpful"]["class_balance"][1] < 0.55
    assert min(info["style"]["class_balance"]) > 0.1 and info["style"]["majority_rate"] < 0.2
    assert sum(info["style"]["class_counts"]) == W2S_SIZES["style"]
    assert info["helpful"]["gold_styles"]["wrong"] > 0.3 * W2S_SIZES["helpful"]


def test_padding_says_nothing_about_correctness(built):
    """Among on-topic answers, right and wrong ones are padded with fillers at the same rate and a
    form-only rule (refusal → unhelpful, answer → helpful) stays near 60 %."""
    answers = [r for r in built[2]["helpful"] if not r["response"].startswith(
        ("I can't", "Sorry", "I won't", "I am not able"))]
    def padded_rate(label):
        rows = [r for r in answers if r["label"] == label]
        return sum(any(f in r["response"] for f in FILLERS) for r in rows) / len(rows)
    assert abs(padded_rate(0) - padded_rate(1)) < 0.05
    form_only = (len(built[2]["helpful"]) - len(answers)
                 + sum(r["label"] for r in answers)) / len(built[2]["helpful"])
    assert 0.55 < form_only < 0.65


def test_deterministic_prefix_stable_and_seeded(world, pools, built, tmp_path):
    small = write_w2s_data(tmp_path / "a", world, pools[0], seed=0, sizes=SMALL)
    write_w2s_data(tmp_path / "b", world, pools[0], seed=0, sizes=SMALL)
    for name in W2S_SIZES:
        text = (tmp_path / "a" / f"{name}.jsonl").read_text()
        assert text == (tmp_path / "b" / f"{name}.jsonl").read_text()
        full = (built[0] / f"{name}.jsonl").read_text().splitlines()
        assert text.splitlines() == full[: SMALL[name]]  # one stream per task
    assert small["helpful"]["count"] == 150
    other = generate_world(1)
    write_w2s_data(tmp_path / "c", other, make_prompt_pools(other, 1, 300, 10)[0], seed=1, sizes=SMALL)
    assert (tmp_path / "c/helpful.jsonl").read_text() != (tmp_path / "a/helpful.jsonl").read_text()
