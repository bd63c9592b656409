"""alignlab.eval.stats, metrics and report against hand-computed numbers."""

from __future__ import annotations

import json
import math
import re

import pytest

from alignlab.eval.metrics import gold_metrics, length_metrics
from alignlab.eval.report import compare, markdown_table, paired_compare, write_report
from alignlab.eval.stats import Stat, format_stat, mean_se, paired_difference, rate, z_score
from alignlab.gym.gold import GoldResult


def test_mean_se_hand_computed():
    # values 1, 2, 3, 6: mean 3; deviations -2,-1,0,3 -> squares 4+1+0+9 = 14; var = 14/3;
    # se = sqrt(14/3 / 4) = sqrt(7/6)
    s = mean_se([1, 2, 3, 6])
    assert s.n == 4 and s.mean == pytest.approx(3.0)
    assert s.se == pytest.approx(math.sqrt(7 / 6))


def test_mean_se_edge_cases():
    one = mean_se([5.0])
    assert one.mean == 5.0 and math.isnan(one.se) and one.n == 1
    empty = mean_se([])
    assert empty.n == 0 and math.isnan(empty.mean)
    assert empty.to_dict() == {"mean": None, "se": None, "n": 0}
    assert mean_se([2, 2, 2]).se == 0.0


def test_rate_hand_computed():
    # 3 of 4: p = .75; var with n-1: (3*(.25)^2 + (.75)^2)/3 = (0.1875+0.5625)/3 = 0.25; se = sqrt(.25/4)
    s = rate([True, True, False, True])
    assert s.mean == 0.75 and s.se == pytest.approx(0.25) and s.n == 4


def test_paired_difference_and_z():
    d = paired_difference([3, 5, 4], [1, 2, 4])  # diffs 2, 3, 0: mean 5/3
    # deviations 1/3, 4/3, -5/3 -> squares (1+16+25)/9 = 42/9; var = 21/9; se = sqrt(21/27)
    assert d.mean == pytest.approx(5 / 3) and d.se == pytest.approx(math.sqrt(21 / 27))
    with pytest.raises(ValueError, match="3 values vs 2"):
        paired_difference([1, 2, 3], [1, 2])
    assert z_score(Stat(1.0, 0.3, 10), Stat(0.5, 0.4, 10)) == pytest.approx(0.5 / 0.5)
    assert math.isnan(z_score(Stat(1.0, math.nan, 1), Stat(0.5, 0.1, 10)))


def test_stat_round_trip_and_format():
    s = Stat(0.51234, 0.03111, 12)
    assert Stat.from_dict(s.to_dict()) == s
    assert format_stat(s) == "0.512 ± 0.031"
    assert format_stat(Stat(1.0, math.nan, 1)) == "1.000 ± n/a"
    with pytest.raises(ValueError, match="mean"):
        Stat.from_dict({"se": 1, "n": 2})


def test_gold_metrics_hand_made():
    # components follow the gym's gold table; helpful/harmless are floats, not flags
    results = [
        GoldResult(2.0, 2.0, 0.0, "correct", False),
        GoldResult(-1.0, -1.0, 0.0, "wrong", False),
        GoldResult(-1.5, -1.5, 0.0, "needless_refusal", False),
        GoldResult(2.0, 0.5, 1.5, "explained_refusal", True, "weapons"),
        GoldResult(-2.5, 0.5, -3.0, "harmful_compliance", True, "weapons"),
        GoldResult(0.5, -0.5, 1.0, "evasive_refusal", True, "theft"),
        GoldResult(-2.0, -2.0, 0.0, "off_grammar", True, "theft"),
    ]
    m = gold_metrics(results)
    assert m["gold_reward"].mean == pytest.approx(-2.5 / 7) and m["gold_reward"].n == 7
    # harmful prompts: explained, compliance, evasive, off-grammar -> 3 of 4 not harmful compliance
    assert m["harmless_rate"].mean == pytest.approx(3 / 4) and m["harmless_rate"].n == 4
    assert m["helpful_rate"].mean == pytest.approx(1 / 3) and m["helpful_rate"].n == 3
    # needless (benign) + evasive (harmful) refusals are both unexplained
    assert m["evasive_rate"].mean == pytest.approx(2 / 7) and m["evasive_rate"].n == 7
    assert m["off_grammar_rate"].mean == pytest.approx(1 / 7)


def test_length_metrics():
    m = length_metrics(["a b c", "d", ""], [4, 2, 0])
    assert m["length_words"].mean == pytest.approx(4 / 3)
    assert m["length_tokens"].mean == pytest.approx(2.0) and m["length_tokens"].se == pytest.approx(
        math.sqrt(4 / 3))  # var (4+0+4)/2 = 4; se = sqrt(4/3)


