"""The retrieval SDK: `Retriever.search(query)` -> spans, best first."""

from __future__ import annotations

import bisect
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from indexer.backends import Match, Where
from indexer.embedders import TokenEmbedder, load_embedder
from indexer.models import pick_device
from indexer.store import TokenStore, open_store
from retriever.fetch import DocTokens, Fetcher
from retriever.spans import SpanParams, TokenSpans, extract_spans, smooth
from schemas.errors import QueryError
from schemas.models import SearchResponse, SpanResult
from schemas.settings import Settings

FILTER_FIELDS = {"doc_id", "source"}


def pages_of(page_starts: Sequence[int], start: int, end: int) -> list[int]:
    """1-based pages that characters [start, end) touch."""
    first = bisect.bisect_right(page_starts, start) - 1
    last = bisect.bisect_right(page_starts, max(start, end - 1)) - 1
    return list(range(max(first, 0) + 1, max(last, 0) + 2))


@dataclass
class Explanation:
    """Per-token relevance of one document for one query, with what the span method did with it."""

    doc_id: str
    text: str
    starts: np.ndarray  # (n,)
    ends: np.ndarray  # (n,)
    raw: np.ndarray  # (n,) r = D @ q
    smoothed: np.ndarray  # (n,)
    threshold: float
    spans: list[SpanResult]
    page_starts: list[int]


class Retriever:
    """Recall -> fetch -> score -> spans over one collection. Safe to share between threads."""

    def __init__(self, settings: Settings, embedder: TokenEmbedder | None = None, store: TokenStore | None = None):
        self.settings = settings
        self.store = store or open_store(settings)
        self.embedder = embedder or load_embedder(settings)
        self.store.meta.check(self.embedder.name, self.embedder.dim, None, f"collection '{settings.collection}'")
        self.device = pick_device(settings.device)
        self.params = SpanParams.from_settings(settings)
        self.fetcher = Fetcher(self.store, self.device, settings.boundary, settings.cache_mb << 20)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Retriever:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------------------------------------
    def search(
        self, query: str, top: int | None = None, filter: dict[str, str | list[str]] | None = None
    ) -> SearchResponse:
        """Best spans for `query` across the collection; `filter` restricts doc_id/source (value or list)."""
        t0 = time.perf_counter()
        q = self.embedder.embed_query(query)
        t1 = time.perf_counter()
        resp = self._search_vector(query, q, top or self.settings.top, filter)
        resp.timings_ms["embed"] = (t1 - t0) * 1e3
        return resp

    def search_batch(self, queries: Sequence[str], top: int | None = None) -> list[SearchResponse]:
        """`search` for several queries; documents fetched for one are served from the cache to the others."""
        return [self.search(q, top) for q in queries]

    def _search_vector(
        self, query: str, q: np.ndarray, top: int, filter: dict[str, str | list[str]] | None
    ) -> SearchResponse:
        t0 = time.perf_counter()
        cands = self.store.recall(q, self.settings.recall_k, self.settings.recall_level, _where(filter))
        t1 = time.perf_counter()
        docs = self.fetcher.fetch({c.doc_id: c.header for c in cands})
        t2 = time.perf_counter()
        spans = self._spans(q, docs)[:top]
        t3 = time.perf_counter()
        timings = {"recall": (t1 - t0) * 1e3, "fetch": (t2 - t1) * 1e3, "score": (t3 - t2) * 1e3}
        return SearchResponse(query=query, spans=spans, timings_ms=timings)

    def _relevance(self, q: np.ndarray, docs: list[DocTokens]) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat raw relevance (N,) of every candidate token and doc_starts (B+1,)."""
        qt = torch.from_numpy(q).to(self.device)
        lengths = torch.tensor([0] + [d.vectors.shape[0] for d in docs], device=self.device)
        doc_starts = torch.cumsum(lengths, 0)
        if not docs:
            return torch.zeros(0, device=self.device), doc_starts
        r = torch.cat([d.vectors @ qt for d in docs])  # one GEMV per doc: no (N, dim) concat copy
        return r, doc_starts

    def _threshold(self, smoothed: torch.Tensor) -> float:
        if self.settings.threshold_mode == "relative" and smoothed.numel():
            return float(smoothed.max()) - self.settings.relative_margin
        return self.params.threshold

    def _token_spans(
        self, q: np.ndarray, docs: list[DocTokens]
    ) -> tuple[TokenSpans, torch.Tensor, torch.Tensor, float]:
        r, doc_starts = self._relevance(q, docs)
        s = smooth(r, doc_starts, self.params.sigma)
        ends_sentence = torch.cat([d.ends_sentence for d in docs]) if docs else torch.zeros(0, dtype=torch.bool)
        thr = self._threshold(s)
        return extract_spans(s, doc_starts, ends_sentence, self.params, thr), r, s, thr

    def _spans(self, q: np.ndarray, docs: list[DocTokens]) -> list[SpanResult]:
        if not docs:
            return []
        ts, _, _, _ = self._token_spans(q, docs)
        return self._to_results(ts, docs)

    def _to_results(self, ts: TokenSpans, docs: list[DocTokens]) -> list[SpanResult]:
        offsets = np.cumsum([0] + [len(d.starts) for d in docs])
        order = torch.argsort(ts.score, descending=True).cpu().numpy()
        dsel, s0, s1, sc = (t.cpu().numpy() for t in (ts.doc, ts.start, ts.end, ts.score))
        out = []
        for i in order:
            d = docs[int(dsel[i])]
            a, b = int(s0[i] - offsets[dsel[i]]), int(s1[i] - offsets[dsel[i]])
            cs, ce = int(d.starts[a]), int(d.ends[b])
            out.append(
                SpanResult(
                    doc_id=d.doc_id,
                    source=d.header["source"],
                    start=cs,
                    end=ce,
                    text=d.text[cs:ce],
                    score=float(sc[i]),
                    pages=pages_of(d.header.get("page_starts", [0]), cs, ce),
                )
            )
        return out

    def explain(self, query: str, doc_id: str) -> Explanation:
        """Raw and smoothed relevance of every token of `doc_id`, the threshold, and the spans it yields."""
        header = self.store.header(doc_id)
        if header is None:
            raise QueryError(
                f"document '{doc_id}' is not in collection '{self.settings.collection}'; see 'chunkless stats'"
            )
        q = self.embedder.embed_query(query)
        docs = self.fetcher.fetch({doc_id: header})
        ts, r, s, thr = self._token_spans(q, docs)
        d = docs[0]
        return Explanation(
            doc_id=doc_id,
            text=d.text,
            starts=d.starts,
            ends=d.ends,
            raw=r.cpu().numpy(),
            smoothed=s.cpu().numpy(),
            threshold=thr,
            spans=self._to_results(ts, docs),
            page_starts=list(header.get("page_starts", [0])),
        )


def _where(filter: dict[str, str | list[str]] | None) -> Where | None:
    if not filter:
        return None
    bad = set(filter) - FILTER_FIELDS
    if bad:
        raise QueryError(f"filter field(s) {sorted(bad)} not supported; use {sorted(FILTER_FIELDS)}")
    return Where(must=[Match(k, list(v) if isinstance(v, list | tuple) else v) for k, v in filter.items()])
