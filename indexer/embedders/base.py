"""The one contract every embedding backend meets.

A `TokenEmbedder` turns a document into one unit vector per token (with the token's character range in
the document text), one pooled vector per embedding window and one for the whole document; it turns a
query into a pooled vector and, where the model has them, into query token vectors (`encode_queries`
gives both). What a backend can do is declared in its `Capabilities`, never discovered by probing for
methods or testing its class: a wrapper (`DelegatingEmbedder`) declares what it forwards.

Long documents are cut into overlapping windows (`indexer.windows`); each token keeps the vector from
the window in which it sits most centrally, where it saw the most context on both sides. A backend
whose capabilities say `part_wise` also hands out its window machinery (`windows()`), so a document of
any length can be embedded a part at a time (`indexer.long_documents`).

A backend whose capabilities say `scheduled` lets a caller interleave other work with its document
embedding: inside `scheduled_by(scheduler)` it takes `forward_turn()` around each forward batch and each
tokenizer call, and keeps its forward batches within `forward_batch_tokens(...)`. The service uses this to
share one model between searches and an ingest job per forward batch rather than per document.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from indexer.windows import Window, assign_central
from schemas.errors import QueryError
from schemas.models import EmbeddedDocument, LoadedDocument

VectorKind = Literal["pooled-hidden", "multivector"]


@dataclass(frozen=True)
class Capabilities:
    """What a backend declares about itself; recorded with a collection and read by callers.

    Attributes:
        backend: which loading code produced the vectors ("hf-pooled", "colbert", "remote-code").
        vector_kind: "pooled-hidden" when token vectors are the model's last hidden states (the same space
            as its pooled sentence vector); "multivector" when they are a late-interaction head's output
            (ColBERT projection, Jina v4 multivector), trained for MaxSim.
        pooling: how the pooled vector is made ("mean", "cls", "last", "token-mean", "model").
        query_tokens: whether `embed_query_tokens` returns the query's token vectors.
        part_wise: whether `windows()` gives the model's window machinery, so that a long document is
            embedded a part at a time (memory bounded by the part, not the document) with the vectors a
            whole `embed_documents` gives.
        scheduled: whether `embed_documents`, `embed_texts` and `windows()` take `forward_turn()` around
            each forward batch and tokenizer call and size their batches by `forward_batch_tokens`, so a
            caller's `ForwardScheduler` can run other work between two batches. A backend that does not
            must be called under the caller's lock as a whole.
    """

    backend: str
    vector_kind: VectorKind
    pooling: str
    query_tokens: bool
    part_wise: bool = False
    scheduled: bool = False


@dataclass(frozen=True)
class EncodedQuery:
    """One query's vectors.

    Attributes:
        pooled: (dim,) float32 unit vector, in the model's query form.
        tokens: (m, dim) float32 unit vectors of its tokens, for MaxSim; None when the model has none
            (`Capabilities.query_tokens` False).
    """

    pooled: np.ndarray
    tokens: np.ndarray | None


class ForwardScheduler(Protocol):
    """Decides when a backend's next forward batch may run (the service: searches first, then ingest).

    Attributes:
        batch_tokens: the most padded tokens the caller wants in one forward batch (None: the backend's
            own `batch_tokens`); smaller batches let other work in sooner and run the model less efficiently.
    """

    batch_tokens: int | None

    def turn(self) -> AbstractContextManager[None]:
        """Held around one forward batch or tokenizer call; entering it waits until the scheduler says go."""
        ...


_SCHEDULER: ContextVar[ForwardScheduler | None] = ContextVar("chunkless_forward_scheduler", default=None)


@contextmanager
def scheduled_by(scheduler: ForwardScheduler) -> Iterator[None]:
    """Within this block (in this thread), `scheduled` backends take `scheduler.turn()` per forward batch.

    A context variable rather than an argument, so wrappers (`DelegatingEmbedder` subclasses that count,
    fail or cache) pass it through untouched.
    """
    token = _SCHEDULER.set(scheduler)
    try:
        yield
    finally:
        _SCHEDULER.reset(token)


def forward_turn() -> AbstractContextManager[None]:
    """What a `scheduled` backend holds around one forward batch or tokenizer call: the scheduler's turn,
    or nothing outside `scheduled_by`."""
    scheduler = _SCHEDULER.get()
    return nullcontext() if scheduler is None else scheduler.turn()


def forward_batch_tokens(own: int) -> int:
    """The padded-token budget of the next forward batch: the backend's `own`, or less under a scheduler."""
    scheduler = _SCHEDULER.get()
    if scheduler is None or scheduler.batch_tokens is None:
        return own
    return max(1, min(own, scheduler.batch_tokens))


