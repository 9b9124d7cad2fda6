"""Span methods: strategies that turn a query's candidate documents into spans (see `base`).

`SPAN_METHODS` maps each `span_method` setting to the factory that builds it from a `MethodContext`.
A factory is also what `Retriever(span_method=...)` takes: the hook for experiments, e.g. a method
with its own options (`ThresholdMethod.with_options`) or a correction of raw relevance (`with_correction`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from retriever.methods.base import (
    MethodContext,
    MethodOutput,
    QueryDocs,
    RelevanceCorrection,
    Scorer,
    SpanMethod,
    TokenSignal,
    pages_of,
    span_result,
)
from retriever.methods.sentences import SentenceCaches, SentenceMethod, SentenceVectorCache
from retriever.methods.threshold import ThresholdMethod, ThresholdOptions
from schemas.errors import SettingsError

MethodFactory = Callable[[MethodContext], SpanMethod]

SPAN_METHODS: dict[str, MethodFactory] = {
    "sentences": SentenceMethod,
    "threshold": ThresholdMethod,
}


def make_span_method(name: str, ctx: MethodContext) -> SpanMethod:
    """The span method registered as `name`, built from `ctx`.

    Args:
        name: a key of `SPAN_METHODS` (the `span_method` setting).
        ctx: what the method may use.

    Returns:
        The method.

    Raises:
        SettingsError: no method is registered under `name`.
    """
    factory = SPAN_METHODS.get(name)
    if factory is None:
        raise SettingsError(f"span_method '{name}' is unknown; use one of {sorted(SPAN_METHODS)}")
    return factory(ctx)


def with_correction(correction: RelevanceCorrection, factory: MethodFactory | None = None) -> MethodFactory:
    """A span-method factory whose method scores through a `Scorer` that applies `correction` to raw token
    relevance before the method sees it (experiments on r; the product applies none).

    Args:
        correction: f(r (N,), q (dim,), docs) -> r (N,), with r = D @ q (for a multivector model, each
            query token vector's column in turn, before the maximum); see `Scorer`.
        factory: the method to build; None: the one registered under the `span_method` setting.

    Returns:
        The factory, for `Retriever(span_method=...)`.
    """

    def build(ctx: MethodContext) -> SpanMethod:
        ctx = replace(ctx, scorer=ctx.scorer.corrected(correction))
        return factory(ctx) if factory is not None else make_span_method(ctx.settings.span_method, ctx)

    return build


__all__ = [
    "SPAN_METHODS",
    "MethodContext",
    "MethodFactory",
    "MethodOutput",
    "QueryDocs",
    "RelevanceCorrection",
    "Scorer",
    "SentenceCaches",
    "SentenceMethod",
    "SentenceVectorCache",
    "SpanMethod",
    "ThresholdMethod",
    "ThresholdOptions",
    "TokenSignal",
    "make_span_method",
    "pages_of",
    "span_result",
    "with_correction",
]
