"""Each self-rewarding iteration's judge on the SAME samples: does the judge itself drift?

    OMP_NUM_THREADS=1 python benchmarks/sampling/judge_fixed_samples.py

In a self-rewarding run (Yuan et al. 2024, sec. 3.3 measures M1..M3 as judges on a fixed held-out
set) the ``sample_t`` stages report M_t's agreement with gold on M_t's own samples, so a change
across iterations mixes a better or worse judge with a changed sample distribution. Here every
model of ``RUN`` (M1 = ``sft``, M2..M4 = ``dpo_1..3``) re-scores fixed sample sets (``SETS``, the
samples of ``sample_1`` and ``sample_3``, gold already stored) in ``digits`` mode with the recipe's
rubric; agreement with gold and the mean self-score go to ``RUN/judge_fixed_samples.json``.
Nothing to pass: the paths are the constants below.
"""

from __future__ import annotations

import json
from pathlib import Path

from eft_data import judge_template  # benchmarks/sampling/eft_data.py (the script's folder)

from alignlab.config import ModelSettings, SelfRewardSettings
from alignlab.data.records import messages_from_list
from alignlab.eval.agreement import judge_agreement
from alignlab.feedback.self_reward import SelfRewardScorer
from alignlab.models.loading import load_causal_lm
from alignlab.sampling.judge_report import selected_agreement

RUN = Path("runs/gym-self-rewarding-eft")
RECIPE = Path("recipes/gym-sampling/self_rewarding.yaml")
JUDGES = {"M1": "sft", "M2": "dpo_1", "M3": "dpo_2", "M4": "dpo_3"}
SETS = ("sample_1", "sample_3")


def fixed_agreement(scorer: SelfRewardScorer, rows: list[dict]) -> dict:
    """``scorer``'s scores of every stored sample against the stored gold monitor."""
    prompts = [messages_from_list(r["prompt"]) for r in rows for _ in r["samples"]]
    texts = [s["text"] for r in rows for s in r["samples"]]
    scores, groups, k = scorer.score(prompts, texts), [], 0
    for row in rows:
        n = len(row["samples"])
        groups.append((scores[k:k + n], [s["monitor"]["gold"] for s in row["samples"]]))
        k += n
    return {**judge_agreement(groups), **selected_agreement(groups),
            "mean_self_score": sum(scores) / len(scores)}


def main() -> None:
    template = judge_template(RECIPE)
    sets = {name: [json.loads(line) for line in (RUN / name / "samples.jsonl").open()]
            for name in SETS}
    report = {}
    for judge, stage in JUDGES.items():
        model, tokenizer = load_causal_lm(ModelSettings(path=str(RUN / stage / "model")),
                                          for_training=False)
        scorer = SelfRewardScorer(model, tokenizer, SelfRewardSettings(mode="digits",
                                  judgements=1), template, batch_size=64)
        for name, rows in sets.items():
            report[f"{judge} on {name}"] = fixed_agreement(scorer, rows)
            print(judge, name, json.dumps(report[f"{judge} on {name}"]), flush=True)
    (RUN / "judge_fixed_samples.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
