"""Span methods: strategies that turn a query's candidate documents into spans (see `base`).

`SPAN_METHODS` maps each `span_method` setting to the factory that builds it from a `MethodContext`.
"""

from __future__ import annotations

from collections.abc import Callable

from retriever.methods.base import (
    MethodContext,
    MethodOutput,
    QueryDocs,
    RelevanceCorrection,
    Scorer,
    SpanMethod,
    pages_of,
    span_result,
)
from retriever.methods.sentences import AloneCache, SentenceCaches, SentenceMethod
from retriever.methods.threshold import ThresholdMethod, TokenSignal
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


__all__ = [
    "SPAN_METHODS",
    "AloneCache",
    "MethodContext",
    "MethodFactory",
    "MethodOutput",
    "QueryDocs",
    "RelevanceCorrection",
    "Scorer",
    "SentenceCaches",
    "SentenceMethod",
    "SpanMethod",
    "ThresholdMethod",
    "TokenSignal",
    "make_span_method",
    "pages_of",
    "span_result",
]
