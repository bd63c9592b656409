"""D2O training lists from the ``sample`` stage's rows and a file of human negatives.

D2O (Duan et al. 2024, arXiv 2403.03419, sec. 3.2) trains on one human negative per example with K
responses sampled from the initial model as the positives. ``d2o_lists`` joins the sampled rows
(``samples.jsonl``) with the negatives by prompt and writes ranked lists that ``alignlab dpo`` with
``loss: d2o`` reads: ``{"prompt", "responses": [sample_1, ..., sample_K, negative],
"scores": [1, ..., 1, 0]}``.
"""

from __future__ import annotations

from alignlab.config import DataSettings
from alignlab.data.loading import load_records
from alignlab.data.records import BinaryFeedback, Messages, messages_from_list, messages_to_list


def load_negatives(settings: DataSettings) -> list[BinaryFeedback]:
    """The undesirable completions of ``settings``' source: the ``rejected`` side of pair data, or
    the undesirable rows of binary (KTO-style) data; read by the ordinary readers, so a bad row
    raises with its file, line and field."""
    return [r for r in load_records(settings, "binary").records if not r.desirable]


def d2o_lists(rows: list[dict], negatives: list[BinaryFeedback]) -> tuple[list[dict], int]:
    """One ranked list per negative whose prompt was sampled (module docstring), and how many
    negatives had no sampled prompt. Samples are stripped of surrounding whitespace like the stage's
    other outputs; a prompt sampled twice uses its first row."""
    samples: dict[Messages, list[str]] = {}
    for row in rows:
        samples.setdefault(messages_from_list(row["prompt"]),
                           [s["text"].strip() for s in row["samples"]])
    out, unmatched = [], 0
    for negative in negatives:
        texts = samples.get(negative.prompt)
        if texts is None:
            unmatched += 1
            continue
        out.append({"prompt": messages_to_list(negative.prompt),
                    "responses": texts + [negative.completion],
                    "scores": [1.0] * len(texts) + [0.0]})
    return out, unmatched
