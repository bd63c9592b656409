"""Preference-model robustness (``alignlab pm-check``): Bai et al. 2022, "Training a
Helpful and Harmless Assistant with RLHF", §4.1–4.2 (Figures 9–10 and the robustness study).

The comparisons are split in halves and two PMs trained, a *train PM* and a *test PM* (two ``rm``
stages with ``data.limit`` / ``data.offset``). A policy is then pushed against the train PM and scored
by both: where the test PM stops following the train PM, the policy is exploiting the train PM's
errors rather than learning the preference. Here the pushing is best-of-n (Bai et al. use RL; best-of-n
gives the whole curve from one pool of samples, with KL = log n − (n − 1)/n): a ``sample`` stage
scores N samples per prompt with the train PM (``score``) and records the test PM (and the gym's
gold reward, when there is one) as monitors; this stage reads its ``samples.jsonl``.

Reported (``report.json``, ``report.md``, ``pm_check.png``):

- ``best_of_n``: for n = 1, 2, 4, …, N the unbiased best-of-n estimate (Gao et al. 2022; see
  :mod:`alignlab.eval.best_of_n`) of the train PM's, the test PM's and the gold score of the train
  PM's pick, against √KL. Scores are reported as gains over n = 1, since a PM's offset is arbitrary.
- ``agreement``: over every pair of samples to the same prompt, the two PMs' preference
  probabilities σ(r_i − r_j) (offset-free): the mean KL(Bern(p_train) ‖ Bern(p_test)) and the rate at
  which both PMs prefer the same sample — overall and per bin of the pair's mean train-PM score
  (``bins`` quantile bins, lowest first). Bai et al. found the PMs agree at low scores and drift
  apart at high scores, where samples are rare. Departure: the paper compares the PMs' score
  distributions; scores of two separately trained PMs have unrelated offsets and scales, so we
  compare what a PM is used for, pairwise preferences, and report the KL between the two
  standardised score histograms (``score_histogram_kl``) alongside.

Calibration (Bai et al.'s Figure 9: predicted against observed preference probability) is the
``eval`` stage's pair mode (``pairs:`` with ``scorer: reward_model``): reliability bins, ECE and a
reliability diagram on held-out labelled pairs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import Field

from alignlab.config import StageConfig
from alignlab.data.sources import iter_jsonl
from alignlab.eval.best_of_n import best_of_n_curve
from alignlab.runs import RunFolder


class PMCheckConfig(StageConfig):
    """Train-PM vs test-PM robustness from a ``sample`` stage's rows."""

    stage: Literal["pm-check"] = "pm-check"
    samples: str
    test_monitor: str = "test_pm"
    gold_monitor: str | None = "gold"
    ns: list[Annotated[int, Field(ge=1)]] | None = None
    bins: int = Field(5, ge=1)
    histogram_bins: int = Field(20, ge=2)


def read_samples(path: str, test: str, gold: str | None) -> list[dict[str, list[float]]]:
    """Per prompt: the train-PM scores, the test-PM scores and (if recorded) the gold scores.
    A row that is not JSON, or lacks the samples or a monitor, is an error naming file:line:field."""
    rows = []
    for raw in iter_jsonl(Path(path)):
        if raw.error is not None:
            raise raw.error
        samples = raw.data.get("samples")
        if not isinstance(samples, list):
            raise raw.where.error("samples", "expected the sample stage's list of samples")
        for j, s in enumerate(samples):
            missing = [m for m in (test, gold) if m and m not in s.get("monitor", {})]
            if missing:
                raise raw.where.error(f"samples[{j}].monitor", f"has no {missing[0]!r}; score the "
                                      "samples with it as a monitor of the sample stage")
        rows.append({"train": [s["score"] for s in samples],
                     "test": [s["monitor"][test] for s in samples],
                     "gold": [s["monitor"][gold] for s in samples] if gold else []})
    if not rows:
        raise ValueError(f"{path}: no sample rows")
    return rows


def bernoulli_kl(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """KL(Bern(p) ‖ Bern(q)) in nats, elementwise, with both clamped into [eps, 1 − eps]."""
    p, q = p.clamp(eps, 1 - eps), q.clamp(eps, 1 - eps)
    return p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()


def pair_stats(rows: Sequence[dict]) -> list[tuple[float, float, bool]]:
    """Per within-prompt sample pair (i < j): (mean train score, KL of the two PMs' preference
    probabilities σ(r_i − r_j), whether both PMs prefer the same sample; equal scores agree only
    with equal scores)."""
    out = []
    for row in rows:
        train = torch.tensor(row["train"], dtype=torch.float64)
        test = torch.tensor(row["test"], dtype=torch.float64)
        i, j = torch.triu_indices(len(train), len(train), offset=1)
        d_train, d_test = train[i] - train[j], test[i] - test[j]
        decided = (d_train != 0) & (d_test != 0)
        agree = torch.where(decided, (d_train > 0) == (d_test > 0), d_train == d_test)
        kl = bernoulli_kl(torch.sigmoid(d_train), torch.sigmoid(d_test))
        out += zip(((train[i] + train[j]) / 2).tolist(), kl.tolist(), agree.tolist())
    return out


def summarise(pairs: Sequence[tuple[float, float, bool]]) -> dict[str, float]:
    n = len(pairs)
    return {"pairs": n, "kl": sum(p[1] for p in pairs) / n, "agreement": sum(p[2] for p in pairs) / n,
            "mean_train_score": sum(p[0] for p in pairs) / n}


def agreement_by_bin(pairs: list[tuple[float, float, bool]], bins: int) -> dict:
    """Overall and per quantile bin of the pair's mean train-PM score (lowest bin first)."""
    ordered = sorted(pairs, key=lambda p: p[0])
    edges = [round(k * len(ordered) / bins) for k in range(bins + 1)]
    per_bin = [summarise(ordered[a:b]) for a, b in pairwise(edges) if b > a]
    return {"overall": summarise(ordered), "bins": per_bin}


def histogram_kl(a: Sequence[float], b: Sequence[float], bins: int, eps: float = 1e-4) -> float:
    """KL(hist(z(a)) ‖ hist(z(b))) on common equal-width bins of the standardised scores
    (add-``eps`` smoothing so an empty bin does not make it infinite)."""
    za, zb = standardise(a), standardise(b)
    lo, hi = min(za + zb), max(za + zb)
    width = (hi - lo) / bins or 1.0

    def hist(z):
        counts = [eps] * bins
        for v in z:
            counts[min(int((v - lo) / width), bins - 1)] += 1
        total = sum(counts)
        return [c / total for c in counts]

    pa, pb = hist(za), hist(zb)
    return sum(p * math.log(p / q) for p, q in zip(pa, pb))


def standardise(values: Sequence[float]) -> list[float]:
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values)) or 1.0
    return [(v - mean) / sd for v in values]


