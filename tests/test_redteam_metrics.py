"""alignlab.redteam.metrics and .report against hand-derived numbers."""

from __future__ import annotations

import json
import math
import sys

import pytest

from alignlab.redteam.metrics import (
    attack_success_rate,
    bleu,
    bootstrap_ci,
    compare_runs,
    distinct_n,
    grouped_asr,
    mcnemar_exact,
    most_damaging,
    self_bleu,
    two_proportion_z,
    wilson_ci,
)
from alignlab.redteam.report import gate, html_report, markdown_report, summarise, write_report

Z95 = 1.959964


def row(verdict, attack="a", method="rl", category="violence", target="t1", reply="ok",
        harm_score=None):
    return {"attack": attack, "method": method, "category": category, "target": target,
            "reply": reply, "verdict": verdict, "harm_score": harm_score}


# --------------------------------------------------------------------------- rates and intervals


def test_asr_excludes_and_counts_unjudged():
    a = attack_success_rate([True, False, True, True])
    assert (a.asr, a.successes, a.n, a.unjudged) == (0.75, 3, 4, 0)
    b = attack_success_rate([1, 0, None, 1, 1, None])  # 1/0 accepted; None left out and counted
    assert (b.asr, b.successes, b.n, b.unjudged) == (0.75, 3, 4, 2)
    # se as alignlab.eval.stats.rate: sample variance of [1,0,1,1] = (3 * 0.25^2 + 0.75^2) / 3
    # = 0.75 / 3 = 0.25, se = sqrt(0.25 / 4) = 0.25
    assert a.se == pytest.approx(0.25)
    empty = attack_success_rate([None, None])
    assert empty.n == 0 and empty.unjudged == 2 and math.isnan(empty.asr)
    assert empty.to_dict()["asr"] is None
    with pytest.raises(ValueError):
        attack_success_rate(["yes"])


def test_wilson_3_of_4_by_hand():
    # p = 0.75, n = 4, z = 1.959964: z^2 = 3.841459, z^2/n = 0.960365, denom = 1.960365
    # centre = (0.75 + 0.480182) / 1.960365 = 0.627527
    # half = 1.959964 / 1.960365 * sqrt(0.1875/4 + 3.841459/64) = 0.999795 * sqrt(0.106898)
    #      = 0.999795 * 0.326953 = 0.326886  ->  [0.300641, 0.954413]
    low, high = wilson_ci(3, 4)
    assert low == pytest.approx(0.300641, abs=2e-6)
    assert high == pytest.approx(0.954413, abs=2e-6)
    # z from the level matches 1.959964
    z2n = Z95**2 / 4
    centre = (0.75 + z2n / 2) / (1 + z2n)
    assert (low + high) / 2 == pytest.approx(centre, abs=1e-6)


def test_wilson_edges():
    assert all(math.isnan(x) for x in wilson_ci(0, 0))
    low, high = wilson_ci(0, 10)  # keeps a width at 0/n: upper = z^2/(n+z^2) = 3.841459/13.841459
    assert low == 0.0 and high == pytest.approx(Z95**2 / (10 + Z95**2), abs=1e-6)
    low, high = wilson_ci(10, 10)
    assert high == 1.0 and low == pytest.approx(10 / (10 + Z95**2), abs=1e-6)
    with pytest.raises(ValueError):
        wilson_ci(5, 4)


def test_bootstrap_contains_asr_narrows_and_is_seeded():
    small = [1, 0, 1, 1] * 5  # ASR 0.75, n = 20
    large = [1, 0, 1, 1] * 100  # ASR 0.75, n = 400
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_s <= 0.75 <= hi_s and lo_l <= 0.75 <= hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 2  # width ~ 1/sqrt(n): 20x the n, ~4.5x narrower
    assert bootstrap_ci(small, seed=3) == bootstrap_ci(small, seed=3)
    assert bootstrap_ci(small, seed=0) != bootstrap_ci(small, seed=1)
    # roughly the normal interval 0.75 ± 1.96 * sqrt(0.1875/400) = ± 0.0424
    assert hi_l - lo_l == pytest.approx(2 * 1.96 * math.sqrt(0.1875 / 400), rel=0.15)
    lo90, hi90 = bootstrap_ci(large, level=0.90)
    assert hi90 - lo90 < hi_l - lo_l


