"""Long documents, embedded and written part by part: memory per document does not grow with its length.

An ingest run sends a document here when it is longer than one embedding batch and the model can
(`Capabilities.part_wise`, its `windows()`); `embed_in_parts` yields the segments to write as they are
ready, then the header, and the run's writer stores them in that order.

The text is tokenized in pieces of about 64 KB cut between words, once to count its tokens (the
window plan and the balanced segment cuts need the total) and again as the embedding reaches each
piece (`TokenStream`), so ids and offsets are held only for a sliding range. Windows are planned
exactly as `embed_documents` plans them (`indexer.windows`) and embedded a part at a time; each token
takes its vector from the window where it is most central, found among the windows over that part
(`owners`), so every token gets the same vector as a whole-document embedding. A segment is written
as soon as all its rows are embedded and no window still to come overlaps it (its pooled vector
weighs every window that covers it); the header, committed last, needs only a running weighted sum
of the window pooled vectors, so a killed run leaves orphan segments and never a half-visible document.

What stays in memory per document: its text (the caller's), the window plan (16 B a window of a few
hundred tokens), and a bounded working set: one part's tokens and embedded rows plus at most one
segment's worth carried over, and the pooled vectors of the windows over that range.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from indexer.codec import pool_document
from indexer.embedders import WindowEmbedder
from indexer.store.segments import Segment, max_segment_tokens, split_segments
from indexer.windows import owners, window_bounds
from schemas.errors import InputError
from schemas.models import EmbeddedDocument, LoadedDocument, SentenceVectors

TOKENIZE_CHARS = 1 << 16  # text per tokenizer call: its Encoding objects cost hundreds of bytes a token
_CUT = re.compile(r"(?<=\S) (?=\S)")  # a single space between two words: no tokenizer merges across it


@dataclass(frozen=True)
class PartWrite:
    """Segments ready to be written; `first` marks the document's first write (fits the codec on them).

    `n_rows` and `n_segments` are the whole document's, for the store's free-space check. `sentences`:
    the sentence vectors of the sentences that start in these segments, when the collection keeps them
    (`indexer.sentence_vectors.with_part_sentence_vectors`).
    """

    doc: LoadedDocument
    segments: list[Segment]
    first: bool
    n_rows: int
    n_segments: int
    sentences: SentenceVectors | None = None


@dataclass(frozen=True)
class PartCommit:
    """The document's header, once every segment is written."""

    doc: LoadedDocument
    pooled: np.ndarray
    n_tokens: int
    n_rows: int
    n_segments: int


def _pieces(text: str, chunk_chars: int) -> Iterator[tuple[int, int]]:
    """Character ranges of about `chunk_chars` that tile `text`, cut at a single space between words."""
    pos = 0
    while pos < len(text):
        m = _CUT.search(text, pos + chunk_chars) if len(text) - pos > chunk_chars else None
        end = m.start() if m else len(text)
        yield pos, end
        pos = end


class TokenStream:
    """A document's tokens, tokenized a piece at a time as they are needed, keeping only a sliding range.

    Construction tokenizes the text once to count its tokens (the window plan and the balanced
    segment cuts need the total), keeping only each piece's count; `need` then tokenizes pieces
    again as the embedding reaches them and `drop_before` forgets tokens no longer needed, so ids
    and offsets never exist whole for the document (the tokenizer runs twice, a small cost next to
    the model).

    Args:
        embedder: gives the tokenizer.
        text: the document text.
        chunk_chars: about how many characters each tokenizer call gets.
    """

    def __init__(self, embedder: WindowEmbedder, text: str, chunk_chars: int = TOKENIZE_CHARS) -> None:
        self._e, self._text = embedder, text
        self._pieces = list(_pieces(text, chunk_chars))
        self._counts = [len(embedder.tokenize(text[a:b])[0]) for a, b in self._pieces]
        self.n = sum(self._counts)
        self._next = 0  # next piece to tokenize
        self.start = self.end = 0  # tokens [start, end) are held
        self._ids = np.zeros(0, dtype=np.int64)
        self._off = np.zeros((0, 2), dtype=np.int64)

    def need(self, end: int) -> None:
        """Hold tokens up to `end` (or the document's end), tokenizing the pieces that reach it."""
        ids, off = [self._ids], [self._off]
        while self.end < min(end, self.n):
            a, b = self._pieces[self._next]
            got, got_off = self._e.tokenize(self._text[a:b])
            if len(got) != self._counts[self._next]:
                raise ValueError(
                    f"the tokenizer gave {len(got)} tokens for a piece it first counted as {self._counts[self._next]}"
                )
            ids.append(np.asarray(got, dtype=np.int64))
            off.append(got_off.astype(np.int64) + a)
            self.end += len(got)
            self._next += 1
        if len(ids) > 1:
            self._ids, self._off = np.concatenate(ids), np.concatenate(off)

    def drop_before(self, start: int) -> None:
        """Forget tokens before `start`."""
        cut = min(max(start, self.start), self.end) - self.start
        if cut:
            self._ids, self._off, self.start = self._ids[cut:], self._off[cut:], self.start + cut

    def ids(self, s: int, e: int) -> np.ndarray:
        """Token ids [s, e) (held: `need(e)` called and nothing from `s` dropped)."""
        self.need(e)
        return self._ids[s - self.start : e - self.start]

    def offsets(self, s: int, e: int) -> np.ndarray:
        """(e - s, 2) absolute character offsets of tokens [s, e)."""
        self.need(e)
        return self._off[s - self.start : e - self.start]


