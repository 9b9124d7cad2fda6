"""The one contract every embedding backend meets, and the windowing all of them share.

A `TokenEmbedder` turns a document into one unit vector per token (with the token's character range in
the document text), one pooled vector per embedding window and one for the whole document; it turns a
query into a pooled vector and, where the model has them, into query token vectors. What a backend can
do is declared in its `Capabilities`, never discovered by probing for methods.

Long documents are cut into overlapping windows; each token keeps the vector from the window in which
it sits most centrally, where it saw the most context on both sides.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

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
    """

    backend: str
    vector_kind: VectorKind
    pooling: str
    query_tokens: bool


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


class DelegatingEmbedder(TokenEmbedder):
    """A TokenEmbedder that forwards everything to another one; subclass it to wrap a model
    (count calls, cache vectors, serve precomputed queries) and override only what changes."""

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

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.inner.embed_texts(texts)


# --- windowing shared by every backend ---------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """Tokens [start, end) of document `doc` (an index into the batch) embedded in one model call."""

    doc: int
    start: int
    end: int


def window_starts(n_tokens: int, width: int, stride: int) -> list[int]:
    """Start offsets of windows of `width` tokens every `stride` tokens, the last one flush with the end."""
    if n_tokens <= width:
        return [0]
    starts = list(range(0, n_tokens - width, stride))
    starts.append(n_tokens - width)
    return starts


def plan_windows(lengths: Sequence[int], width: int, stride: int) -> list[Window]:
    """All windows of a batch of documents of `lengths` tokens, in document order."""
    return [Window(k, s, min(s + width, n)) for k, n in enumerate(lengths) for s in window_starts(n, width, stride)]


def assign_central(n_tokens: int, bounds: np.ndarray) -> np.ndarray:
    """For each token, the index of the window (bounds: (n_windows, 2)) where it is most central."""
    best = np.full(n_tokens, -1, dtype=np.int64)
    best_margin = np.full(n_tokens, -1, dtype=np.int64)
    idx = np.arange(n_tokens)
    for w, (s, e) in enumerate(bounds):  # loop over windows (few), not tokens
        margin = np.minimum(idx[s:e] - s, e - 1 - idx[s:e])
        better = margin > best_margin[s:e]
        best[s:e][better] = w
        best_margin[s:e][better] = margin[better]
    return best


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
