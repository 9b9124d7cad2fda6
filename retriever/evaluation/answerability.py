"""How well a search's confidence tells a right top span from a wrong one (or from "not here").

Every benchmark gets these figures, with or without unanswerable questions: the AUC of the top
span's confidence between queries whose top span answers (hit@1) and the rest (wrong top spans,
unanswerable questions), and precision/recall of abstaining below a threshold: of the searches held
back, the share whose top span did not answer, and of those that did not, the share held back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

REPORT_THRESHOLD = 0.3  # reported when no abstention threshold is configured (CHUNKLESS_ABSTAIN)


@dataclass
class Answerability:
    """Confidence against whether the top span answered, over one benchmark run.

    auc: P(a right top span's confidence > a wrong one's), ties 1/2; None without both kinds or confidences.
    precision / recall / answered: of abstaining below `threshold` (None confidence counts as below):
    share of abstentions that were wrong, share of wrong ones abstained on, share of right ones kept.
    """

    n: int
    auc: float | None
    threshold: float
    precision: float | None
    recall: float | None
    answered: float | None

    def line(self) -> str:
        def f(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.3f}"

        return (
            f"confidence, top span answers vs not ({self.n} searches): AUC {f(self.auc)}; abstain below "
            f"{self.threshold:.2f}: precision {f(self.precision)}, recall {f(self.recall)}, "
            f"{f(self.answered)} of right top spans kept"
        )


def auc(pos: list[float], neg: list[float]) -> float | None:
    """Probability that a random answerable question's top score beats an unanswerable one's (ties 1/2)."""
    if not pos or not neg:
        return None
    p, n = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    allv = np.concatenate([p, n])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv))
    ranks[order] = np.arange(1, len(allv) + 1)
    for v in np.unique(allv):  # average ranks over ties
        m = allv == v
        ranks[m] = ranks[m].mean()
    return float((ranks[: len(p)].sum() - len(p) * (len(p) + 1) / 2) / (len(p) * len(n)))


def answerability(confidences: Sequence[float | None], right: Sequence[bool], threshold: float) -> Answerability:
    """The figures for searches with these confidences, `right[i]`: search i's top span answered."""

    pos = [c for c, r in zip(confidences, right, strict=True) if r]
    neg = [c for c, r in zip(confidences, right, strict=True) if not r]
    known = all(c is not None for c in confidences)
    held_pos = sum(1 for c in pos if c is None or c < threshold)
    held_neg = sum(1 for c in neg if c is None or c < threshold)
    held = held_pos + held_neg
    return Answerability(
        n=len(right),
        auc=auc([c or 0.0 for c in pos], [c or 0.0 for c in neg]) if known else None,
        threshold=threshold,
        precision=held_neg / held if held else None,
        recall=held_neg / len(neg) if neg else None,
        answered=1 - held_pos / len(pos) if pos else None,
    )
