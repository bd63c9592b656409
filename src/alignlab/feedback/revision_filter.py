"""Keep only the revisions a judge prefers to the initial answer (SL-CAI data filtering).

Bai et al. 2022 ("Constitutional AI", sec. 3) fine-tune on every final revision of a 52B model, whose
revisions are mostly improvements. A small reviser often copies its answer or makes it worse, so
training on every revision teaches little or the wrong thing. This filter asks a judge, the labeller
(a local or HTTP LM reading option probabilities, both orders averaged) or a reward model
(P = sigmoid(r_revision - r_initial)), for P(final revision ≻ initial answer) and keeps a row for
SL-CAI when P > ``min_prob`` (strictly: an unchanged revision is never kept, and one a reward model
scores equal to its answer, P = 0.5, is not kept at the default). The judging is a filter on data
already paid for: it is rerun whole when the stage is rerun, as it costs two forwards per row against
the three generations of a revision.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from alignlab.config import JudgeSettings, StrictModel
from alignlab.data.records import PreferencePair, messages_from_list
from alignlab.feedback.constitution import Constitution
from alignlab.feedback.labeling import PairLabeler, make_requests


class KeepSettings(StrictModel):
    """Which revisions become SL-CAI data: those ``judge`` prefers to the initial answer with
    probability above ``min_prob`` (both option orders averaged for a text judge)."""

    judge: JudgeSettings
    min_prob: float = Field(0.5, ge=0.0, lt=1.0)
    both_orders: bool = True


def judgeable(row: dict) -> bool:
    """A row with a non-empty final revision that differs from its initial answer."""
    return bool(row["final"]) and row["final"] != row["initial"]


def revision_probs(rows: Sequence[dict], labeler, constitution: Constitution,
                   seed: int) -> list[float | None]:
    """P(final revision ≻ initial answer) for each row from ``labeler`` (a
    :class:`~alignlab.feedback.labeling.PairLabeler`); ``None`` for rows that are not
    :func:`judgeable`."""
    todo = [r for r in rows if judgeable(r)]
    pairs = [PreferencePair(messages_from_list(r["prompt"]), r["final"], r["initial"], 1.0)
             for r in todo]
    labelled = labeler.label(make_requests(pairs, constitution, 1, seed)) if pairs else []
    by_index = {r["index"]: out["label"] for r, out in zip(todo, labelled)}
    return [by_index.get(r["index"]) for r in rows]


def keep_rows(rows: Sequence[dict], probs: Sequence[float | None], min_prob: float) -> list[dict]:
    """The per-row verdicts written to ``keep.jsonl``: ``{index, p_revision, kept}``."""
    return [{"index": r["index"], "p_revision": None if p is None else round(p, 6),
             "kept": p is not None and p > min_prob} for r, p in zip(rows, probs)]


def keep_stats(verdicts: Sequence[dict]) -> dict:
    """Counts for ``revise_stats.json``: rows judged, kept, and the mean P(revision better)."""
    probs = [v["p_revision"] for v in verdicts if v["p_revision"] is not None]
    return {"judged": len(probs), "kept": sum(v["kept"] for v in verdicts),
            "mean_p_revision": round(sum(probs) / len(probs), 4) if probs else None}


def judge_revisions(rows: Sequence[dict], keep: KeepSettings, constitution: Constitution,
                    seed: int) -> list[dict]:
    """Load ``keep.judge``, judge every :func:`judgeable` row, and return the :func:`keep_rows`."""
    from alignlab.feedback.judges import build_judge

    labeler = PairLabeler(build_judge(keep.judge), constitution, both_orders=keep.both_orders)
    return keep_rows(rows, revision_probs(rows, labeler, constitution, seed), keep.min_prob)
