"""Sentence vectors: each sentence of a document embedded alone at ingest (opt-in: `store_sentence_vectors`),
stored with its segments.

The sentence span method re-ranks its best candidates by the cosine of the sentence embedded alone.
Computed here once per document instead of per query, the query path reads these sentence vectors
from the store and runs no model after the query embedding. The units must be the ones search cuts,
so they are made the way `retriever.fetch` and `retriever.sentence_table` make them: token rows as
stored (after storage pooling), split into the store's segments, each segment's sentence-ending rows
found from its own text by `indexer.boundaries.token_ends_sentence`, cut by
`indexer.boundaries.sentence_rows` (the document's last row ends a sentence), over characters
[its first row's start, the running maximum of row ends at its last row).

A long document embedded part by part (`indexer.long_documents`) gets the same sentences, cut as its
segments arrive (`with_part_sentence_vectors`); a sentence is stored with the segment it starts in,
so that segment waits until its last sentence closes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from indexer.boundaries import sentence_rows, token_ends_sentence
from indexer.codec import pool_document
from indexer.embedders import TokenEmbedder
from indexer.long_documents import PartCommit, PartWrite
from indexer.store import TokenStore, WriteTarget
from indexer.store.segments import Segment, split_segments
from schemas.models import EmbeddedDocument, SentenceVectors
from schemas.settings import Boundary

LENGTH_GROUP = 128  # sentences per model call


def sentence_chars(emb: EmbeddedDocument, pool: int, segment_rows: int | None, rule: Boundary) -> np.ndarray:
    """Character ranges of the sentences search will cut from this document as stored.

    Args:
        emb: the embedded document (model tokens).
        pool: the collection's storage pool (model tokens per stored row).
        segment_rows: rows per stored segment (None: the server's limit), as the store writes them.
        rule: the sentence-end rule (`SpanSettings.boundary`).

    Returns:
        (S, 2) int64 [start, end), ascending; empty sentences dropped.
    """
    rows = pool_document(emb, pool)
    if rows.n_tokens == 0:
        return np.zeros((0, 2), dtype=np.int64)
    text = emb.doc.text
    ends_sentence = np.concatenate(
        [
            token_ends_sentence(text[s.char_start : s.char_end], s.offsets[:, 0] - s.char_start, rule)
            for s in split_segments(rows, segment_rows)
        ]
    )
    first, last, _ = sentence_rows(ends_sentence)
    row_end = np.maximum.accumulate(rows.offsets[:, 1])
    chars = np.stack([rows.offsets[first, 0], row_end[last]], axis=1).astype(np.int64)
    return chars[chars[:, 1] > chars[:, 0]]


def with_sentence_vectors(
    docs: Sequence[EmbeddedDocument], embedder: TokenEmbedder, store: TokenStore | WriteTarget, rule: Boundary
) -> list[EmbeddedDocument]:
    """The documents with their sentence vectors when `store` keeps them (else as they are).

    One `embed_texts` call for the whole batch; repeated texts are embedded once.

    Args:
        docs: embedded documents about to be written to `store`.
        embedder: the model that embedded them (the one search re-ranks with).
        store: the collection they go to (or its `WriteTarget`): its `sentence_vectors`, storage pool and
            segment rows.
        rule: the sentence-end rule (`SpanSettings.boundary`).

    Returns:
        `docs`, or copies with `sentences` set.
    """
    if not store.meta.sentence_vectors or not docs:
        return list(docs)
    pool, rows = store.meta.layout.pool, store.segment_rows
    chars = [sentence_chars(e, pool, rows, rule) for e in docs]
    texts = [[e.doc.text[a:b] for a, b in c] for e, c in zip(docs, chars, strict=True)]
    distinct = list(dict.fromkeys(t for ts in texts for t in ts))
    vecs = embed_by_length(embedder, distinct)
    row = {t: i for i, t in enumerate(distinct)}
    out = []
    for e, c, ts in zip(docs, chars, texts, strict=True):
        v = vecs[[row[t] for t in ts]] if ts else np.zeros((0, embedder.dim), np.float32)
        out.append(e.model_copy(update={"sentences": SentenceVectors(chars=c, vectors=v.astype(np.float32))}))
    return out


def with_part_sentence_vectors(
    parts: Iterable[PartWrite | PartCommit], embedder: TokenEmbedder, store: TokenStore | WriteTarget, rule: Boundary
) -> Iterator[PartWrite | PartCommit]:
    """A long document's parts (`indexer.long_documents.embed_in_parts`) with their sentence vectors
    when `store` keeps them (else as they are).

    The sentences are those `sentence_chars` cuts from the whole document: each segment's sentence
    ends found from its own text, the last segment's last row ending one, the running maximum of row
    ends carried across segments. Each sentence goes with the segment it starts in (where search
    reads it), so the segment where the still open sentence starts is held back until that sentence
    closes; the segments after it lie inside that sentence (no sentence starts in them) and go at
    once. What is held is one segment and its closed sentences' characters, whatever the length of
    the document or of its sentences; segments may therefore be written out of index order.

    Args:
        parts: one document's `PartWrite`s in segment order, then its `PartCommit`.
        embedder: the model that embedded them (the one search re-ranks with).
        store: the collection they go to (or its `WriteTarget`): its `sentence_vectors`.
        rule: the sentence-end rule (`SpanSettings.boundary`).

    Yields:
        `PartWrite`s with `sentences` set (the first one `first`), then the `PartCommit`.
    """
    if not store.meta.sentence_vectors:
        yield from parts
        return
    cutter = _PartSentences(embedder, rule)
    for item in parts:
        if isinstance(item, PartCommit):
            if cutter.held is not None:
                raise ValueError(f"{item.doc.doc_id}: the document ended with a sentence still open")
            yield item
            continue
        out = cutter.add(item)
        if out is not None:
            yield out


class _PartSentences:
    """The sentence cut carried across one document's parts (see `with_part_sentence_vectors`)."""

    def __init__(self, embedder: TokenEmbedder, rule: Boundary) -> None:
        self.embedder, self.rule = embedder, rule
        self.held: Segment | None = None  # the segment where the open sentence starts
        self.held_chars: list[tuple[int, int]] = []  # closed sentences that start in `held`
        self.open: tuple[int, int] | None = None  # (segment, first char) of the open sentence; None: the next row
        self.run_max = 0  # the largest row end so far
        self.first = True

    def add(self, item: PartWrite) -> PartWrite | None:
        """Cut the sentences of a part's segments; the write of the segments now complete, if any."""
        text = item.doc.text
        ready: list[Segment] = [] if self.held is None else [self.held]
        closed: list[tuple[int, int, int]] = [(self.held.index, a, b) for a, b in self.held_chars] if self.held else []
        for seg in item.segments:
            starts, ends = seg.offsets[:, 0], seg.offsets[:, 1]
            flags = token_ends_sentence(text[seg.char_start : seg.char_end], starts - seg.char_start, self.rule)
            if seg.index == item.n_segments - 1:
                flags[-1] = True  # the document's last row ends a sentence
            row_end = np.maximum(np.maximum.accumulate(ends), self.run_max)
            self.run_max = int(row_end[-1])
            # None: the previous segment's last row ended a sentence, so one starts at this segment's first row
            open_ = self.open if self.open is not None else (seg.index, int(starts[0]))
            for r in np.flatnonzero(flags).tolist():
                closed.append((open_[0], open_[1], int(row_end[r])))
                if r + 1 < len(starts):
                    open_ = (seg.index, int(starts[r + 1]))
            self.open = None if flags[-1] else open_
            ready.append(seg)
        hold = self.open[0] if self.open is not None else None
        self.held = next((s for s in ready if s.index == hold), None)
        self.held_chars = [(a, b) for g, a, b in closed if g == hold]
        write = [s for s in ready if s.index != hold]
        if not write:
            return None
        chars = np.array([(a, b) for g, a, b in closed if g != hold and b > a], dtype=np.int64).reshape(-1, 2)
        self.held_chars = [(a, b) for a, b in self.held_chars if b > a]
        texts = [text[a:b] for a, b in chars]
        distinct = list(dict.fromkeys(texts))
        vecs = embed_by_length(self.embedder, distinct) if distinct else np.zeros((0, self.embedder.dim), np.float32)
        row = {t: i for i, t in enumerate(distinct)}
        sv = SentenceVectors(chars=chars, vectors=vecs[[row[t] for t in texts]].astype(np.float32))
        first, self.first = self.first, False
        return PartWrite(item.doc, write, first, item.n_rows, item.n_segments, sv)


def embed_by_length(embedder: TokenEmbedder, texts: list[str]) -> np.ndarray:
    """(n, dim) vectors of `texts` each embedded alone, in groups of similar length (also the sentence
    index peer's embedding, `scripts/sentence_index.py`, so both sides embed sentences alike).

    One call pads every sentence of a batch to its longest (several times the real tokens), so texts
    go shortest first, LENGTH_GROUP at a time.
    """
    out = np.zeros((len(texts), embedder.dim), np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for k in range(0, len(order), LENGTH_GROUP):
        idx = order[k : k + LENGTH_GROUP]
        out[idx] = embedder.embed_texts([texts[i] for i in idx])
    return out