def test_bootstrap_degenerate_cases():
    assert all(math.isnan(x) for x in bootstrap_ci([]))
    assert all(math.isnan(x) for x in bootstrap_ci([None]))
    assert bootstrap_ci([0, 0, 0]) == (0.0, 0.0)
    assert bootstrap_ci([True] * 7) == (1.0, 1.0)
    assert bootstrap_ci([1, None, 1]) == (1.0, 1.0)  # unjudged skipped


def test_grouped_asr():
    rows = [row(True), row(False), row(True), row(True),
            row(True, method="few_shot", category="fraud"),
            row(False, method="few_shot", category="fraud"),
            row(None, method="few_shot", category="fraud")]
    groups = grouped_asr(rows, keys=("method", "category"))
    assert [(g["method"], g["category"]) for g in groups] == [("rl", "violence"),
                                                            ("few_shot", "fraud")]
    rl, fs = groups
    assert (rl["asr"], rl["n"], rl["unjudged"]) == (0.75, 4, 0)
    assert rl["wilson"] == pytest.approx([0.300641, 0.954413], abs=2e-6)
    assert (fs["asr"], fs["n"], fs["unjudged"]) == (0.5, 2, 1)
    assert rl["bootstrap"][0] <= 0.75 <= rl["bootstrap"][1]
    assert len(grouped_asr(rows)) == 2  # default keys target, method, category


# --------------------------------------------------------------------------- diversity


def test_distinct_n_by_hand():
    texts = ["a b a", "b c"]
    # unigrams a b a b c: 3 unique / 5 total; bigrams (a b)(b a)(b c): 3 / 3
    assert distinct_n(texts, 1) == pytest.approx(3 / 5)
    assert distinct_n(texts, 2) == pytest.approx(1.0)
    assert distinct_n(["A b", "a B"], 1) == pytest.approx(2 / 4)  # lower-cased
    assert distinct_n(["a", "b"], 2) is None  # no bigrams at all


def test_bleu_clips_at_max_single_reference_count():
    # hyp "a a a" vs refs "a x", "a a y" (c = 3, closest r = 3 -> BP = 1)
    # p1 = min(3, max(1, 2)) / 3 = 2/3 (clipping at the SUM 1+2 would give 3/3)
    # p2: "a a" x2, max ref count 1 -> (1+1)/(2+1) = 2/3; p3: (0+1)/(1+1) = 1/2; p4: (0+1)/(0+1) = 1
    assert bleu("a a a", ["a x", "a a y"]) == pytest.approx((2 / 3 * 2 / 3 * 1 / 2) ** 0.25)


def test_bleu_brevity_penalty_and_closest_length():
    # c = 2, r = 4: BP = exp(1 - 4/2) = e^-1; all p_n = 1 (p3, p4 are (0+1)/(0+1))
    assert bleu("a b", ["a b c d"]) == pytest.approx(math.exp(-1))
    # c = 3, refs of length 2 and 4 are equally close -> the shorter (2) -> c > r -> BP = 1
    assert bleu("a b c", ["a b", "a b c d"]) == pytest.approx(1.0)
    assert bleu("", ["a"]) == 0.0 and bleu("a", []) == 0.0


def test_self_bleu_by_hand():
    assert self_bleu(["the cat sat", "The cat  sat"]) == pytest.approx(1.0)
    # no shared unigram: p1 = 0 -> BLEU exactly 0 (smoothing is only for n > 1)
    assert self_bleu(["x y z", "p q r"]) == 0.0
    # "a b c d" vs "a b x y" (and back, symmetric): p1 = 2/4, p2 = (1+1)/(3+1), p3 = (0+1)/(2+1),
    # p4 = (0+1)/(1+1), BP = 1 -> (1/2 * 1/2 * 1/3 * 1/2)^(1/4) = (1/24)^(1/4) = 0.451801
    assert self_bleu(["a b c d", "a b x y"]) == pytest.approx((1 / 24) ** 0.25)
    assert self_bleu(["a b c d", "a b x y"]) == pytest.approx(0.451801, abs=1e-6)
    assert self_bleu(["only one"]) is None and self_bleu([]) is None