class WindowEmbedder(Protocol):
    """A model's window machinery, for embedding a long document part by part (`indexer.long_documents`).

    Attributes:
        dim: vector size.
        content: content tokens per window (special tokens excluded).
        stride: tokens between window starts.
    """

    dim: int
    content: int
    stride: int

    def tokenize(self, text: str) -> tuple[list[int], np.ndarray]:
        """Token ids of `text` without special tokens, and their (n, 2) character offsets."""
        ...

    def embed_windows(self, windows: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Embed each window's content token ids; per window (len, dim) hidden rows and a (dim,) unit pooled vector."""
        ...


class TokenEmbedder(ABC):
    """An embedding model as the indexer and retriever use it.

    Attributes:
        name: canonical model identity (a hub name where one is known), recorded with a collection.
        dim: size of token and pooled vectors.
        window: model tokens per embedding window (special tokens and prompt included).
        stride: document tokens between window starts (windows overlap by window content - stride).
        capabilities: what this backend can do (see `Capabilities`).
    """

    name: str
    dim: int
    window: int
    stride: int
    capabilities: Capabilities

    @property
    def backend(self) -> str:
        """The loading code's name, recorded with a collection (`Capabilities.backend`)."""
        return self.capabilities.backend

    @property
    def vector_kind(self) -> VectorKind:
        """ "pooled-hidden" or "multivector", recorded with a collection (`Capabilities.vector_kind`)."""
        return self.capabilities.vector_kind

    @property
    def pooling(self) -> str:
        """How pooled vectors are made (`Capabilities.pooling`)."""
        return self.capabilities.pooling

    @abstractmethod
    def tokenize(self, text: str) -> tuple[list[int], np.ndarray]:
        """Split text into the model's tokens, without special tokens or prompts.

        Args:
            text: any text.

        Returns:
            The token ids and their (n, 2) int64 character [start, end) ranges in `text`, starts
            non-decreasing and clipped to the text.
        """

    @abstractmethod
    def embed_documents(self, docs: Sequence[LoadedDocument]) -> list[EmbeddedDocument]:
        """Embed whole documents of any length (windowed past the model's context).

        Args:
            docs: loaded documents.

        Returns:
            One `EmbeddedDocument` per input, in order: unit token vectors (rows follow `tokenize(doc.text)`)
            with their character offsets, a unit pooled vector per window with the window's token bounds,
            and a unit pooled vector for the document.
        """

    @abstractmethod
    def embed_queries(self, queries: Sequence[str]) -> np.ndarray:
        """Pooled query vectors in the model's query form (instruction, prompt or query marker applied).

        Args:
            queries: the questions.

        Returns:
            (n, dim) float32 unit rows.

        Raises:
            QueryError: a query is empty or longer than the model accepts.
        """

    @abstractmethod
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Pooled vectors of short texts embedded alone, in document form (re-ranking, chunk baselines).

        Args:
            texts: pieces of text; each is cut to one window.

        Returns:
            (n, dim) float32 unit rows.
        """

    def embed_query(self, query: str) -> np.ndarray:
        """The pooled vector of one query.

        Args:
            query: the question.

        Returns:
            (dim,) float32 unit vector.

        Raises:
            QueryError: the query is empty or too long.
        """
        return np.asarray(self.embed_queries([query])[0], dtype=np.float32)

    def embed_query_tokens(self, query: str) -> np.ndarray:
        """The query's token vectors for MaxSim, when `capabilities.query_tokens` says the model has them.

        Args:
            query: the question.

        Returns:
            (m, dim) float32 unit rows.

        Raises:
            QueryError: the query is empty or too long, or this model gives no query token vectors.
        """
        raise QueryError(
            f"model '{self.name}' gives no query token vectors (capabilities.query_tokens is False); "
            "set CHUNKLESS_FETCH_RANK=pooled and CHUNKLESS_RECALL_MAXSIM=false"
        )

    def encode_queries(self, queries: Sequence[str]) -> list[EncodedQuery]:
        """Each query's pooled vector and, when `capabilities.query_tokens`, its token vectors.

        This default embeds twice (`embed_queries`, then `embed_query_tokens` per query); a backend that
        gets both from one forward pass overrides it.

        Args:
            queries: the questions.

        Returns:
            One `EncodedQuery` per query, in order.

        Raises:
            QueryError: a query is empty or too long.
        """
        if not queries:
            return []
        pooled = np.asarray(self.embed_queries(queries), dtype=np.float32)
        if not self.capabilities.query_tokens:
            return [EncodedQuery(p, None) for p in pooled]
        return [
            EncodedQuery(p, np.asarray(self.embed_query_tokens(q), dtype=np.float32))
            for p, q in zip(pooled, queries, strict=True)
        ]

    def windows(self) -> WindowEmbedder:
        """The model's window machinery, when `capabilities.part_wise` says it has one.

        Returns:
            Its tokenizer, window plan and forward pass over windows; the vectors `embed_documents` stitches.

        Raises:
            NotImplementedError: this backend embeds documents whole only.
        """
        raise NotImplementedError(
            f"model '{self.name}' embeds documents whole (capabilities.part_wise is False); it has no windows()"
        )


class DelegatingEmbedder(TokenEmbedder):
    """A TokenEmbedder that forwards everything to another one; subclass it to wrap a model
    (count calls, cache vectors, serve precomputed queries) and override only what changes.

    It declares the inner model's capabilities and forwards `encode_queries` and `windows()` as they
    are, so a wrapped model keeps its one-pass query encoding and its part-by-part embedding; a caller's
    `scheduled_by` reaches the inner model through any wrapper, since it is not an argument. A wrapper
    that changes how queries are embedded overrides `encode_queries` too; one that changes how
    documents are embedded either wraps `windows()` as well or declares `part_wise=False`
    (`dataclasses.replace(inner.capabilities, part_wise=False)`), so every document reaches its
    `embed_documents`.
    """

    def __init__(self, inner: TokenEmbedder) -> None:
        self.inner = inner
        self.name, self.dim, self.window, self.stride = inner.name, inner.dim, inner.window, inner.stride
        self.capabilities = inner.capabilities

    def tokenize(self, text: str) -> tuple[list[int], np.ndarray]:
        return self.inner.tokenize(text)

    def embed_documents(self, docs: Sequence[LoadedDocument]) -> list[EmbeddedDocument]:
        return self.inner.embed_documents(docs)

    def embed_queries(self, queries: Sequence[str]) -> np.ndarray:
        return self.inner.embed_queries(queries)

    def embed_query(self, query: str) -> np.ndarray:
        return self.inner.embed_query(query)

    def embed_query_tokens(self, query: str) -> np.ndarray:
        return self.inner.embed_query_tokens(query)

    def encode_queries(self, queries: Sequence[str]) -> list[EncodedQuery]:
        return self.inner.encode_queries(queries)

    def windows(self) -> WindowEmbedder:
        return self.inner.windows()

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.inner.embed_texts(texts)


# --- what every backend shares ---------------------------------------------------------------------


def clean_offsets(offsets: np.ndarray, text_len: int) -> np.ndarray:
    """Make tokenizer offsets usable: clipped to the text, starts non-decreasing, end >= start.

    Byte-level BPE gives several tokens the same or overlapping ranges when a multi-byte character
    is split; spans take min(start)/max(end) over their tokens, so overlaps are harmless once ordered.
    """
    off = np.clip(offsets.astype(np.int64, copy=True), 0, text_len)
    if len(off):
        off[:, 0] = np.maximum.accumulate(off[:, 0])
        off[:, 1] = np.maximum(off[:, 1], off[:, 0])
    return off


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), float32."""
    x = np.asarray(x, dtype=np.float32)
    # einsum sums the squares without the (n, dim) temporary np.linalg.norm builds: a document's rows are many
    norms = np.sqrt(np.einsum("...i,...i->...", x, x))[..., None]
    return x / np.maximum(norms, 1e-12)


def stitch(
    doc: LoadedDocument,
    offsets: np.ndarray,
    bounds: np.ndarray,
    window_rows: Sequence[np.ndarray],
    window_pooled: np.ndarray,
    dim: int,
) -> EmbeddedDocument:
    """One document's token matrix from its windows: each token from the window where it is most central.

    Args:
        doc: the document.
        offsets: (n, 2) character ranges of its tokens.
        bounds: (w, 2) token [start, end) of each window.
        window_rows: per window, (end - start, dim) vectors of its content tokens.
        window_pooled: (w, dim) pooled vector of each window.
        dim: vector size.

    Returns:
        The embedded document; its pooled vector is the token-count-weighted mean of the window vectors.
    """
    n = len(offsets)
    owner = assign_central(n, bounds)
    vectors = np.empty((n, dim), dtype=np.float32)
    for w, (s, e) in enumerate(bounds):
        take = np.nonzero(owner[s:e] == w)[0]
        vectors[s + take] = window_rows[w][take]
    wp = unit_rows(window_pooled)
    weights = (bounds[:, 1] - bounds[:, 0]).astype(np.float32)
    pooled = unit_rows((wp * weights[:, None]).sum(0))
    return EmbeddedDocument(
        doc=doc, vectors=unit_rows(vectors), offsets=offsets, pooled=pooled, window_pooled=wp, window_bounds=bounds
    )


def stitch_documents(
    docs: Sequence[LoadedDocument],
    tokenized: Sequence[tuple[Sequence[int], np.ndarray]],
    windows: Sequence[Window],
    results: Sequence[tuple[np.ndarray, np.ndarray]],
    prefix: int,
    dim: int,
) -> list[EmbeddedDocument]:
    """Every document's token matrix from the embedded windows of all of them (`stitch` per document).

    Args:
        docs: the documents.
        tokenized: per document, its token ids and (n, 2) character offsets.
        windows: the windows, each naming its document (`plan_windows`).
        results: per window, its (sequence length, dim) hidden rows and (dim,) pooled vector.
        prefix: tokens the model's prefix puts before each window's content.
        dim: vector size.

    Returns:
        One embedded document per document, in order.
    """
    mine: list[list[int]] = [[] for _ in docs]
    for i, w in enumerate(windows):
        mine[w.doc].append(i)
    out = []
    for k, doc in enumerate(docs):
        bounds = np.array([[windows[i].start, windows[i].end] for i in mine[k]], dtype=np.int64).reshape(-1, 2)
        rows = [results[i][0][prefix : prefix + (windows[i].end - windows[i].start)] for i in mine[k]]
        wp = np.stack([results[i][1] for i in mine[k]])
        out.append(stitch(doc, tokenized[k][1], bounds, rows, wp, dim))
    return out
