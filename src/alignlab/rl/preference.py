"""Pairwise preferences for the self-play algorithms: P(y ≻ y' | x) from a pair judge.

SPPO (Wu et al. 2024, §5: PairRM), Nash-MD (Munos et al. 2023) and XPO (Xie et al. 2024) are defined
for a general preference model P(y ≻ y' | x), not a scalar reward. With ``preference:`` in an online
config they read P from a judge instead of σ(r(y) − r(y')): any judge of the AI-feedback work
(``alignlab.feedback``: a local LM or an HTTP endpoint reading the (A)/(B) option probabilities
under a comparison principle, averaged over both orders; or a reward model, which gives back
Bradley–Terry). The labeller is the ``label`` stage's :class:`~alignlab.feedback.labeling.PairLabeler`,
so the prompts, option handling and position-bias averaging are the same.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from alignlab.config import JudgeSettings, StrictModel
from alignlab.data.records import Messages, PreferencePair
from alignlab.feedback.constitution import load_constitution
from alignlab.feedback.judges import build_judge
from alignlab.feedback.labeling import PairLabeler, make_requests


class PreferenceSettings(StrictModel):
    """``preference:`` of an online config (sppo, nash_md, xpo): the pair judge, the constitution
    its comparison principles come from, how many principles per pair and whether both option orders
    are asked (averaged, which cancels the judge's position bias)."""

    judge: JudgeSettings
    constitution: str = "default"
    principles_per_pair: int = Field(1, ge=1)
    both_orders: bool = True
    seed: int = 0


class PairPreference:
    """``probs(prompts, firsts, seconds, draw)``: P(first ≻ second) for each pair."""

    def __init__(self, settings: PreferenceSettings, device=None):
        self.settings = settings
        self.constitution = load_constitution(settings.constitution)
        self.labeler = PairLabeler(build_judge(settings.judge, device), self.constitution,
                                   settings.both_orders)

    def probs(self, prompts: Sequence[Messages], firsts: Sequence[str], seconds: Sequence[str],
              draw: int = 0) -> list[float]:
        """P(first ≻ second); principles are drawn from ``(seed, draw, pair index)``, so a resumed
        run asks the same questions."""
        pairs = [PreferencePair(p, a, b, 0.5) for p, a, b in zip(prompts, firsts, seconds)]
        requests = make_requests(pairs, self.constitution, self.settings.principles_per_pair,
                                 self.settings.seed * 1_000_003 + draw)
        return [float(row["label"]) for row in self.labeler.label(requests)]
