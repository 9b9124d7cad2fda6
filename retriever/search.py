"""The retrieval SDK: `Retriever.search(query)` -> spans, best first."""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from indexer.embedders import TokenEmbedder, load_embedder
from indexer.models import pick_device
from indexer.store import Candidate, DocHeader, Match, TokenStore, Where, open_store
from retriever.fetch import DocTokens, Fetcher
from retriever.methods.structured import Layout, Layouts, answer_range
from retriever.relevance import gemv_blocks, relevance_smoothed
from retriever.sentences import SentenceCandidates, SentenceTables, complete_cut, cut_sentences
from retriever.spans import SpanParams, TokenSpans, extract_spans
from schemas.errors import QueryError
from schemas.models import SearchResponse, SpanResult
from schemas.settings import Settings
from schemas.structure import DocStructure

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
    structure: DocStructure | None = None  # the document's blocks, when its reader found any


class Retriever:
    """Recall -> fetch -> score -> spans over one collection. Safe to share between threads."""

    def __init__(self, settings: Settings, embedder: TokenEmbedder | None = None, store: TokenStore | None = None):
        self.settings = settings
        self.store = store or open_store(settings.store)
        self.embedder = embedder or load_embedder(settings)
        self.store.meta.check(self.embedder.name, self.embedder.dim, None, f"collection '{settings.store.collection}'")
        self.device = pick_device(settings.model.device)
        pool = self.store.meta.layout.pool
        self.params = SpanParams.from_settings(settings.spans).per_row(pool)
        self.min_sentence_rows = max(1, math.ceil(settings.spans.min_sentence_tokens / pool))
        self.fetcher = Fetcher(self.store, self.device, settings.spans.boundary, settings.recall.cache_mb << 20)
        # the tokenizer (Rust, mutable truncation state) and the store handle are not safe to share
        # across threads; scoring is, so only model and store calls are serialised
        self._model_lock = threading.Lock()
        self._store_lock = threading.Lock()
        self._sentences = SentenceTables()
        rank = settings.recall.fetch_rank
        can_maxsim = self.store.meta.layout.is_plain and hasattr(self.embedder, "embed_query_tokens")
        self._fetch_by_maxsim = rank == "maxsim" or (rank == "auto" and can_maxsim)
        self._alone = AloneCache(settings.spans.rerank_cache)
        self._layouts = Layouts()

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
        return self.search_batch([query], top, filter)[0]

    def search_batch(
        self, queries: Sequence[str], top: int | None = None, filter: dict[str, str | list[str]] | None = None
    ) -> list[SearchResponse]:
        """`search` for several queries: one batched forward pass for all queries (and one for re-ranking)."""
        if not queries:
            return []
        where = _where(filter)
        top = top or self.settings.spans.top
        t0 = time.perf_counter()
        qs = self._embed_queries(list(queries))
        t1 = time.perf_counter()
        out = []
        pending: list[tuple[int, SentenceCandidates, list[DocTokens]]] = []
        for i, (query, q) in enumerate(zip(queries, qs, strict=True)):
            docs, timings = self._recall_fetch(query, q, where)
            t2 = time.perf_counter()
            if self.settings.spans.span_method == "sentences" and docs:
                cands = self._sentence_candidates(q, docs, top)
                pending.append((i, cands, docs))
                spans: list[SpanResult] = []
            else:
                spans = self._spans(q, docs)[:top]
            timings["score"] = (time.perf_counter() - t2) * 1e3
            timings["embed"] = (t1 - t0) * 1e3 / len(queries)
            out.append(SearchResponse(query=query, spans=spans, timings_ms=timings, rows_scored=_rows(docs)))
        if pending:
            t3 = time.perf_counter()
            self._rerank([c for _, c, _ in pending])
            per = (time.perf_counter() - t3) * 1e3 / len(pending)
            for i, cands, docs in pending:
                out[i].spans = self._sentence_results(cands, docs, top)
                out[i].timings_ms["rerank"] = per
        return out

    def _embed_queries(self, queries: list[str]) -> np.ndarray:
        with self._model_lock:
            batched = getattr(self.embedder, "embed_queries", None)
            if batched is not None:
                return np.asarray(batched(queries), dtype=np.float32)
            return np.stack([self.embedder.embed_query(q) for q in queries]).astype(np.float32)

    def _recall_fetch(self, query: str, q: np.ndarray, where: Where | None) -> tuple[list[DocTokens], dict[str, float]]:
        t0 = time.perf_counter()
        cands = self.recall(query, q, where)
        headers = {c.doc_id: c.header for c in cands}
        segments = self._segments_worth_scoring(query, q, headers)
        if segments is not None:
            headers = {d: h for d, h in headers.items() if d in segments}
        t1 = time.perf_counter()
        with self._store_lock:
            docs = self.fetcher.fetch(headers, segments)
        t2 = time.perf_counter()
        return docs, {"recall": (t1 - t0) * 1e3, "fetch": (t2 - t1) * 1e3}

    def _segments_worth_scoring(
        self, query: str, q: np.ndarray, headers: dict[str, DocHeader]
    ) -> dict[str, list[int]] | None:
        """The `fetch_segments` best segments of the recalled documents (by `fetch_rank`); None: whole documents."""
        k = self.settings.recall.fetch_segments
        if k == 0 or not headers:
            return None
        by = self._query_tokens(query) if self._fetch_by_maxsim else q
        with self._store_lock:
            ranked = self.store.rank_segments(by, {d: h.version for d, h in headers.items()}, k)
        out: dict[str, list[int]] = {}
        for doc_id, seg, _ in ranked:
            out.setdefault(doc_id, []).append(seg)
        return out

    def recall(self, query: str, q: np.ndarray, where: Where | None = None) -> list[Candidate]:
        """Candidate documents, best first: pooled-vector HNSW (doc or segment level), optionally MaxSim re-ranked."""
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
        """(m, dim) the query's token vectors, for MaxSim in Qdrant."""
        tokens_of = getattr(self.embedder, "embed_query_tokens", None)
        if tokens_of is None:
            raise QueryError(f"MaxSim needs query token vectors, which {type(self.embedder).__name__} lacks")
        with self._model_lock:
            return np.asarray(tokens_of(query), dtype=np.float32)

    def _search_vector(
        self, query: str, q: np.ndarray, top: int, filter: dict[str, str | list[str]] | None
    ) -> SearchResponse:
        """One query from its vector (kept for callers that embed themselves)."""
        docs, timings = self._recall_fetch(query, q, _where(filter))
        t = time.perf_counter()
        if self.settings.spans.span_method == "sentences" and docs:
            cands = self._sentence_candidates(q, docs, top)
            self._rerank([cands])
            spans = self._sentence_results(cands, docs, top)
        else:
            spans = self._spans(q, docs)[:top]
        timings["score"] = (time.perf_counter() - t) * 1e3
        return SearchResponse(query=query, spans=spans, timings_ms=timings, rows_scored=_rows(docs))

    # --- the sentence method ---------------------------------------------------------------------
    def _sentence_candidates(self, q: np.ndarray, docs: list[DocTokens], top: int) -> SentenceCandidates:
        """Score every sentence of the candidate documents from the token signal alone; keep the best few."""
        st = self.settings
        r, _ = self._relevance(q, docs)
        tab = self._sentences.table(docs, self.device)
        rs = torch.zeros(tab.n, device=r.device).index_add_(0, tab.sid, r)
        pooled = rs / tab.norm  # cosine of the sentence's summed in-context token vectors with q
        score = pooled
        eligible = tab.length >= self.min_sentence_rows
        masks = self._structure_masks(docs)
        if masks is not None:  # headings compete (they become their section's answer), navigation never does
            skip, heading = (m.to(score.device)[tab.start] for m in masks)
            eligible = (eligible | heading) & ~skip
        score = torch.where(eligible, score, torch.full_like(score, -math.inf))
        k = min(max(st.spans.rerank_k, top), tab.n)
        best = torch.topk(score, k).indices
        best = best[torch.isfinite(score[best])]
        offsets = np.cumsum([0] + [len(d.starts) for d in docs])
        sdoc = tab.doc[best].cpu().numpy()
        a = tab.start[best].cpu().numpy() - offsets[sdoc]
        b = tab.end[best].cpu().numpy() - offsets[sdoc]
        chars = [(int(docs[d].starts[x]), int(docs[d].ends[y])) for d, x, y in zip(sdoc, a, b, strict=True)]
        texts = [docs[d].chars(c0, c1) for d, (c0, c1) in zip(sdoc, chars, strict=True)]
        cands = SentenceCandidates(sdoc, chars, texts, score[best].cpu().numpy().astype(np.float64), q)
        need = cut_sentences(cands, docs)
        if need:  # a fetched run cut some sentences: finish them from the neighbour segments' text
            with self._store_lock:
                neighbours = self.store.segment_texts(need)
            complete_cut(cands, docs, neighbours, st.spans.boundary)
        return cands

    def _structure_masks(self, docs: list[DocTokens]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(skip, heading) flat token masks from the documents' structures; None when none has one."""
        layouts = [self._layouts.get(d.doc_id, d.header) for d in docs]
        if all(lay is None for lay in layouts):
            return None
        skips, heads = [], []
        for d, lay in zip(docs, layouts, strict=True):
            if lay is None:
                skips.append(np.zeros(d.n, dtype=bool))
                heads.append(np.zeros(d.n, dtype=bool))
            else:
                sk, hd = lay.token_masks(d.starts)
                skips.append(sk)
                heads.append(hd)
        return torch.from_numpy(np.concatenate(skips)), torch.from_numpy(np.concatenate(heads))

    def _rerank(self, batch: list[SentenceCandidates]) -> None:
        """Final scores: the alone re-ranking, then the length penalty."""
        self._rerank_alone(batch)
        if self.settings.spans.length_penalty > 0:
            for c in batch:
                words = np.array([len(t.split()) for t in c.texts], dtype=np.float64)
                c.score -= self.settings.spans.length_penalty * np.log(np.maximum(words, 1.0))

    def _rerank_alone(self, batch: list[SentenceCandidates]) -> None:
        """Re-embed the best `rerank_k` candidates of every query alone, in one batched call; blend cosines."""
        st = self.settings
        if st.spans.rerank_k == 0:
            return
        texts = [t for c in batch for t in c.texts[: st.spans.rerank_k]]
        if not texts:
            return
        vecs = self._alone.embed(texts, self._embed_alone)
        i = 0
        for c in batch:
            m = min(st.spans.rerank_k, len(c.texts))
            alone = vecs[i : i + m] @ c.q
            i += m
            c.score[:m] = st.spans.rerank_weight * alone + (1 - st.spans.rerank_weight) * c.score[:m]
            c.score[m:] = -math.inf if m else c.score[m:]  # not re-embedded: below every re-ranked one

    def _embed_alone(self, texts: list[str]) -> np.ndarray:
        with self._model_lock:
            return self.embedder.embed_texts(texts)

    def _sentence_results(self, c: SentenceCandidates, docs: list[DocTokens], top: int) -> list[SpanResult]:
        order = np.argsort(-c.score, kind="stable")
        out: list[SpanResult] = []
        seen: set[tuple[int, int, int]] = set()
        for i in order:
            if len(out) == top:
                break
            if not np.isfinite(c.score[i]):
                continue
            cs, ce = c.chars[i]
            d, text = docs[int(c.doc[i])], c.texts[i]
            layout = self._layouts.get(d.doc_id, d.header)
            if layout is not None:  # a heading becomes its section's answer; navigation is never returned
                answer = answer_range(layout, int(cs), int(ce), d.text, d.char_base)
                if answer is None:
                    continue
                if answer != (cs, ce):
                    (cs, ce), text = answer, d.chars(*answer)
            if (int(c.doc[i]), cs, ce) in seen:  # two cut pieces of one sentence, or two headings of one section
                continue
            seen.add((int(c.doc[i]), cs, ce))
            out.append(_result(d, int(cs), int(ce), float(c.score[i]), text, layout))
        return out

    def _relevance(self, q: np.ndarray, docs: list[DocTokens]) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat raw relevance (N,) of every candidate token and doc_starts (B+1,)."""
        qt, blocks, doc_starts = self._flat(q, docs)
        return gemv_blocks(blocks, qt), doc_starts

    def _relevance_smoothed(
        self, q: np.ndarray, docs: list[DocTokens]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw and smoothed relevance (N,) of every candidate token, and doc_starts (B+1,)."""
        qt, blocks, doc_starts = self._flat(q, docs)
        r, s = relevance_smoothed(blocks, qt, doc_starts, self.params.sigma)
        return r, s, doc_starts

    def _flat(self, q: np.ndarray, docs: list[DocTokens]) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """q on the device, every candidate's row blocks in order (never concatenated), doc_starts (B+1,)."""
        doc_starts = torch.cumsum(torch.tensor([0] + [d.n for d in docs], device=self.device), 0)
        return torch.from_numpy(q).to(self.device), [p for d in docs for p in d.parts], doc_starts

    def _threshold(self, smoothed: torch.Tensor) -> float:
        if self.settings.spans.threshold_mode == "relative" and smoothed.numel():
            return float(smoothed.max()) - self.settings.spans.relative_margin
        return self.params.threshold

    def _token_spans(
        self, q: np.ndarray, docs: list[DocTokens]
    ) -> tuple[TokenSpans, torch.Tensor, torch.Tensor, float]:
        r, s, doc_starts = self._relevance_smoothed(q, docs)
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
            out.append(
                _result(d, int(d.starts[a]), int(d.ends[b]), float(sc[i]), None, self._layouts.get(d.doc_id, d.header))
            )
        return out

    def _explained_spans(self, q: np.ndarray, docs: list[DocTokens], ts: TokenSpans) -> list[SpanResult]:
        if self.settings.spans.span_method != "sentences":
            return self._to_results(ts, docs)
        cands = self._sentence_candidates(q, docs, self.settings.spans.top)
        self._rerank([cands])
        return self._sentence_results(cands, docs, self.settings.spans.top)

    def explain(self, query: str, doc_id: str) -> Explanation:
        """Raw and smoothed relevance of every token of `doc_id`, the threshold, and the configured method's spans."""
        with self._store_lock:
            header = self.store.header(doc_id)
        if header is None:
            raise QueryError(
                f"document '{doc_id}' is not in collection '{self.settings.store.collection}'; see 'chunkless stats'"
            )
        q = self._embed_queries([query])[0]
        with self._store_lock:
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
            spans=self._explained_spans(q, docs, ts),
            page_starts=list(header.page_starts),
            structure=DocStructure.from_payload(header.structure),
        )


