"""The span-method contract: what a method receives, what it must return, and the hooks it fills in.

A span method turns one query's candidate documents (token matrices already on the scoring device) into
spans, best first. `SpanMethod.find_spans` is the one public entry point; it runs the hooks in a fixed
order over a batch of queries and times them:

    score(query, top)   per query: the method's candidates and their scores from the token signal
    rerank(batch)       once for the whole batch (default: nothing), e.g. one batched model call
    results(state, ...) per query: the final `SpanResult`s, best first, at most `top`

A method is built by a factory from a `MethodContext`, which carries everything it may use: the span
settings, a `Scorer` for per-token relevance, the embedder's `embed_texts` for re-ranking and the
store's neighbour-segment text. Register a factory in `retriever.methods.SPAN_METHODS` to make it
selectable by `span_method`, or pass it to `Retriever(span_method=...)`. That factory is also the hook
for experiments, which stay out of the settings: a method's own options (`ThresholdOptions`), or a
correction of raw token relevance (`retriever.methods.with_correction`, a `Scorer` with a correction).
"""

from __future__ import annotations

import bisect
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np
import torch

from indexer.embedders import VectorKind
from retriever.fetch import DocTokens
from retriever.relevance import (
    gemv_blocks,
    relevance_smoothed,
    segment_max,
    sentence_maxsim,
    similarities,
    token_relevance,
)
from retriever.sentence_table import SentenceTable
from retriever.spans import TokenSpans, smooth
from schemas.errors import QueryError
from schemas.models import SpanLead, SpanResult
from schemas.settings import SpanSettings

# (r (N,), q (dim,) on r's device, the query's documents) -> corrected r (N,), same device and length;
# r = D @ q for the pooled query vector, or for each query token vector in turn (multivector models)
RelevanceCorrection = Callable[[torch.Tensor, torch.Tensor, list[DocTokens]], torch.Tensor]
# {(doc_id, version): [segment index, ...]} -> {(doc_id, segment): (char_start, text)}
SegmentTexts = Callable[[dict[tuple[str, str], list[int]]], dict[tuple[str, int], tuple[int, str]]]
EmbedTexts = Callable[[list[str]], np.ndarray]
# {(doc_id, version): [segment index, ...]} -> {(doc_id, version, char start, char end): (dim,) sentence vector}
StoredSentenceVectors = Callable[[dict[tuple[str, str], list[int]]], dict[tuple[str, str, int, int], np.ndarray]]