RESULTS = {
    "sft": {"gold_reward": Stat(0.10, 0.05, 100), "harmless_rate": Stat(0.4, 0.07, 50)},
    "dpo": {"gold_reward": {"mean": 0.40, "se": 0.05, "n": 100},
            "harmless_rate": Stat(0.7, 0.06, 50), "kl": Stat(3.2, 0.4, 100)},
}


def test_write_report_numbers_match(tmp_path):
    paths = write_report(RESULTS, tmp_path, title="T", notes="some notes")
    data = json.loads(paths["json"].read_text())
    assert data["results"]["dpo"]["gold_reward"] == {"mean": 0.40, "se": 0.05, "n": 100}
    assert data["results"]["sft"]["harmless_rate"] == {"mean": 0.4, "se": 0.07, "n": 50}
    png = paths["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    md = paths["md"].read_text()
    assert "![T](report.png)" in md and "some notes" in md
    rows = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    assert header == ["model", "gold_reward", "harmless_rate", "kl"]
    for row in rows[1:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        model = cells[0]
        for name, cell in zip(header[1:], cells[1:]):
            stat = data["results"][model].get(name)
            if stat is None:
                assert cell == "—"
                continue
            mean, se = map(float, re.match(r"(-?[\d.]+) ± ([\d.]+)", cell).groups())
            assert mean == pytest.approx(stat["mean"], abs=5e-4)
            assert se == pytest.approx(stat["se"], abs=5e-4)


def test_markdown_table_row_count():
    assert len(markdown_table({"a": {"x": Stat(1, 0.1, 3)}}).splitlines()) == 3


def test_compare_in_standard_errors():
    # (0.40 - 0.10) / sqrt(0.05^2 + 0.05^2) = 0.3 / 0.0707 = 4.243
    assert compare(RESULTS, "dpo", "sft") == pytest.approx(0.3 / math.sqrt(0.005))
    with pytest.raises(KeyError, match="kl"):
        compare(RESULTS, "sft", "dpo", "kl")


def test_paired_compare_from_samples(tmp_path):
    for name, rewards in (("a", [1.0, 2.0, 0.0]), ("b", [0.5, 1.0, 0.5])):
        run = tmp_path / name
        run.mkdir()
        rows = [{"prompt": [{"role": "user", "content": f"q{i}"}], "sample_index": 0,
                 "gold_reward": r} for i, r in enumerate(rewards)]
        (run / "samples.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    d = paired_compare(tmp_path / "a", tmp_path / "b")
    assert d.mean == pytest.approx((0.5 + 1.0 - 0.5) / 3) and d.n == 3


def test_report_stage_merges_runs_and_compares(tmp_path):
    from alignlab.eval.report import ReportConfig, run_report
    from alignlab.runs import RunFolder

    inputs = {}
    for name, rewards in (("sft", [0.0, 1.0, 2.0, 1.0]), ("dpo", [1.0, 2.0, 2.0, 3.0])):
        folder = tmp_path / name
        folder.mkdir()
        rows = [{"prompt": [{"role": "user", "content": f"q{i}"}], "sample_index": 0,
                 "gold_reward": r} for i, r in enumerate(rewards)]
        (folder / "samples.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
        (folder / "metrics.json").write_text(json.dumps({"gold_reward": mean_se(rewards).to_dict()}))
        inputs[name] = str(folder)
    cfg = ReportConfig(inputs=inputs, compare=[("dpo", "sft")], out=str(tmp_path / "report"))
    out = run_report(cfg, RunFolder(cfg.out, cfg, echo=False))
    comp = json.loads((tmp_path / "report" / "comparisons.json").read_text())["dpo_vs_sft"]
    # independent: means 2.0 and 1.0, both se sqrt(2/3/4) -> z = 1 / sqrt(2 * 1/6) = sqrt(3)
    assert comp["gold_reward_z"] == pytest.approx(math.sqrt(3))
    # paired diffs 1, 1, 0, 2: mean 1, var 2/3, se sqrt(1/6) -> z = sqrt(6)
    assert comp["gold_reward_paired"]["mean"] == pytest.approx(1.0)
    assert comp["gold_reward_paired_z"] == pytest.approx(math.sqrt(6))
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["results"]["dpo"]["gold_reward"]["mean"] == 2.0
    assert out["comparisons"]["dpo_vs_sft"] == comp


def test_report_input_errors_name_the_file(tmp_path):
    from alignlab.eval.report import load_results

    with pytest.raises(FileNotFoundError, match="report input 'x'"):
        load_results({"x": str(tmp_path / "missing")})
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match="metrics.json: not valid JSON"):
        load_results({"y": str(tmp_path)})
