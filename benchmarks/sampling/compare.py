"""Collect the gym comparison of best-of-N, rejection-sampling FT, RSO, DPO and PPO (gold reward per KL).

    OMP_NUM_THREADS=2 alignlab run recipes/gym-sampling/rs_rounds.yaml    # RS-FT rounds, best-of-16
    OMP_NUM_THREADS=2 alignlab run recipes/gym-sampling/compare.yaml      # RSO, DPO variants, PPO
    python benchmarks/sampling/compare.py                                 # table, plot, results/

Rows: every evaluated policy (600 held-out prompts, gold ± se, KL to the SFT start ± se, the proxy
reward model's score); best-of-n for n = 1…16 from the SFT model's 16 samples per held-out prompt
(unbiased estimator, analytic KL); PPO's training curve (rollout gold and KL per logged iteration).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parents[1] / "src"))
from alignlab.eval.best_of_n import best_of_n_curve

RS = Path("runs/gym-sampling")
CMP = Path("runs/gym-sampling-compare")
POLICIES = [("SFT (start)", CMP / "eval_sft"), ("RS-FT round 1", RS / "eval_r1"),
            ("RS-FT round 2", RS / "eval_r2"), ("RS-FT round 3", RS / "eval_r3"),
            ("RSO, sigmoid-norm (DPO loss)", CMP / "eval_rso_dpo"),
            ("RSO, hinge-norm", CMP / "eval_rso_hinge_norm"),
            ("RSO at beta 2, sigmoid-norm", CMP / "eval_rso_beta2_dpo"),
            ("DPO on SFT samples ranked by the RM (sft-sample-rank)", CMP / "eval_sft_rank_dpo"),
            ("DPO on best-vs-worst of 16 SFT samples", CMP / "eval_bw_dpo"),
            ("DPO on the offline annotator pairs", CMP / "eval_offline_dpo"),
            ("PPO (40 iterations x 64 prompts)", CMP / "eval_ppo")]


def policy_rows() -> list[dict]:
    rows = []
    for name, folder in POLICIES:
        f = folder / "metrics.json"
        if f.is_file():
            m = json.loads(f.read_text())
            rows.append({"policy": name, "gold": m["gold_reward"]["mean"],
                         "gold_se": m["gold_reward"]["se"], "kl": m["kl"]["mean"],
                         "kl_se": m["kl"]["se"],
                         "proxy": m.get("proxy_reward", {}).get("mean"),
                         "off_grammar": m["off_grammar_rate"]["mean"],
                         "harmless": m["harmless_rate"]["mean"], "helpful": m["helpful_rate"]["mean"]})
    return rows


def best_of_n_rows() -> list[dict]:
    path = RS / "bon16" / "samples.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    pools = [([s["score"] for s in r["samples"]], [s["monitor"]["gold"] for s in r["samples"]])
             for r in rows]
    return best_of_n_curve(pools, [1, 2, 4, 8, 16])


def ppo_curve() -> list[dict]:
    path = CMP / "ppo" / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{"iteration": r["step"], "kl": r["kl"], "gold": r["monitor/gold"],
             "proxy": r["reward/mean"]} for r in rows if "monitor/gold" in r]


def pair_quality() -> list[dict]:
    """Each pair set's agreement with the gold preference (gold ties left out), its share of gold
    ties and its mean gold and RM margins, from the scored samples the pairs were made of."""
    folder = CMP / "sample"
    if not (folder / "samples.jsonl").is_file():
        return []
    scores = {}
    for line in (folder / "samples.jsonl").read_text().splitlines():
        row = json.loads(line)
        for s in row["samples"]:
            scores[(json.dumps(row["prompt"]), s["text"].strip())] = (s["monitor"]["gold"], s["score"])
    out = []
    for name in ("rso_pairs", "rso_beta2_pairs", "sft_rank_pairs", "pairs"):
        pairs = [json.loads(line) for line in (folder / f"{name}.jsonl").read_text().splitlines()]
        margins = []
        for p in pairs:
            key = json.dumps(p["prompt"])
            (gc, rc), (gr, rr) = scores[(key, p["chosen"].strip())], scores[(key, p["rejected"].strip())]
            margins.append((gc - gr, rc - rr))
        decided = [g for g, _ in margins if g != 0]
        out.append({"pairs": name, "n": len(pairs),
                    "gold_agreement": sum(g > 0 for g in decided) / len(decided),
                    "gold_ties": 1 - len(decided) / len(margins),
                    "gold_margin": sum(g for g, _ in margins) / len(margins),
                    "rm_margin": sum(r for _, r in margins) / len(margins)})
    return out


def markdown(policies: list[dict], bon: list[dict]) -> str:
    lines = ["| policy | gold reward | KL to SFT | proxy (RM) | off-grammar | harmless | helpful |",
             "|---|---|---|---|---|---|---|"]
    for r in policies:
        proxy = f"{r['proxy']:.3f}" if r["proxy"] is not None else "–"
        lines.append(f"| {r['policy']} | {r['gold']:.3f} ± {r['gold_se']:.3f} | {r['kl']:.2f} ± "
                     f"{r['kl_se']:.2f} | {proxy} | {r['off_grammar']:.3f} | {r['harmless']:.3f} | "
                     f"{r['helpful']:.3f} |")
    for b in bon:
        lines.append(f"| best-of-{b['n']} by the RM (inference) | {b['gold_mean']:.3f} ± "
                     f"{b['gold_se']:.3f} | {b['kl']:.2f} (analytic) | {b['proxy_mean']:.3f} | – | – "
                     "| – |")
    return "\n".join(lines) + "\n"


def pair_markdown(rows: list[dict]) -> str:
    head = ("| pair set | pairs | agreement with gold (gold ties left out) | gold ties | "
            "mean gold margin | mean RM margin |")
    lines = [head, "|---|---|---|---|---|---|"]
    lines += [f"| {r['pairs']} | {r['n']} | {r['gold_agreement']:.3f} | {r['gold_ties']:.3f} | "
              f"{r['gold_margin']:.3f} | {r['rm_margin']:.3f} |" for r in rows]
    return "\n".join(lines) + "\n"


def plot(policies: list[dict], bon: list[dict], ppo: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.5, 4.2))
    if bon:
        ax.plot([math.sqrt(b["kl"]) for b in bon], [b["gold_mean"] for b in bon], "o-",
                label="best-of-n (n = 1…16)")
    if ppo:
        ax.plot([math.sqrt(max(p["kl"], 0)) for p in ppo], [p["gold"] for p in ppo], ".:",
                alpha=0.6, label="PPO rollouts during training")
    for r in policies:
        ax.errorbar(math.sqrt(max(r["kl"], 0)), r["gold"], yerr=r["gold_se"], fmt="s", capsize=3,
                    label=r["policy"])
    ax.set_xlabel("√KL(policy ‖ SFT)")
    ax.set_ylabel("gold reward (held-out)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def main() -> None:
    policies, bon, ppo, pairs = policy_rows(), best_of_n_rows(), ppo_curve(), pair_quality()
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "compare.json").write_text(json.dumps({"policies": policies, "best_of_n": bon,
                                                  "ppo_curve": ppo, "pair_quality": pairs},
                                                 indent=1))
    (out / "compare.md").write_text(markdown(policies, bon) + "\n" + pair_markdown(pairs))
    plot(policies, bon, ppo, out / "gold_vs_kl.png")
    print(markdown(policies, bon) + "\n" + pair_markdown(pairs))


if __name__ == "__main__":
    main()