def best_of_n_rows(rows: Sequence[dict], ns: Sequence[int]) -> list[dict]:
    """Per n: the train PM's pick scored by the train PM, the test PM and gold (gains over n = 1)."""
    test = best_of_n_curve([(r["train"], r["test"]) for r in rows], ns)
    gold = best_of_n_curve([(r["train"], r["gold"]) for r in rows], ns) if rows[0]["gold"] else None
    out = []
    for k, t in enumerate(test):
        row = {"n": t["n"], "kl": t["kl"], "sqrt_kl": t["sqrt_kl"],
               "train_pm_gain": t["proxy_gain_mean"], "train_pm_gain_se": t["proxy_gain_se"],
               "test_pm_gain": t["gold_gain_mean"], "test_pm_gain_se": t["gold_gain_se"]}
        if gold:
            row.update(gold=gold[k]["gold_mean"], gold_se=gold[k]["gold_se"])
        out.append(row)
    return out


def default_ns(m: int) -> list[int]:
    """1, 2, 4, … up to the number of samples per prompt."""
    return [2 ** k for k in range(int(math.log2(m)) + 1)]


def run_pm_check(cfg: PMCheckConfig, run: RunFolder) -> Path:
    """Robustness: best-of-n against the train PM, agreement of the two PMs by score bin."""
    rows = read_samples(cfg.samples, cfg.test_monitor, cfg.gold_monitor)
    m = min(len(r["train"]) for r in rows)
    ns = cfg.ns or default_ns(m)
    if max(ns) > m:
        raise ValueError(f"ns: {max(ns)} is more than the {m} samples per prompt in {cfg.samples}")
    report = {"prompts": len(rows), "samples_per_prompt": m, "best_of_n": best_of_n_rows(rows, ns),
              "agreement": agreement_by_bin(pair_stats(rows), cfg.bins),
              "score_histogram_kl": histogram_kl([v for r in rows for v in r["train"]],
                                                 [v for r in rows for v in r["test"]],
                                                 cfg.histogram_bins)}
    run.write_json("report.json", report)
    (run.path / "report.md").write_text(report_markdown(report))
    plot_report(report, run.path / "pm_check.png")
    run.log(f"pm-check: agreement {report['agreement']['overall']['agreement']:.3f}, "
            f"by bin {[round(b['agreement'], 3) for b in report['agreement']['bins']]}")
    return run.path


def report_markdown(report: dict) -> str:
    lines = ["# PM robustness", "", "| n | √KL | train PM gain | test PM gain | gold |",
             "|---|---|---|---|---|"]
    for r in report["best_of_n"]:
        gold = f"{r['gold']:.3f} ± {r['gold_se']:.3f}" if "gold" in r else "–"
        lines.append(f"| {r['n']} | {r['sqrt_kl']:.2f} | {r['train_pm_gain']:.3f} ± "
                     f"{r['train_pm_gain_se']:.3f} | {r['test_pm_gain']:.3f} ± "
                     f"{r['test_pm_gain_se']:.3f} | {gold} |")
    lines += ["", "| train-PM score bin | pairs | mean train score | agreement | KL(p_train ‖ p_test) |",
              "|---|---|---|---|---|"]
    for k, b in enumerate(report["agreement"]["bins"]):
        lines.append(f"| {k + 1} | {b['pairs']} | {b['mean_train_score']:.3f} | "
                     f"{b['agreement']:.3f} | {b['kl']:.4f} |")
    o = report["agreement"]["overall"]
    overall = (f"| all | {o['pairs']} | {o['mean_train_score']:.3f} | {o['agreement']:.3f} | "
               f"{o['kl']:.4f} |")
    lines += [overall, "",
              f"KL between the standardised score histograms: {report['score_histogram_kl']:.4f}"]
    return "\n".join(lines) + "\n"


def plot_report(report: dict, path: Path) -> None:
    """The train PM's, the test PM's and the gold score of the best-of-n pick against √KL."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    rows = report["best_of_n"]
    x = [r["sqrt_kl"] for r in rows]
    ax.plot(x, [r["train_pm_gain"] for r in rows], "o-", label="train PM")
    ax.plot(x, [r["test_pm_gain"] for r in rows], "s-", label="test PM")
    if "gold" in rows[0]:
        ax.plot(x, [r["gold"] - rows[0]["gold"] for r in rows], "^-", label="gold")
    ax.set_xlabel("√KL (best-of-n against the train PM)")
    ax.set_ylabel("score gain over n = 1")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