def embed_in_parts(
    doc: LoadedDocument,
    embedder: WindowEmbedder,
    part_tokens: int,
    pool: int,
    segment_rows: int | None,
    progress: Callable[[int, int], None] | None = None,
    chunk_chars: int = TOKENIZE_CHARS,
) -> Iterator[PartWrite | PartCommit]:
    """Embed `doc` a part at a time, yielding segments to write as they are ready, then the header.

    Args:
        doc: the document.
        embedder: tokenizer, window plan and forward pass.
        part_tokens: about how many tokens each part embeds (whole windows, at least one).
        pool: the collection's storage pool (adjacent tokens merged into one stored row).
        segment_rows: the store's rows per segment (None: the server limit).
        progress: called with (tokens embedded, tokens in the document) after each part.
        chunk_chars: about how many characters each tokenizer call gets.

    Yields:
        `PartWrite`s in segment order, then one `PartCommit`; the same segments, offsets and vectors
        `TokenStore.write_document(embedder.embed_documents([doc])[0])` would store.

    Raises:
        InputError: the text holds no tokens.
    """
    tokens = TokenStream(embedder, doc.text, chunk_chars)
    n, dim = tokens.n, embedder.dim
    if n == 0:
        raise InputError(doc.source, "no tokens after tokenizing; the file holds no indexable text")
    # the window plan, 16 B a window (a few hundred tokens), is the one per-document array kept whole
    bounds = window_bounds(n, embedder.content, embedder.stride)
    n_windows = len(bounds)
    n_rows = -(-n // pool)
    cap = min(segment_rows or max_segment_tokens(dim), max_segment_tokens(dim))
    count = max(1, -(-n_rows // cap))
    cuts = np.linspace(0, n_rows, count + 1).round().astype(int)  # the balanced cuts split_segments makes

    # pooled vectors of windows [wp_start, embedded): only those that may still overlap an unwritten segment
    wp = np.empty((0, dim), dtype=np.float32)
    wp_start = 0
    doc_sum = np.zeros(dim, dtype=np.float64)  # the header's length-weighted sum of window pooled vectors
    per_part = max(1, part_tokens // max(embedder.stride, 1))
    buf = np.empty((0, dim), dtype=np.float32)  # token vectors [buf_start, embedded)
    buf_start, next_seg, first = 0, 0, True
    for wa in range(0, n_windows, per_part):
        wb = min(n_windows, wa + per_part)
        ts, te = int(bounds[wa, 0]), int(bounds[wb - 1, 1])
        results = embedder.embed_windows([tokens.ids(s, e) for s, e in bounds[wa:wb]])
        own = owners(bounds, ts, te)
        lo, hi = ts + int(np.searchsorted(own, wa, "left")), ts + int(np.searchsorted(own, wb - 1, "right"))
        part = np.empty((hi - lo, dim), dtype=np.float32)
        pooled = np.empty((wb - wa, dim), dtype=np.float32)
        for j, (hidden, p) in enumerate(results):
            s, e = bounds[wa + j]
            take = np.nonzero(own[s - ts : e - ts] == wa + j)[0]
            part[s + take - lo] = hidden[take]
            pooled[j] = p
        del results
        part /= np.maximum(np.linalg.norm(part, axis=1, keepdims=True), 1e-12)
        doc_sum += (bounds[wa:wb, 1] - bounds[wa:wb, 0]).astype(np.float64) @ pooled.astype(np.float64)
        wp = np.concatenate([wp, pooled]) if len(wp) else pooled
        buf = np.concatenate([buf, part]) if len(buf) else part
        ready_rows = n_rows if hi == n else hi // pool
        done_windows_end = n_rows if wb == n_windows else min(-(-int(bounds[wb, 0]) // pool), n_rows)
        segs = []
        while next_seg < count and cuts[next_seg + 1] <= min(ready_rows, done_windows_end):
            rs, re_ = int(cuts[next_seg]), int(cuts[next_seg + 1])
            ss, se = rs * pool, min(re_ * pool, n)
            # windows after wb-1 start at or past this segment's last row: no weight in it (pool_document)
            seg = _segment(
                doc, buf[ss - buf_start : se - buf_start], tokens.offsets(ss, se), ss, bounds[wp_start:wb], wp, pool
            )
            char_start = 0 if next_seg == 0 else int(tokens.offsets(ss, ss + 1)[0, 0])
            char_end = len(doc.text) if next_seg + 1 == count else int(tokens.offsets(se, se + 1)[0, 0])
            segs.append(
                dataclasses.replace(seg, index=next_seg, tok_start=rs, char_start=char_start, char_end=char_end)
            )
            next_seg += 1
        keep_from = int(cuts[next_seg]) * pool if next_seg < count else n
        if segs:
            buf, buf_start = buf[keep_from - buf_start :], keep_from
            yield PartWrite(doc, segs, first, n_rows, count)
            first = False
        # forget windows that end before the next unwritten segment, and tokens neither it nor the next part needs
        done = int(np.searchsorted(bounds[wp_start:wb, 1], keep_from, "right"))
        wp, wp_start = wp[done:], wp_start + done
        tokens.drop_before(min(keep_from, int(bounds[wb, 0]) if wb < n_windows else n))
        if progress is not None:
            progress(hi, n)
    pooled_doc = doc_sum / max(float(np.linalg.norm(doc_sum)), 1e-12)
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