class Scorer:
    """Per-token relevance of a query's candidate documents, laid end to end, in the form the model's
    token vectors were trained for (its `Capabilities.vector_kind`).

    pooled-hidden (MiniLM, Qwen3): token vectors are hidden states in the pooled query vector's space,
    and a token's relevance is r_j = d_j . q. multivector (ColBERT, Jina v4): token vectors were trained
    to be matched by the query's token vectors Q, so r_j = max_i Q_i . d_j (each token's best match, the
    document side of MaxSim), and a sentence scores by MaxSim restricted to its tokens (see
    `sentence_scores`). Methods pass both query forms (`QueryDocs.q`, `QueryDocs.tokens`); the scorer
    uses the one its vector kind calls for.

    Args:
        device: where the query goes; the documents' rows are already there.
        correction: applied to raw r before any method sees it (and before smoothing). With query token
            vectors it is applied to each column of D @ Q^T (each one an r = D @ q for one query vector
            q) before the maximum. None: r as is, and the fused CPU multiply-and-smooth path is used.
        vector_kind: the model's `Capabilities.vector_kind` (the collection records the same).
    """

    def __init__(
        self,
        device: torch.device,
        correction: RelevanceCorrection | None = None,
        vector_kind: VectorKind = "pooled-hidden",
    ) -> None:
        self.device = device
        self.correction = correction
        self.vector_kind = vector_kind

    def corrected(self, correction: RelevanceCorrection) -> Scorer:
        """This scorer with `correction` applied to raw relevance (experiments; see `with_correction`)."""
        return Scorer(self.device, correction, self.vector_kind)

    @property
    def needs_query_tokens(self) -> bool:
        """Whether scoring needs the query's token vectors (multivector models), not only its pooled vector."""
        return self.vector_kind == "multivector"

    def query(self, q: np.ndarray, tokens: np.ndarray | None = None) -> torch.Tensor:
        """The query on the device in the form the rows are scored against: q (dim,) or its tokens (m, dim).

        Raises:
            QueryError: a multivector model's query came without its token vectors.
        """
        if not self.needs_query_tokens:
            return torch.from_numpy(q).to(self.device)
        if tokens is None or len(tokens) == 0:
            raise QueryError(
                "this model's token vectors are multivector (trained for MaxSim): token relevance needs the "
                "query's token vectors; pass QueryDocs.tokens (scorer.relevance(query.q, query.docs, query.tokens))"
            )
        return torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.float32)).to(self.device)

    def flat(
        self, q: np.ndarray, docs: list[DocTokens], tokens: np.ndarray | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """The query on the device (`query`), every document's row blocks in order (never concatenated),
        doc_starts (B+1,)."""
        doc_starts = torch.cumsum(torch.tensor([0] + [d.n for d in docs], device=self.device), 0)
        return self.query(q, tokens), [p for d in docs for p in d.parts], doc_starts

    def _corrected_similarities(
        self, qs: torch.Tensor, blocks: list[torch.Tensor], docs: list[DocTokens]
    ) -> torch.Tensor:
        """(N, m) D @ Q^T with the correction applied to each column, as to r = D @ q for that q."""
        assert self.correction is not None
        sims = similarities(blocks, qs)
        return torch.stack([self.correction(sims[:, i].contiguous(), qs[i], docs) for i in range(len(qs))], 1)

    def relevance(
        self, q: np.ndarray, docs: list[DocTokens], tokens: np.ndarray | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw relevance of every token.

        Args:
            q: (dim,) float32 pooled query vector.
            docs: the query's candidate documents.
            tokens: (m, dim) float32 query token vectors; required for multivector models.

        Returns:
            r (N,) over all documents' tokens in order (corrected when a correction is set), and
            doc_starts (B+1,), where each document begins in r.

        Raises:
            QueryError: a multivector model and no `tokens`.
        """
        qv, blocks, doc_starts = self.flat(q, docs, tokens)
        if self.correction is None:
            return token_relevance(blocks, qv), doc_starts
        if qv.dim() == 1:
            return self.correction(gemv_blocks(blocks, qv), qv, docs), doc_starts
        return self._corrected_similarities(qv, blocks, docs).amax(1), doc_starts

    def relevance_smoothed(
        self, q: np.ndarray, docs: list[DocTokens], sigma: float, tokens: np.ndarray | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw and per-document Gaussian-smoothed relevance of every token.

        Args:
            q: (dim,) float32 pooled query vector.
            docs: the query's candidate documents.
            sigma: smoothing width in stored rows.
            tokens: as in `relevance`.

        Returns:
            r (N,), smoothed (N,) and doc_starts (B+1,).

        Raises:
            QueryError: as in `relevance`.
        """
        if self.correction is None:
            qv, blocks, doc_starts = self.flat(q, docs, tokens)
            r, s = relevance_smoothed(blocks, qv, doc_starts, sigma)
            return r, s, doc_starts
        r, doc_starts = self.relevance(q, docs, tokens)
        return r, smooth(r, doc_starts, sigma), doc_starts

    def sentence_scores(
        self, q: np.ndarray, docs: list[DocTokens], table: SentenceTable, tokens: np.ndarray | None = None
    ) -> torch.Tensor:
        """Every sentence's in-context score against the query.

        pooled-hidden: the cosine of the sentence's summed token vectors with q, a segment sum of r over
        the table's cached norms. multivector: MaxSim restricted to the sentence, the mean over query
        tokens of each one's best match among the sentence's tokens (ColBERT's score of the sentence as
        a passage, with its tokens in their document context).

        Args:
            q: (dim,) float32 pooled query vector.
            docs: the query's candidate documents.
            table: their sentences (`SentenceTables.table(docs)`).
            tokens: as in `relevance`.

        Returns:
            (S,) float32, in the table's order.

        Raises:
            QueryError: as in `relevance`.
        """
        if not self.needs_query_tokens:
            if table.pieces is not None and table.piece_sid is not None:  # fetched by sentence sums: no rows
                if self.correction is not None:
                    raise ValueError("a relevance correction needs token rows; fetch with rows=True")
                rp = table.pieces @ self.query(q)
                return torch.zeros(table.n, device=rp.device).index_add_(0, table.piece_sid, rp) / table.norm
            r, _ = self.relevance(q, docs)
            rs = torch.zeros(table.n, device=r.device).index_add_(0, table.sid, r)
            return rs / table.norm
        qs, blocks, _ = self.flat(q, docs, tokens)
        if self.correction is None:
            return sentence_maxsim(blocks, qs, table.sid, table.n)
        return segment_max(self._corrected_similarities(qs, blocks, docs), table.sid, table.n).mean(1)


@dataclass
class MethodContext:
    """What a span method may use; the Retriever builds one per instance.

    Attributes:
        settings: the span settings (lengths in model tokens).
        pool: model tokens per stored row (the collection's storage_pool); lengths scale by it.
        scorer: per-token relevance of candidate documents.
        embed_texts: embeds short texts each on its own, (n, dim) unit vectors: sentence vectors computed at
            query time (serialised with other model calls).
        segment_texts: reads stored segments' text, for sentences a fetched run cut.
        sentence_vectors: reads the stored sentence vectors of the sentences starting in stored segments,
            when the collection stores them (`store_sentence_vectors`); None: it does not.
    """

    settings: SpanSettings
    pool: int
    scorer: Scorer
    embed_texts: EmbedTexts
    segment_texts: SegmentTexts
    sentence_vectors: StoredSentenceVectors | None = None


@dataclass
class QueryDocs:
    """One query's input to a span method: its vectors and its candidate documents, best recalled first."""

    q: np.ndarray  # (dim,) float32 pooled vector
    docs: list[DocTokens]
    text: str = ""  # the query's text (lexical signals); "" where only the vector is known
    segment_score: float | None = None  # best segment's MaxSim per query token; None: not ranked by MaxSim
    tokens: np.ndarray | None = None  # (m, dim) float32 token vectors in the model's query form; None: not
    # computed (the Retriever always gives them where `Scorer.needs_query_tokens`)


@dataclass
class TokenSignal:
    """One query's token spans over its documents laid end to end, with the signal they came from."""

    spans: TokenSpans
    raw: torch.Tensor  # (N,) token relevance (`Scorer.relevance`)
    smoothed: torch.Tensor  # (N,)
    threshold: float


@dataclass
class MethodOutput:
    """One query's spans, best first, and the milliseconds of each stage (score, rerank, results)."""

    spans: list[SpanResult]
    timings_ms: dict[str, float] = field(default_factory=dict)
    features: dict[str, float] = field(default_factory=dict)  # of the top span, for answerability


State = TypeVar("State")


class SpanMethod(ABC, Generic[State]):
    """Spans from candidate documents' token vectors. Subclasses fill in `score` and `results`, and
    `rerank` when they refine a whole batch at once; callers use `find_spans` only.

    Implementations must be safe to call from several threads at once (the Retriever is shared).
    """

    def find_spans(self, batch: Sequence[QueryDocs], top: int | None) -> list[MethodOutput]:
        """The spans of every query of a batch.

        Args:
            batch: the queries, each with its candidate documents (a query without any gets no spans).
            top: most spans per query; None: every span the method finds (the sentence method then
                returns `SpanSettings.top`, which also bounds its candidates).

        Returns:
            One `MethodOutput` per query, in order. timings_ms: "score" (per query), "rerank" (the
            batch's re-ranking time divided among the queries that had documents), "results".
        """
        states: list[State | None] = []
        outs = [MethodOutput([]) for _ in batch]
        for out, query in zip(outs, batch, strict=True):
            t = time.perf_counter()
            states.append(self.score(query, top) if query.docs else None)
            out.timings_ms["score"] = (time.perf_counter() - t) * 1e3
        live = [s for s in states if s is not None]
        if live:
            t = time.perf_counter()
            self.rerank(live)
            per = (time.perf_counter() - t) * 1e3 / len(live)
            for out, s in zip(outs, states, strict=True):
                if s is not None:
                    out.timings_ms["rerank"] = per
        for out, query, s in zip(outs, batch, states, strict=True):
            t = time.perf_counter()
            if s is not None:
                out.spans = self.results(s, query, top)
                out.features = self.features(s, query, out.spans) if out.spans else {}
            out.timings_ms["results"] = (time.perf_counter() - t) * 1e3
        return outs

    def features(self, state: State, query: QueryDocs, spans: list[SpanResult]) -> dict[str, float]:
        """Hook: features of the top span that `retriever.calibration` turns into a confidence; default none.

        Args:
            state: what `score` returned (after `rerank`).
            query: the same query.
            spans: what `results` returned (not empty).

        Returns:
            Feature values by name (`retriever.calibration.FEATURES`); {}: no confidence is given.
        """
        return {}

    @property
    def scores_from_sentence_sums(self) -> bool:
        """Capability: `score` reads only each sentence's summed token rows (`SentenceTable.pieces`), never
        the rows, so the Retriever may fetch the segments' sentence sums instead of their rows
        (`Fetcher.fetch(..., rows=False)`); default False: the rows are fetched."""
        return False

    def clear_caches(self) -> None:
        """Hook: forget what the method caches across queries (a cold start); default: nothing."""
        return None

    def signal(self, q: np.ndarray, docs: list[DocTokens], tokens: np.ndarray | None = None) -> TokenSignal | None:
        """Hook: the smoothed token signal and threshold this method cuts spans from, which
        `Retriever.explain` shows; default None: the method cuts none (explain shows the threshold method's).

        Args:
            q: (dim,) float32 pooled query vector.
            docs: candidate documents (at least one).
            tokens: (m, dim) query token vectors, which a multivector model's relevance needs.
        """
        return None

    @abstractmethod
    def score(self, query: QueryDocs, top: int | None) -> State:
        """Hook: candidate spans of one query (with at least one document) and their scores.

        Args:
            query: the query vector and its candidate documents.
            top: as in `find_spans`.

        Returns:
            Whatever `rerank` and `results` need for this query.
        """

    def rerank(self, batch: list[State]) -> None:
        """Hook: refine the scores of a whole batch in place (one batched model call); default: nothing.

        Args:
            batch: the states `score` returned, for the queries that had documents.
        """
        return None

    @abstractmethod
    def results(self, state: State, query: QueryDocs, top: int | None) -> list[SpanResult]:
        """Hook: the final spans of one query, best first, at most `top` (all when None).

        Args:
            state: what `score` returned (after `rerank`).
            query: the same query.
            top: as in `find_spans`.

        Returns:
            Spans with absolute character offsets into their documents.
        """


def pages_of(page_starts: Sequence[int], start: int, end: int) -> list[int]:
    """1-based pages that characters [start, end) touch.

    Args:
        page_starts: character offset where each page begins, ascending, the first 0.
        start: first character.
        end: one past the last character.

    Returns:
        The page numbers, ascending.
    """
    first = bisect.bisect_right(page_starts, start) - 1
    last = bisect.bisect_right(page_starts, max(start, end - 1)) - 1
    return list(range(max(first, 0) + 1, max(last, 0) + 2))


def span_result(d: DocTokens, start: int, end: int, score: float, text: str | None = None) -> SpanResult:
    """A span of document `d`: characters [start, end) with their pages.

    Args:
        d: the document (or run of its segments) the span lies in.
        start: absolute first character.
        end: absolute end character (exclusive).
        score: the method's score.
        text: the span's text when it reaches past the fetched run; None: sliced from `d`.

    Returns:
        The `SpanResult`, with its section path and printed page labels when the document has a structure,
        and a table row's header row as its `lead` when that lies in the fetched run.
    """
    layout = d.layout
    pages = pages_of(d.header.page_starts, start, end)
    lead = None
    head = layout.table_header(start) if layout is not None else None
    if head is not None and d.char_base <= head[0] and head[1] <= d.char_base + len(d.text):
        # a row without its header row says nothing of what its cells are
        lead = SpanLead(start=head[0], end=head[1], text=d.chars(*head))
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
        lead=lead,
    )
