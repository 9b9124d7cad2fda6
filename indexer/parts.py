"""Embed and store a long document part by part, so its float32 token matrix never exists whole.

The document is tokenized once (ids and offsets as int64 arrays, 24 bytes a token), its windows are
planned exactly as `embed_documents` plans them, and each token's owner (the window where it is most
central) is computed over the whole document. Windows are then embedded a part at a time; a part's
tokens take their vectors from the windows that own them, so every token gets the same vector as a
whole-document embedding. A segment is written as soon as all its rows are embedded and no window
still to come overlaps it (its pooled vector weighs every window that covers it); only the per-window
pooled vectors are kept for the document header, which is committed last, so a killed run leaves
orphan segments and never a half-visible document.

What stays in memory per document: ids and offsets (24 B/token), the window plan, one part's
embedded rows plus at most one segment's worth carried over, and (n_windows, dim) pooled vectors.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from indexer.codec import pool_document
from indexer.embedders import assign_central, window_starts
from indexer.embedders.hf import WindowedModel
from indexer.store.segments import Segment, max_segment_tokens, split_segments
from schemas.errors import InputError
from schemas.models import EmbeddedDocument, LoadedDocument

TOKENIZE_CHARS = 1 << 16  # text per tokenizer call: its Encoding objects cost hundreds of bytes a token
_CUT = re.compile(r"(?<=\S) (?=\S)")  # a single space between two words: no tokenizer merges across it


class WindowEmbedder(Protocol):
    """What part-wise embedding needs from a model: its tokenizer, window plan and a forward pass.

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


