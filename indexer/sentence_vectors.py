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
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from indexer.boundaries import sentence_rows, token_ends_sentence
from indexer.codec import pool_document
from indexer.embedders import TokenEmbedder
from indexer.store import TokenStore, WriteTarget
from indexer.store.segments import split_segments
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
    vecs = _embed_by_length(embedder, distinct)
    row = {t: i for i, t in enumerate(distinct)}
    out = []
    for e, c, ts in zip(docs, chars, texts, strict=True):
        v = vecs[[row[t] for t in ts]] if ts else np.zeros((0, embedder.dim), np.float32)
        out.append(e.model_copy(update={"sentences": SentenceVectors(chars=c, vectors=v.astype(np.float32))}))
    return out


def _embed_by_length(embedder: TokenEmbedder, texts: list[str]) -> np.ndarray:
    """(n, dim) vectors of `texts` each embedded alone, in groups of similar length.

    One call pads every sentence of a batch to its longest (several times the real tokens), so texts
    go shortest first, LENGTH_GROUP at a time.
    """
    out = np.zeros((len(texts), embedder.dim), np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for k in range(0, len(order), LENGTH_GROUP):
        idx = order[k : k + LENGTH_GROUP]
        out[idx] = embedder.embed_texts([texts[i] for i in idx])
    return out
