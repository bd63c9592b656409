"""Rated single responses from the GSM8K authors' labelled model solutions (rating 1 = correct).

    python benchmarks/online/gsm8k_rated.py OUT.jsonl [SOURCE]

Each problem's four solutions (``6b_finetuning``, ``6b_verification``, ``175b_finetuning``,
``175b_verification``) become four ``{"prompt", "response", "rating"}`` rows for ``alignlab dro``.
"""

import json
import sys
from pathlib import Path

SOURCES = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")


def main() -> None:
    out = Path(sys.argv[1])
    source = Path(sys.argv[2] if len(sys.argv) > 2 else "../shared/data/gsm8k/model_solutions.dev.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for line in source.read_text().splitlines():
        problem = json.loads(line)
        rows += [{"prompt": problem["question"], "response": problem[key]["solution"],
                  "rating": float(problem[key]["is_correct"])} for key in SOURCES]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(rows)} rated solutions -> {out}")


if __name__ == "__main__":
    main()
