"""The retrieval SDK: `Retriever.search(query)` -> spans, best first.

The Retriever orchestrates one query's path: embed -> recall -> rank segments -> fetch -> span method
(score, rerank) -> results, timing each stage. What spans are made of is the span method's business
(`retriever.methods`); what a token's relevance is, the `Scorer`'s.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from indexer.embedders import TokenEmbedder, load_embedder, pick_device
from indexer.store import Candidate, DocHeader, Match, TokenStore, Where, check_embedder, open_store
from retriever.calibration import Calibration
from retriever.fetch import DocTokens, Fetcher
from retriever.lexical import SegmentLexicon
from retriever.methods import (
    MethodContext,
    MethodFactory,
    QueryDocs,
    Scorer,
    SpanMethod,
    ThresholdMethod,
    make_span_method,
    pages_of,
)
from retriever.reader import Reader, make_reader
from schemas.errors import QueryError
from schemas.models import SearchResponse, SpanResult
from schemas.query import check_query
from schemas.settings import Settings
from schemas.structure import DocStructure

FILTER_FIELDS = {"doc_id", "source"}
Filter = dict[str, str | list[str]]

__all__ = ["FILTER_FIELDS", "Explanation", "Filter", "Retriever", "pages_of"]


@dataclass
class Explanation:
    """Per-token relevance of one document for one query, with what the span method did with it."""

    doc_id: str
    text: str
    starts: np.ndarray  # (n,)
    ends: np.ndarray  # (n,)
    raw: np.ndarray  # (n,) token relevance: r = D @ q, or max_i Q_i . d_j for a multivector model
    smoothed: np.ndarray  # (n,)
    threshold: float
    spans: list[SpanResult]
    page_starts: list[int]
    structure: DocStructure | None = None  # the document's blocks, when its reader found any


class Retriever:
    """Recall -> fetch -> score -> spans over one collection. Safe to share between threads.

    Args:
        settings: all settings; the store, model, recall and span groups are used.
        embedder: the model (default: loaded from `settings.model`); must match the collection's.
        store: an open store (default: opened from `settings.store`); closed by `close`.
        span_method: a factory building the span method from a `MethodContext`; None: the method
            registered under `settings.spans.span_method`. Experiments go through it, not through
            settings: `ThresholdMethod.with_options(...)`, `retriever.methods.with_correction(...)`.
        reader: the reading stage after the span method; None: the one `settings.reader` names (if any).

    Raises:
        StoreNotFoundError, StoreMismatchError: no such collection, or one made with another model.
        ModelLoadError: the model cannot be loaded.
        SettingsError: an unknown span method.

    Example:
        >>> from retriever import Retriever
        >>> from schemas import Settings
        >>> with Retriever(Settings(store_path="./store", device="cpu")) as r:  # doctest: +SKIP
        ...     for span in r.search("How does a steam engine work?", top=3).spans:
        ...         print(span.score, span.source, span.pages, span.text)

    Attributes:
        method: the span method in use.
        fetcher: moves candidates' token matrices to the device; `fetcher.cache` holds hot segments.

    Every `SearchResponse.timings_ms` has "recall", "rank_segments", "fetch", "score" and "results",
    plus "rerank" when the query had candidates and "embed" when the retriever embedded the query
    (not in `search_vectors`), in milliseconds; batched stages are divided among the batch's queries.
    """

    def __init__(
        self,
        settings: Settings,
        embedder: TokenEmbedder | None = None,
        store: TokenStore | None = None,
        *,
        span_method: MethodFactory | None = None,
        reader: Reader | None = None,
    ) -> None:
        self.settings = settings
        self.store = store or open_store(settings.store, read_only=True)
        self.embedder = embedder or load_embedder(settings)
        check_embedder(self.store.meta, self.embedder, f"collection '{settings.store.collection}'")
        self.device = pick_device(settings.model.device)
        self.fetcher = Fetcher(self.store, self.device, settings.spans.boundary, settings.recall.cache_mb << 20)
        self.lexicon = SegmentLexicon()  # BM25 over segment texts, for fetch_lexical
        # the tokenizer (Rust, mutable truncation state) and the store handle are not safe to share
        # across threads; scoring is, so only model and store calls are serialised
        self._model_lock = threading.Lock()
        self._store_lock = threading.Lock()
        rank = settings.recall.fetch_rank
        can_maxsim = self.store.meta.layout.is_plain and self.embedder.capabilities.query_tokens
        self._fetch_by_maxsim = rank == "maxsim" or (rank == "auto" and can_maxsim)
        # pooled segment vectors choose badly (squad2-dev, int8 and binary: hit@1 .59 against .67 scoring
        # whole documents), so `auto` scores whole documents where MaxSim cannot rank segments
        self._whole_documents = rank == "auto" and not can_maxsim
        # token relevance in the form the model's token vectors were trained for (its declared vector kind)
        self.scorer = Scorer(self.device, vector_kind=self.embedder.vector_kind)
        ctx = MethodContext(
            settings=settings.spans,
            pool=self.store.meta.layout.pool,
            scorer=self.scorer,
            embed_texts=self._embed_texts,
            segment_texts=self.segment_texts,
            sentence_vectors=self._sentence_vectors if self.store.meta.sentence_vectors else None,
        )
        self.method: SpanMethod = span_method(ctx) if span_method else make_span_method(settings.spans.span_method, ctx)
        self._signal = ThresholdMethod(ctx)  # explain's signal and threshold where the method has none
        # the reader re-ranks the span method's best candidates by reading them; its calibration then
        # gives the confidence (it sees what the span method's scores cannot)
        self.reader = reader if reader is not None else make_reader(settings, self.segment_texts)
        self.calibration = self.reader.calibration if self.reader is not None else Calibration.packaged()
        # queries the reader does not read (reader_queries) keep the span method's confidence
        self._span_calibration = Calibration.packaged() if self.reader is not None else None

    def clear_caches(self) -> None:
        """Forget decoded segments, structures and what the span method caches (what a cold process lacks)."""
        self.fetcher.cache.clear()
        self.fetcher.structures.clear()
        self.lexicon.clear()
        self.method.clear_caches()

    def close(self) -> None:
        """Close the store."""
        self.store.close()

    def __enter__(self) -> Retriever:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------------------------------------
    def search(self, query: str, top: int | None = None, filter: Filter | None = None) -> SearchResponse:
        """Best spans for `query` across the collection.

        Args:
            query: the question.
            top: most spans returned (default `settings.spans.top`).
            filter: restricts documents by "doc_id" and/or "source": a value or a list of values each.

        Returns:
            The spans, best first, with per-stage timings.

        Raises:
            QueryError: an empty or over-long query, or an unsupported filter field.
        """
        return self.search_batch([query], top, filter)[0]

    def search_batch(
        self, queries: Sequence[str], top: int | None = None, filter: Filter | None = None
    ) -> list[SearchResponse]:
        """`search` for several queries: one batched forward pass for all queries (and one for re-ranking).

        Args:
            queries: the questions.
            top: as in `search`.
            filter: as in `search`, for every query.

        Returns:
            One response per query, in order.

        Raises:
            QueryError: as in `search`.
        """
        if not queries:
            return []
        for q in queries:  # before the model: the same words as the CLI and the service
            check_query(q, self.settings.serve.max_query_chars)
        where = _where(filter)
        t0 = time.perf_counter()
        with self._model_lock:  # pooled and token vectors (MaxSim needs both), one forward pass where the model can
            enc = self.embedder.encode_queries(list(queries))
        for q, e in zip(queries, enc, strict=True):
            if e.tokens is not None and len(e.tokens) == 0:  # only control or zero-width characters, say
                raise QueryError(f"query {q[:60]!r} holds nothing the model reads (no tokens); search with words")
        vectors, got = np.stack([e.pooled for e in enc]), [e.tokens for e in enc if e.tokens is not None]
        tokens = got if len(got) == len(enc) else None
        per = (time.perf_counter() - t0) * 1e3 / len(queries)
        out = self._search(list(queries), vectors, top, where, tokens)
        for resp in out:
            resp.timings_ms["embed"] = per
        return out

    def search_vectors(
        self, queries: Sequence[str], vectors: np.ndarray, top: int | None = None, filter: Filter | None = None
    ) -> list[SearchResponse]:
        """`search_batch` for queries the caller has embedded already.

        Args:
            queries: the questions' texts (embedded again only for query token vectors, where MaxSim ranks
                segments or a multivector model scores tokens; echoed back).
            vectors: (len(queries), dim) their pooled unit vectors, as `embed_queries` gives them.
            top: as in `search`.
            filter: as in `search`.

        Returns:
            One response per query, in order; timings have no "embed", except for a multivector model, whose
            query token vectors are embedded here.

        Raises:
            QueryError: vectors of the wrong shape, or an unsupported filter field.
        """
        if not len(queries):
            return []
        vecs = np.asarray(vectors, dtype=np.float32)
        if vecs.shape != (len(queries), self.embedder.dim):
            raise QueryError(
                f"search_vectors needs ({len(queries)}, {self.embedder.dim}) query vectors, got {vecs.shape}"
            )
        return self._search(list(queries), vecs, top, _where(filter))

    def _search(
        self,
        queries: list[str],
        vectors: np.ndarray,
        top: int | None,
        where: Where | None,
        tokens: list[np.ndarray] | None = None,
    ) -> list[SearchResponse]:
        top = top or self.settings.spans.top
        embed: dict[str, float] = {}
        if tokens is None and self.scorer.needs_query_tokens:  # search_vectors: the pooled vectors only
            t0 = time.perf_counter()
            tokens = [self._query_tokens(q) for q in queries]
            embed["embed"] = (time.perf_counter() - t0) * 1e3 / len(queries)
        batch, timings = [], []
        for i, (query, q) in enumerate(zip(queries, vectors, strict=True)):
            qtok = None if tokens is None else tokens[i]
            docs, t, seg = self._candidates(query, q, where, qtok)
            batch.append(QueryDocs(q, docs, text=query, segment_score=seg, tokens=qtok))
            timings.append({**embed, **t})
        found = self.method.find_spans(batch, top if self.reader is None else self.reader.candidates(top))
        if self.reader is not None:
            self.reader.read(batch, found, top)
        out = [
            SearchResponse(query=query, spans=f.spans, timings_ms={**t, **f.timings_ms}, rows_scored=_rows(qd.docs))
            for query, qd, t, f in zip(queries, batch, timings, found, strict=True)
        ]
        for resp, f in zip(out, found, strict=True):
            self._answerability(resp, f.features)
        return out

    def _answerability(self, resp: SearchResponse, features: dict[str, float]) -> None:
        """The top span's confidence (calibrated probability that it answers); no spans under `abstain`."""
        resp.features = features
        if not resp.spans or not features:
            return
        if self.calibration is not None:
            resp.confidence = self.calibration.confidence(features)
        if resp.confidence is None and self._span_calibration is not None:
            resp.confidence = self._span_calibration.confidence(features)
        abstain = resp.threshold = self.settings.spans.abstain
        if abstain is not None and resp.confidence is not None and resp.confidence < abstain:
            resp.spans, resp.abstained = [], True

    def embed_queries(self, queries: list[str]) -> np.ndarray:
        """Pooled unit vectors of queries, as `search` embeds them.

        Args:
            queries: the questions.

        Returns:
            (len(queries), dim) float32.

        Raises:
            QueryError: an empty or over-long query.
        """
        with self._model_lock:
            return np.asarray(self.embedder.embed_queries(queries), dtype=np.float32)

    def _candidates(
        self, query: str, q: np.ndarray, where: Where | None, qtok: np.ndarray | None = None
    ) -> tuple[list[DocTokens], dict[str, float], float | None]:
        """Recall, segment ranking and fetch of one query, timed; and the best segment's MaxSim per query token."""
        t0 = time.perf_counter()
        cands = self.recall(query, q, where)
        headers = {c.doc_id: c.header for c in cands}
        t1 = time.perf_counter()
        segments, best = self._segments_worth_scoring(query, q, headers, qtok)
        if segments is not None:
            headers = {d: h for d, h in headers.items() if d in segments}
        t2 = time.perf_counter()
        with self._store_lock:
            docs = self.fetcher.fetch(headers, segments, rows=not self.method.scores_from_sentence_sums)
        t3 = time.perf_counter()
        timings = {"recall": (t1 - t0) * 1e3, "rank_segments": (t2 - t1) * 1e3, "fetch": (t3 - t2) * 1e3}
        return docs, timings, best

    def _segments_worth_scoring(
        self, query: str, q: np.ndarray, headers: dict[str, DocHeader], qtok: np.ndarray | None = None
    ) -> tuple[dict[str, list[int]] | None, float | None]:
        """The `fetch_segments` best segments of the recalled documents (by `fetch_rank`; None: whole
        documents), and the best one's MaxSim per query token (None when not ranked by MaxSim).

        MaxSim scores the `rank_shortlist` segments nearest the pooled query only, found in the same Qdrant
        call: over every segment its cost grew with the recalled documents' length (docs/speed.md)."""
        k = self.settings.recall.fetch_segments
        if k == 0 or not headers or self._whole_documents:
            return None, None
        per = self.settings.recall.fetch_per_tokens
        if per > 0:
            # a fixed number of segments covers a smaller share of longer documents: 4 of 3,186 segments
            # (financebench-dev's filings) rarely hold the evidence page, 4 of 213 (squad2-dev) usually do
            k = max(k, round(sum(h.n_tokens for h in headers.values()) / per))
        by = (self._query_tokens(query) if qtok is None else qtok) if self._fetch_by_maxsim else q
        versions = {d: h.version for d, h in headers.items()}
        with self._store_lock:
            segments = sum(h.n_segments for h in headers.values())
            ranked = self.store.rank_segments(by, versions, k, self.settings.recall.rank_shortlist, q, segments)
        out: dict[str, list[int]] = {}
        for doc_id, seg, _ in ranked:
            out.setdefault(doc_id, []).append(seg)
        extra = self.settings.recall.fetch_lexical
        if extra > 0:
            # MaxSim's best and BM25's best are fetched together: each finds segments the other misses
            docs = {d: (h.version, h.n_segments) for d, h in headers.items()}
            taken = {(d, s) for d, s, _ in ranked}
            lexical = self.lexicon.rank(query, docs, extra + len(taken), self.segment_texts)
            for doc_id, seg, _ in [x for x in lexical if (x[0], x[1]) not in taken][:extra]:
                out.setdefault(doc_id, []).append(seg)
        best = ranked[0][2] / len(by) if ranked and by.ndim == 2 else None
        return out, best

    def recall(self, query: str, q: np.ndarray, where: Where | None = None) -> list[Candidate]:
        """Candidate documents, best first: pooled-vector HNSW (doc or segment level), optionally MaxSim re-ranked.

        Overridable: `search` calls it once per query.

        Args:
            query: the question (for MaxSim's query token vectors).
            q: (dim,) its pooled vector.
            where: a payload filter.

        Returns:
            At most `recall_k` candidates with their headers.

        Raises:
            QueryError: MaxSim is configured and the embedder gives no query token vectors.
        """
        st = self.settings
        with self._store_lock:
            cands = self.store.recall(q, st.recall.recall_k, st.recall.recall_level, where)
        if not st.recall.recall_maxsim or not cands:
            return cands
        qt = self._query_tokens(query)
        with self._store_lock:
            ranked = self.store.maxsim(qt, len(cands), [c.doc_id for c in cands])
        return [c for c in ranked if c.doc_id in {x.doc_id for x in cands}]

    def _query_tokens(self, query: str) -> np.ndarray:
        """(m, dim) the query's token vectors in the model's query form: MaxSim in Qdrant, and the token
        relevance of multivector models."""
        with self._model_lock:  # a model without query tokens raises QueryError naming the fix
            return np.asarray(self.embedder.embed_query_tokens(query), dtype=np.float32)

    def _embed_texts(self, texts: list[str]) -> np.ndarray:
        with self._model_lock:
            return self.embedder.embed_texts(texts)

    def segment_texts(self, need: dict[tuple[str, str], list[int]]) -> dict[tuple[str, int], tuple[int, str]]:
        """The text of some segments (payload only), under the store lock: what a reader or a lexical
        ranker built outside the Retriever is given to read neighbours' text with.

        Args:
            need: (doc_id, version) -> segment indices.

        Returns:
            (doc_id, segment index) -> (char_start, text).
        """
        with self._store_lock:
            return self.store.segment_texts(need)

    def _sentence_vectors(self, need: dict[tuple[str, str], list[int]]) -> dict[tuple[str, str, int, int], np.ndarray]:
        with self._store_lock:
            return self.store.sentence_vectors(need)

    # ---------------------------------------------------------------------------------------------
    def explain(self, query: str, doc_id: str) -> Explanation:
        """Raw and smoothed relevance of every token of one document, the threshold, and the method's spans.

        The signal and threshold are the method's own when it cuts spans from a token signal (the
        threshold method, with its options), else the threshold method's with the span settings.

        Args:
            query: the question.
            doc_id: the document, whole (whatever `fetch_segments` says).

        Returns:
            The `Explanation`; its spans are the configured method's over this document alone (the
            threshold method: all of them; others: at most `top`).

        Raises:
            QueryError: the document is not in the collection, or the query is empty or too long.
        """
        with self._store_lock:
            header = self.store.header(doc_id)
        if header is None:
            raise QueryError(
                f"document '{doc_id}' is not in collection '{self.settings.store.collection}'; see 'chunkless stats'"
            )
        q = self.embed_queries([query])[0]
        qtok = self._query_tokens(query) if self.scorer.needs_query_tokens else None
        with self._store_lock:
            docs = self.fetcher.fetch({doc_id: header})
        sig = self.method.signal(q, docs, qtok)
        if sig is None:  # the method cuts no token signal: the threshold method's shows the relevance
            sig = self._signal.signal(q, docs, qtok)
        d = docs[0]
        return Explanation(
            doc_id=doc_id,
            text=d.text,
            starts=d.starts,
            ends=d.ends,
            raw=sig.raw.cpu().numpy(),
            smoothed=sig.smoothed.cpu().numpy(),
            threshold=sig.threshold,
            spans=self.method.find_spans([QueryDocs(q, docs, tokens=qtok)], None)[0].spans,
            page_starts=list(header.page_starts),
            structure=DocStructure.from_payload(header.structure),
        )


def _rows(docs: list[DocTokens]) -> int:
    return sum(d.n for d in docs)


def _where(filter: Filter | None) -> Where | None:
    if not filter:
        return None
    bad = set(filter) - FILTER_FIELDS
    if bad:
        raise QueryError(f"filter field(s) {sorted(bad)} not supported; use {sorted(FILTER_FIELDS)}")
    return Where(must=[Match(k, list(v) if isinstance(v, list | tuple) else v) for k, v in filter.items()])
