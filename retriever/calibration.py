"""Answerability: the probability that a query's top span answers it, from a few features of the ranking.

`confidence` is a logistic model over the features `answer_features` computes for the top span
(its final score, its margin over the next span, its sentence-vector and in-context cosines, its BM25 and
query-term coverage, the best segment's MaxSim per query token). The parameters were fitted by
`scripts/experiment_speed.py --fit-calibration` on squad2-dev (answerable questions whose top span
holds a gold answer = 1; unanswerable questions and wrong top spans = 0; half the questions held out
to check), and ship as `calibration.json` beside this module: nothing is fitted at query time.
A confidence of 0.8 means: of top spans scored 0.8 on that benchmark, about 80% answered.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retriever.lexical import LexicalStats, UnitStats, coverage, terms
from retriever.sentence_table import SentenceCandidates
from schemas.models import SpanResult

PARAMS = Path(__file__).with_name("calibration.json")
FEATURES = (
    "score",
    "margin",
    "sentence_cos",
    "context",
    "lexical",
    "coverage",
    "segment",
    "log_words",
    "idf_coverage",
    "missing",
)


def lexical_features(query: str, texts: Sequence[str], top: int) -> dict[str, float]:
    """IDF-weighted query-term evidence over the candidate sentences `texts` (IDF over them).

    idf_coverage: share of the query terms' IDF mass found in the top sentence; missing: share of it
    found in none of the candidates (SQuAD 2.0's unanswerable questions often name what the text lacks).
    """
    unit = UnitStats.of(texts)
    stats = LexicalStats()
    stats.add("candidates", unit)
    q = set(terms(query))
    if not q or not texts:
        return {"idf_coverage": 0.0, "missing": 0.0}
    idf = {t: stats.idf(t) for t in q}
    mass = sum(idf.values()) or 1.0
    in_top = set(unit.counts[top])
    return {
        "idf_coverage": sum(v for t, v in idf.items() if t in in_top) / mass,
        "missing": sum(v for t, v in idf.items() if stats.df.get(t, 0) == 0) / mass,
    }


def answer_features(c: SentenceCandidates, spans: Sequence[SpanResult], query: str) -> dict[str, float]:
    """Features of the top span of `c` (already re-ranked): what `Calibration.confidence` reads."""
    order = [int(i) for i in np.argsort(-c.score, kind="stable") if np.isfinite(c.score[i])]
    if not order:
        return {}
    i0 = order[0]
    second = next((c.score[i] for i in order[1:] if c.chars[i] != c.chars[i0]), c.score[i0] - 1.0)
    top = spans[0] if spans else None
    text = top.text if top is not None else c.texts[i0]
    return {
        "score": float(c.score[i0]),
        "margin": float(c.score[i0] - second),
        "sentence_cos": (
            float(c.sentence_cos[i0]) if c.sentence_cos is not None and i0 < len(c.sentence_cos) else float(c.score[i0])
        ),
        "context": float(c.context[i0]) if c.context is not None else float(c.score[i0]),
        "lexical": float(c.lexical[i0]) if c.lexical is not None else 0.0,
        "coverage": coverage(query, text),
        "segment": float(c.segment_score) if c.segment_score is not None else 0.0,
        "log_words": math.log(max(len(text.split()), 1)),
    } | lexical_features(query, c.texts, i0)


@dataclass
class Calibration:
    """A logistic model: p = sigmoid(bias + sum_i weight_i * (x_i - mean_i) / scale_i)."""

    names: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    weight: np.ndarray
    bias: float

    def confidence(self, features: dict[str, float]) -> float | None:
        """Probability that the top span answers; None when a feature is missing."""
        if any(n not in features for n in self.names):
            return None
        x = (np.array([features[n] for n in self.names]) - self.mean) / self.scale
        z = float(self.bias + x @ self.weight)
        return 1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))

    def to_json(self) -> dict[str, object]:
        return {
            "names": list(self.names),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "weight": self.weight.tolist(),
            "bias": self.bias,
        }

    @classmethod
    def from_json(cls, d: dict) -> Calibration:
        return cls(
            tuple(d["names"]),
            np.asarray(d["mean"], dtype=np.float64),
            np.asarray(d["scale"], dtype=np.float64),
            np.asarray(d["weight"], dtype=np.float64),
            float(d["bias"]),
        )

    @classmethod
    def packaged(cls) -> Calibration | None:
        """The parameters shipped with chunkless (None if the file is absent: no confidence is given)."""
        if not PARAMS.is_file():
            return None
        return cls.from_json(json.loads(PARAMS.read_text(encoding="utf-8")))


def fit(
    rows: Sequence[dict[str, float]],
    labels: Sequence[int],
    names: Sequence[str] = FEATURES,
    l2: float = 1.0,
    iters: int = 50,
) -> Calibration:
    """Fit the logistic model by Newton's method with an L2 penalty on the weights (not the bias).

    Args:
        rows: features per query (`answer_features`).
        labels: 1 where the top span answered, else 0.
        names: which features to use.
        l2: penalty on the standardised weights.
        iters: Newton steps.

    Returns:
        The fitted Calibration.
    """
    x = np.array([[r[n] for n in names] for r in rows], dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    mean, scale = x.mean(0), x.std(0)
    scale[scale == 0] = 1.0
    z = np.hstack([np.ones((len(x), 1)), (x - mean) / scale])
    w = np.zeros(z.shape[1])
    pen = np.full(z.shape[1], l2)
    pen[0] = 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ w, -50, 50)))
        grad = z.T @ (p - y) + pen * w
        hess = (z * (p * (1 - p))[:, None]).T @ z + np.diag(pen) + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return Calibration(tuple(names), mean, scale, w[1:], float(w[0]))


@dataclass
class Abstention:
    """How well abstaining below a confidence threshold separates unanswerable questions.

    precision: share of abstentions that were unanswerable questions; recall: share of unanswerable
    questions abstained on; answered: share of answerable questions still answered.
    """

    threshold: float
    precision: float | None
    recall: float | None
    answered: float | None

    def line(self) -> str:
        def pct(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.3f}"

        return (
            f"abstain below {self.threshold:.2f}: precision {pct(self.precision)}, recall {pct(self.recall)} "
            f"of unanswerable, {pct(self.answered)} of answerable still answered"
        )


def abstention(
    answerable: Sequence[float | None], unanswerable: Sequence[float | None], threshold: float
) -> Abstention:
    """Precision and recall of abstaining (confidence < threshold; None counts as abstaining) on unanswerable ones."""
    held_pos = sum(1 for c in answerable if c is None or c < threshold)
    held_neg = sum(1 for c in unanswerable if c is None or c < threshold)
    held = held_pos + held_neg
    return Abstention(
        threshold,
        held_neg / held if held else None,
        held_neg / len(unanswerable) if unanswerable else None,
        1 - held_pos / len(answerable) if answerable else None,
    )