def test_self_bleu_is_mean_of_leave_one_out_bleu_and_sample_is_seeded():
    texts = ["a a a", "a x", "a a y"]
    expected = (bleu("a a a", ["a x", "a a y"]) + bleu("a x", ["a a a", "a a y"])
                + bleu("a a y", ["a a a", "a x"])) / 3
    assert self_bleu(texts) == pytest.approx(expected)
    many = [f"w{i} w{i % 3} common" for i in range(30)]
    assert self_bleu(many, sample=5, seed=1) == self_bleu(many, sample=5, seed=1)
    assert self_bleu(texts, sample=5) == pytest.approx(expected)  # set smaller than sample: all


# --------------------------------------------------------------------------- examples, comparisons


def test_most_damaging_order_and_ties():
    rows = [row(True, attack="low", harm_score=0.2), row(False, attack="failed", harm_score=0.99),
            row(True, attack="tie1", harm_score=0.8), row(True, attack="noscore"),
            row(True, attack="tie2", harm_score=0.8), row(None, attack="unjudged", harm_score=1.0)]
    assert [r["attack"] for r in most_damaging(rows, 3)] == ["tie1", "tie2", "low"]
    assert [r["attack"] for r in most_damaging(rows, 10)] == ["tie1", "tie2", "low", "noscore"]
    assert most_damaging(rows, 0) == []


def test_two_proportion_z_by_hand():
    # 30/100 vs 50/100: pooled p = 0.4, se = sqrt(0.4*0.6*(2/100)) = sqrt(0.0048) = 0.0692820
    # z = 0.2 / 0.0692820 = 2.886751; two-sided p = erfc(2.886751/sqrt 2) = 0.0038924
    z, p = two_proportion_z(30, 100, 50, 100)
    assert z == pytest.approx(2.886751, abs=1e-6)
    assert p == pytest.approx(0.0038924, abs=1e-7)
    assert two_proportion_z(0, 10, 0, 20) == (0.0, 1.0)
    assert all(math.isnan(x) for x in two_proportion_z(0, 0, 1, 2))


def test_mcnemar_exact_by_hand():
    assert mcnemar_exact(5, 0) == pytest.approx(2 * 0.5**5)  # 0.0625
    assert mcnemar_exact(0, 5) == pytest.approx(0.0625)
    assert mcnemar_exact(3, 1) == pytest.approx(2 * (1 + 4) / 16)  # 0.625
    assert mcnemar_exact(2, 2) == 1.0  # 2 * 11/16 clipped to 1
    assert mcnemar_exact(0, 0) == 1.0


def test_compare_runs_unpaired_uses_z_test():
    a = [row(i < 30, attack=f"a{i}") for i in range(100)]
    b = [row(i < 50, attack=f"b{i}") for i in range(100)]
    out = compare_runs(a, b)
    assert out["diff"] == pytest.approx(0.2)
    assert out["z"] == pytest.approx(2.886751, abs=1e-6)
    assert out["p_z"] == pytest.approx(0.0038924, abs=1e-7)
    assert out["paired"] is None and out["n_pairs"] == 0
    assert out["test"] == "two-proportion z (pooled)"


def test_compare_runs_paired_uses_mcnemar_and_groups():
    # 10 shared attacks: 5 succeed in a only, 3 succeed in both, 2 fail in both -> b=5, c=0
    attacks = [f"q{i}" for i in range(10)]
    a = [row(i < 8, attack=q) for i, q in enumerate(attacks)]
    b = [row(5 <= i < 8, attack=q) for i, q in enumerate(attacks)]
    b.append(row(None, attack="q0", method="rl"))  # unjudged: not paired, counted in b.unjudged
    out = compare_runs(a, b)
    assert out["diff"] == pytest.approx(0.3 - 0.8)
    assert out["paired"] == {"only_a": 5, "only_b": 0, "diff": -0.5, "p_mcnemar": 0.0625}
    assert out["n_pairs"] == 10 and out["test"] == "exact McNemar (paired)"
    assert out["b"]["unjudged"] == 1
    # the same attack text under another method is not a pair
    assert compare_runs(a, [dict(r, method="zero_shot") for r in b])["paired"] is None
    grouped = compare_runs(a + [row(True, attack="z", category="fraud")], b, group_key="category")
    assert [g["category"] for g in grouped["groups"]] == ["violence", "fraud"]
    assert grouped["groups"][0]["paired"]["p_mcnemar"] == 0.0625
    assert grouped["groups"][1]["b"]["n"] == 0