class HFWindows:
    """`WindowEmbedder` over a transformers backend: the same tokenizer, windows and forward pass it uses."""

    def __init__(self, embedder: WindowedModel) -> None:
        self._e = embedder
        self.dim, self.content, self.stride = embedder.dim, embedder.content, embedder.stride

    def tokenize(self, text: str) -> tuple[list[int], np.ndarray]:
        return self._e.tokenize(text)

    def embed_windows(self, windows: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        e, p = self._e, len(self._e.prefix)
        seqs = [e.prefix + [int(i) for i in w] + e.suffix for w in windows]
        out = e.encode(seqs)
        return [(h[p : p + len(w)], pooled) for (h, pooled), w in zip(out, windows, strict=True)]


@dataclass(frozen=True)
class PartWrite:
    """Segments ready to be written; `first` marks the document's first write (fits the codec on them).

    `n_rows` and `n_segments` are the whole document's, for the store's free-space check.
    """

    doc: LoadedDocument
    segments: list[Segment]
    first: bool
    n_rows: int
    n_segments: int


@dataclass(frozen=True)
class PartCommit:
    """The document's header, once every segment is written."""

    doc: LoadedDocument
    pooled: np.ndarray
    n_tokens: int
    n_rows: int
    n_segments: int


def tokenize_long(
    embedder: WindowEmbedder, text: str, chunk_chars: int = TOKENIZE_CHARS
) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize a text of any size in pieces cut at a single space between words.

    Args:
        embedder: gives the tokenizer.
        text: the document text.
        chunk_chars: about how many characters each tokenizer call gets.

    Returns:
        (n,) int64 ids and (n, 2) int64 absolute character offsets, as one call on the whole text gives.
    """
    ids_parts, off_parts = [], []
    pos = 0
    while pos < len(text):
        m = _CUT.search(text, pos + chunk_chars) if len(text) - pos > chunk_chars else None
        end = m.start() if m else len(text)
        ids, off = embedder.tokenize(text[pos:end])
        ids_parts.append(np.asarray(ids, dtype=np.int64))
        off_parts.append(off.astype(np.int64) + pos)
        pos = end
    if not ids_parts:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 2), dtype=np.int64)
    return np.concatenate(ids_parts), np.concatenate(off_parts)


def embed_in_parts(
    doc: LoadedDocument,
    embedder: WindowEmbedder,
    part_tokens: int,
    pool: int,
    segment_rows: int | None,
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[PartWrite | PartCommit]:
    """Embed `doc` a part at a time, yielding segments to write as they are ready, then the header.

    Args:
        doc: the document.
        embedder: tokenizer, window plan and forward pass.
        part_tokens: about how many tokens each part embeds (whole windows, at least one).
        pool: the collection's storage pool (adjacent tokens merged into one stored row).
        segment_rows: the store's rows per segment (None: the server limit).
        progress: called with (tokens embedded, tokens in the document) after each part.

    Yields:
        `PartWrite`s in segment order, then one `PartCommit`; the same segments, offsets and vectors
        `TokenStore.write_document(embedder.embed_documents([doc])[0])` would store.

    Raises:
        InputError: the text holds no tokens.
    """
    ids, offsets = tokenize_long(embedder, doc.text)
    n, dim = len(ids), embedder.dim
    if n == 0:
        raise InputError(doc.source, "no tokens after tokenizing; the file holds no indexable text")
    bounds = np.array(
        [[s, min(s + embedder.content, n)] for s in window_starts(n, embedder.content, embedder.stride)], dtype=np.int64
    )
    n_windows = len(bounds)
    owner = assign_central(n, bounds)
    n_rows = -(-n // pool)
    cap = min(segment_rows or max_segment_tokens(dim), max_segment_tokens(dim))
    count = max(1, -(-n_rows // cap))
    cuts = np.linspace(0, n_rows, count + 1).round().astype(int)  # the balanced cuts split_segments makes
    char_cuts = [0] + [int(offsets[c * pool, 0]) for c in cuts[1:-1]] + [len(doc.text)]
    row_starts = np.minimum(-(-bounds[:, 0] // pool), n_rows)

    window_pooled = np.empty((n_windows, dim), dtype=np.float32)
    per_part = max(1, part_tokens // max(embedder.stride, 1))
    buf = np.empty((0, dim), dtype=np.float32)  # token vectors [buf_start, embedded)
    buf_start, next_seg, first = 0, 0, True
    for wa in range(0, n_windows, per_part):
        wb = min(n_windows, wa + per_part)
        results = embedder.embed_windows([ids[s:e] for s, e in bounds[wa:wb]])
        lo, hi = int(np.searchsorted(owner, wa, "left")), int(np.searchsorted(owner, wb - 1, "right"))
        part = np.empty((hi - lo, dim), dtype=np.float32)
        for j, (hidden, pooled) in enumerate(results):
            s, e = bounds[wa + j]
            take = np.nonzero(owner[s:e] == wa + j)[0]
            part[s + take - lo] = hidden[take]
            window_pooled[wa + j] = pooled
        part /= np.maximum(np.linalg.norm(part, axis=1, keepdims=True), 1e-12)
        buf = np.concatenate([buf, part]) if len(buf) else part
        ready_rows = n_rows if hi == n else hi // pool
        done_windows_end = n_rows if wb == n_windows else int(row_starts[wb])
        segs = []
        while next_seg < count and cuts[next_seg + 1] <= min(ready_rows, done_windows_end):
            rs, re_ = int(cuts[next_seg]), int(cuts[next_seg + 1])
            ts, te = rs * pool, min(re_ * pool, n)
            seg = _segment(doc, buf[ts - buf_start : te - buf_start], offsets[ts:te], ts, bounds, window_pooled, pool)
            segs.append(
                dataclasses.replace(
                    seg, index=next_seg, tok_start=rs, char_start=char_cuts[next_seg], char_end=char_cuts[next_seg + 1]
                )
            )
            next_seg += 1
        if segs:
            keep_from = int(cuts[next_seg]) * pool if next_seg < count else n
            buf, buf_start = buf[keep_from - buf_start :], keep_from
            yield PartWrite(doc, segs, first, n_rows, count)
            first = False
        if progress is not None:
            progress(hi, n)
    weights = (bounds[:, 1] - bounds[:, 0]).astype(np.float32)
    pooled_doc = (window_pooled * weights[:, None]).sum(0)
    pooled_doc /= max(float(np.linalg.norm(pooled_doc)), 1e-12)
    yield PartCommit(doc, pooled_doc.astype(np.float32), n, n_rows, count)


def _segment(
    doc: LoadedDocument,
    vectors: np.ndarray,
    offsets: np.ndarray,
    ts: int,
    bounds: np.ndarray,
    window_pooled: np.ndarray,
    pool: int,
) -> Segment:
    """One segment of tokens [ts, ts + len(vectors)), pooled and weighted as `split_segments` does."""
    te = ts + len(vectors)
    near = np.nonzero((bounds[:, 0] < te) & (bounds[:, 1] > ts))[0]
    local = np.clip(bounds[near] - ts, 0, te - ts)
    fallback = np.zeros(vectors.shape[1], dtype=np.float32)
    sub = EmbeddedDocument(
        doc=doc,
        vectors=vectors,
        offsets=offsets,
        pooled=fallback,
        window_pooled=window_pooled[near],
        window_bounds=local,
    )
    sub = pool_document(sub, pool)
    [seg] = split_segments(sub, sub.n_tokens)
    return seg
