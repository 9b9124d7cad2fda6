"""The threshold method (the original): smooth the token signal, threshold it, cluster, extend to sentence ends.

The threshold is `SpanSettings.threshold`. Experiments (the storage report, tests) may make it relative
to the best smoothed token of the query's candidates instead, through `ThresholdOptions`, which are not
settings: `Retriever(settings, span_method=ThresholdMethod.with_options(ThresholdOptions(mode="relative")))`.
On documents with a structure a span goes through `structured.answer_range` as the sentence method's
do: a span of headings alone becomes its section's answer, navigation alone is dropped, table rows are
kept whole.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from retriever.fetch import DocTokens
from retriever.methods.base import MethodContext, QueryDocs, SpanMethod, TokenSignal, span_result
from retriever.methods.structured import answer_range
from retriever.spans import SpanParams, extract_spans
from schemas.models import SpanResult

ThresholdMode = Literal["absolute", "relative"]


@dataclass(frozen=True)
class ThresholdOptions:
    """How the threshold method sets a query's threshold; for experiments, outside the product settings.

    Attributes:
        mode: "absolute": `SpanSettings.threshold`; "relative": `relative_margin` below the best smoothed
            token of the query's candidates (scale-free: a storage layout that shifts the scale of
            r = D @ q is not scored as losing quality; it lost to the sentence method, so it is no setting).
        relative_margin: see `mode`.
    """

    mode: ThresholdMode = "absolute"
    relative_margin: float = 0.05


class ThresholdMethod(SpanMethod[TokenSignal]):
    """Spans where the smoothed relevance clears a threshold, extended to the nearest sentence ends.

    Args:
        ctx: the span settings (lengths are rescaled to stored rows by `ctx.pool`) and the scorer.
        options: how the threshold is set (experiments); None: `ThresholdOptions()`, the absolute
            `SpanSettings.threshold`.
    """

    def __init__(self, ctx: MethodContext, options: ThresholdOptions | None = None) -> None:
        self.settings = ctx.settings
        self.scorer = ctx.scorer
        self.options = options or ThresholdOptions()
        self.params = SpanParams.from_settings(ctx.settings).per_row(ctx.pool)

    @classmethod
    def with_options(cls, options: ThresholdOptions) -> Callable[[MethodContext], ThresholdMethod]:
        """A span-method factory (`Retriever(span_method=...)`) building this method with `options`."""
        return lambda ctx: cls(ctx, options)

    def threshold(self, smoothed: torch.Tensor) -> float:
        """The threshold for one query's smoothed signal (N,): absolute, or relative to its maximum."""
        if self.options.mode == "relative" and smoothed.numel():
            return float(smoothed.max()) - self.options.relative_margin
        return self.params.threshold

    def signal(self, q: np.ndarray, docs: list[DocTokens], tokens: np.ndarray | None = None) -> TokenSignal:
        """Raw and smoothed relevance of every token of `docs`, the threshold, and the token spans.

        Args:
            q: (dim,) float32 pooled query vector.
            docs: candidate documents (at least one).
            tokens: (m, dim) query token vectors, which a multivector model's relevance needs.

        Returns:
            The `TokenSignal`.
        """
        r, s, doc_starts = self.scorer.relevance_smoothed(q, docs, self.params.sigma, tokens)
        ends_sentence = torch.cat([d.ends_sentence for d in docs]) if docs else torch.zeros(0, dtype=torch.bool)
        thr = self.threshold(s)
        return TokenSignal(extract_spans(s, doc_starts, ends_sentence, self.params, thr), r, s, thr)

    def score(self, query: QueryDocs, top: int | None) -> TokenSignal:
        return self.signal(query.q, query.docs, query.tokens)

    def results(self, state: TokenSignal, query: QueryDocs, top: int | None) -> list[SpanResult]:
        ts, docs = state.spans, query.docs
        offsets = np.cumsum([0] + [len(d.starts) for d in docs])
        order = torch.argsort(ts.score, descending=True).cpu().numpy()
        dsel, s0, s1, sc = (t.cpu().numpy() for t in (ts.doc, ts.start, ts.end, ts.score))
        out: list[SpanResult] = []
        seen: set[tuple[int, int, int]] = set()
        for i in order:
            if top is not None and len(out) == top:
                break
            d = docs[int(dsel[i])]
            a, b = int(s0[i] - offsets[dsel[i]]), int(s1[i] - offsets[dsel[i]])
            cs, ce = int(d.starts[a]), int(d.ends[b])
            if d.layout is not None:  # never a heading or navigation alone (see retriever.methods.structured)
                answer = answer_range(d.layout, cs, ce, d.text, d.char_base)
                if answer is None:
                    continue
                cs, ce = answer
            if (int(dsel[i]), cs, ce) in seen:  # two headings of one section
                continue
            seen.add((int(dsel[i]), cs, ce))
            out.append(span_result(d, cs, ce, float(sc[i])))
        return out
