"""PM robustness (``pm-check``): pair statistics by hand, and the stage end to end."""

import json
import math

import pytest
import torch

from alignlab.eval.pm_check import (
    agreement_by_bin,
    bernoulli_kl,
    histogram_kl,
    pair_stats,
)
from alignlab.stages import build_stage_config, run_stage


def test_bernoulli_kl_by_hand():
    # 0.75 ln(0.75/0.5) + 0.25 ln(0.25/0.5) = 0.304099 - 0.173287
    assert float(bernoulli_kl(torch.tensor(0.75), torch.tensor(0.5))) == pytest.approx(0.130812,
                                                                                        abs=1e-6)
    assert float(bernoulli_kl(torch.tensor(0.3), torch.tensor(0.3))) == 0.0


def test_pair_agreement_and_kl_by_hand():
    # train [0, 1, 3], test [0, 2, 1]: pairs (0,1) d = -1 / -2 agree, (0,2) -3 / -1 agree,
    # (1,2) -2 / +1 disagree; pair means 0.5, 1.5, 2.0
    stats = pair_stats([{"train": [0.0, 1.0, 3.0], "test": [0.0, 2.0, 1.0]}])
    assert [(m, a) for m, _, a in stats] == [(0.5, True), (1.5, True), (2.0, False)]
    # KL(Bern(sigma(-1)) || Bern(sigma(-2))) = 0.26894 ln(0.26894/0.11920) + 0.73106 ln(0.73106/0.88080)
    assert [k for _, k, _ in stats] == pytest.approx([0.082608, 0.169823, 0.828725], abs=1e-5)
    report = agreement_by_bin(stats, bins=2)  # quantile edges 0, round(1.5) = 2, 3
    assert [b["agreement"] for b in report["bins"]] == [1.0, 0.0]
    assert [b["pairs"] for b in report["bins"]] == [2, 1]
    assert report["overall"]["agreement"] == pytest.approx(2 / 3)
    assert report["overall"]["kl"] == pytest.approx((0.082608 + 0.169823 + 0.828725) / 3, abs=1e-5)


def test_histogram_kl_ignores_offset_and_scale_but_not_shape():
    a = [math.sin(1.3 * i) for i in range(200)]  # continuous: no value sits on a bin edge
    assert histogram_kl(a, [3 * v - 5 for v in a], bins=10) == pytest.approx(0.0, abs=1e-9)
    assert histogram_kl(a, [math.exp(v) for v in a], bins=10) > 0.1


def _samples(path, rows):
    path.write_text("".join(json.dumps({"index": i, "prompt": [{"role": "user", "content": "q"}],
                                        "samples": [{"text": str(k), "score": tr, "monitor": {
                                            "test_pm": te, "gold": g}}
                                            for k, (tr, te, g) in enumerate(row)]}) + "\n"
                            for i, row in enumerate(rows)))
    return path


def test_pm_check_stage_when_test_pm_equals_train_pm(tmp_path):
    """A test PM equal to the train PM gains exactly what the train PM gains at every n, and the
    gold score of the pick is the hand-computed best-of-n mean."""
    rows = [[(float(k), float(k), float(min(k, 5 - k))) for k in range(4)]] * 3
    cfg = build_stage_config({"stage": "pm-check", "out": str(tmp_path / "check"),
                              "samples": str(_samples(tmp_path / "s.jsonl", rows)), "bins": 2},
                             source="test")
    out = run_stage(cfg)
    report = json.loads((out / "report.json").read_text())
    bon = report["best_of_n"]
    assert [r["n"] for r in bon] == [1, 2, 4]
    assert all(r["test_pm_gain"] == pytest.approx(r["train_pm_gain"]) for r in bon)
    # best of 4 is always score 3 (gold 2); of 1 the mean gold (0 + 1 + 2 + 2) / 4
    assert bon[0]["gold"] == pytest.approx(1.25) and bon[2]["gold"] == pytest.approx(2.0)
    assert report["agreement"]["overall"]["agreement"] == 1.0
    assert report["agreement"]["overall"]["kl"] == pytest.approx(0.0, abs=1e-9)
    assert (out / "pm_check.png").is_file() and "| 4 |" in (out / "report.md").read_text()


def test_pm_check_names_the_missing_monitor(tmp_path):
    path = _samples(tmp_path / "s.jsonl", [[(0.0, 0.0, 0.0), (1.0, 1.0, 1.0)]])
    cfg = build_stage_config({"stage": "pm-check", "out": str(tmp_path / "c"), "samples": str(path),
                              "test_monitor": "other"}, source="test")
    with pytest.raises(ValueError, match=r"s\.jsonl:1: field 'samples\[0\]\.monitor': has no 'other'"):
        run_stage(cfg)


def test_pm_check_names_a_broken_row(tmp_path):
    path = _samples(tmp_path / "s.jsonl", [[(0.0, 0.0, 0.0), (1.0, 1.0, 1.0)]])
    path.write_text(path.read_text() + "{not json\n")
    cfg = build_stage_config({"stage": "pm-check", "out": str(tmp_path / "c"), "samples": str(path)},
                             source="test")
    with pytest.raises(ValueError, match=r"s\.jsonl:2: not valid JSON"):
        run_stage(cfg)
    with pytest.raises(Exception, match="greater than or equal to 1"):
        build_stage_config({"stage": "pm-check", "out": "o", "samples": "s", "ns": [0, 2]},
                           source="test")