class AloneCache:
    """Bounded LRU of sentences' alone embeddings by text: popular sentences are re-embedded once."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def embed(self, texts: list[str], embed: Callable[[list[str]], np.ndarray]) -> np.ndarray:
        """(n, dim) vectors of `texts`; only the ones not cached go through `embed`, in one batch."""
        with self._lock:
            found = {t: self._items[t] for t in texts if t in self._items}
            for t in found:
                self._items.move_to_end(t)
        todo = list(dict.fromkeys(t for t in texts if t not in found))
        if todo:
            fresh = embed(todo)
            found.update(zip(todo, fresh, strict=True))
            with self._lock:
                for t, v in zip(todo, fresh, strict=True):
                    self._items[t] = v
                while len(self._items) > self.max_entries:
                    self._items.popitem(last=False)
        return np.stack([found[t] for t in texts])


def _result(
    d: DocTokens, start: int, end: int, score: float, text: str | None = None, layout: Layout | None = None
) -> SpanResult:
    """A span of document `d`: characters [start, end) with its pages (`text` when they reach past the run).

    With the document's structure, also its section path and the printed labels of its pages.
    """
    pages = pages_of(d.header.page_starts, start, end)
    return SpanResult(
        doc_id=d.doc_id,
        source=d.header.source,
        start=start,
        end=end,
        text=d.chars(start, end) if text is None else text,
        score=score,
        pages=pages,
        page_labels=layout.structure.labels_of(pages) if layout is not None else None,
        section=layout.structure.section_path(start) if layout is not None else None,
    )


def _rows(docs: list[DocTokens]) -> int:
    return sum(d.n for d in docs)


def _where(filter: dict[str, str | list[str]] | None) -> Where | None:
    if not filter:
        return None
    bad = set(filter) - FILTER_FIELDS
    if bad:
        raise QueryError(f"filter field(s) {sorted(bad)} not supported; use {sorted(FILTER_FIELDS)}")
    return Where(must=[Match(k, list(v) if isinstance(v, list | tuple) else v) for k, v in filter.items()])