# --------------------------------------------------------------------------- report


SCRIPT = "<script>alert(1)</script>"


def report_rows():
    return [row(True, attack="hurt them", reply=f"sure {SCRIPT} a|b\nline2", harm_score=0.9),
            row(False, attack="hurt them now"), row(True, attack="please hurt", harm_score=0.5),
            row(True, attack="hurt them", harm_score=0.7),
            row(True, method="few_shot", category="fraud", target="t2", attack="steal cash"),
            row(False, method="few_shot", category="fraud", target="t2"),
            row(None, method="few_shot", category="fraud", target="t2")]


def test_summarise_contents():
    s = summarise(report_rows(), top_k=2)
    o = s["overall"]
    assert (o["asr"], o["successes"], o["n"], o["unjudged"]) == (4 / 6, 4, 6, 1)
    assert o["wilson"] == pytest.approx(list(wilson_ci(4, 6)))
    assert o["bootstrap"][0] <= 4 / 6 <= o["bootstrap"][1]
    assert s["ci"]["shown"] == "wilson"
    assert [e["category"] for e in s["by_category"]] == ["violence", "fraud"]
    assert [e["target"] for e in s["by_target"]] == ["t1", "t2"]
    div = {d["method"]: d for d in s["diversity"]}
    # successful rl attacks: "hurt them", "please hurt", "hurt them" -> unigrams 6 total, 3 unique
    assert div["rl"]["n_successful"] == 3 and div["rl"]["distinct_1"] == pytest.approx(3 / 6)
    assert div["few_shot"]["n_successful"] == 1 and div["few_shot"]["self_bleu"] is None
    assert [e["harm_score"] for e in s["most_damaging"]] == [0.9, 0.7]
    json.dumps(s, allow_nan=False)  # strict JSON


def test_markdown_report_rows_and_escaping():
    md = markdown_report(summarise(report_rows()))
    # violence: 3/4 -> 0.750 [0.301, 0.954]; fraud: 1/2 judged, 1 unjudged
    assert "| violence | 0.750 [0.301, 0.954] | 3 | 4 | 0 |" in md
    lo, hi = wilson_ci(1, 2)
    assert f"| fraud | 0.500 [{lo:.3f}, {hi:.3f}] | 1 | 2 | 1 |" in md
    assert "| rl | 0.750 [0.301, 0.954] | 3 | 4 | 0 |" in md
    assert "Wilson" in md and "1 unjudged" in md
    assert SCRIPT not in md and "&lt;script&gt;" in md
    assert "a\\|b<br>line2" in md  # pipe escaped, newline kept inside the cell
    example = next(line for line in md.splitlines() if "&lt;script&gt;" in line)
    assert example.count(" | ") == 6  # 7 columns, none split by the reply's "|"


def test_html_report_escapes_script():
    page = html_report(summarise(report_rows()))
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<td>violence</td><td>0.750 [0.301, 0.954]</td>" in page
    assert "http" not in page  # self-contained: no external assets


def test_gate_boundary():
    s = summarise([row(True), row(False), row(True), row(True)])  # ASR 0.75
    assert gate(s, None) == 0
    assert gate(s, 0.75) == 0  # equal to the threshold passes
    assert gate(s, 0.7499) == 1
    assert gate(s, 0.8) == 0
    assert gate(summarise([row(None)]), 0.5) == 1  # nothing judged: fails closed
    assert gate(summarise([row(None)]), None) == 0


def test_write_report_skips_plot_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    s = write_report(report_rows(), tmp_path)
    assert s["plot"] is None and not (tmp_path / "report.png").exists()
    for name in ("report.json", "report.md", "report.html"):
        assert (tmp_path / name).is_file()
    assert json.loads((tmp_path / "report.json").read_text())["overall"]["n"] == 6
    assert "![" not in (tmp_path / "report.md").read_text()


def test_write_report_plot_when_matplotlib_present(tmp_path):
    pytest.importorskip("matplotlib")
    s = write_report(report_rows(), tmp_path)
    assert s["plot"] == "report.png" and (tmp_path / "report.png").stat().st_size > 0
    assert "](report.png)" in (tmp_path / "report.md").read_text()
