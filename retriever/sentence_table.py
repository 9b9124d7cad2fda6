"""Sentence tables of candidate documents: which sentence each token is in, and what scoring needs.

A sentence's pooled in-context vector is the sum of its token vectors; its cosine with a query q is
(sum of the tokens' r = v.q) / |sum of v|. The numerator is a segment sum of r (cheap per query), the
denominator is query-independent, so it is computed once per document version and cached.

A run fetched by its sentence sums (`DocTokens.by_sums`) has no rows: a sentence's sum is the sum of
its pieces (a sentence running across two fetched segments is two pieces), the numerator the sum of
the pieces' dot products with q (`piece_sid` says whose piece each is).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch

from indexer.boundaries import boundary_chars, sentence_rows
from retriever.fetch import DocTokens
from schemas.settings import Boundary


@dataclass
class DocSentences:
    """One document's sentences as token ranges (local, inclusive) with their summed-vector norms."""

    sid: torch.Tensor  # (n,) sentence of each token
    start: torch.Tensor  # (S,)
    end: torch.Tensor  # (S,) inclusive
    norm: torch.Tensor  # (S,) |sum of the sentence's token vectors|
    piece_sid: torch.Tensor | None = None  # (P,) sentence of each piece, for a run fetched by its sums


@dataclass
class SentenceTable:
    """The sentences of several documents laid end to end (flat token indices, as in retriever.spans)."""

    sid: torch.Tensor  # (N,) flat sentence index of each flat token
    doc: torch.Tensor  # (S,) document index
    start: torch.Tensor  # (S,) flat token index
    end: torch.Tensor  # (S,) flat token index, inclusive
    norm: torch.Tensor  # (S,)
    length: torch.Tensor  # (S,) tokens
    # documents fetched by their sentence sums: every piece (P, dim) in order, and its flat sentence (P,)
    pieces: torch.Tensor | None = None
    piece_sid: torch.Tensor | None = None

    @property
    def n(self) -> int:
        return int(self.start.numel())


def doc_sentences(doc: DocTokens) -> DocSentences:
    """Split a document at its sentence-ending tokens (the fetcher's boundary rule) with
    `indexer.boundaries.sentence_rows`, the cut ingest's sentence vectors use; the last token always ends one."""
    first, last, sids = sentence_rows(doc.ends_sentence.cpu().numpy())
    # what is summed: the rows, each in its sentence, or the pieces, each in the sentence of its first row
    # (a piece never spans a sentence end)
    if doc.sums is not None:
        assert doc.piece_first is not None
        units, unit_sids = doc.sums, sids[doc.piece_first]
    else:
        units, unit_sids = doc.vectors, sids
    device = units.device
    sid, start, end, usid = (torch.from_numpy(a).to(device) for a in (sids, first, last, unit_sids))
    sums = torch.zeros(len(end), units.shape[1], device=device).index_add_(0, usid, units)
    return DocSentences(sid, start, end, sums.norm(dim=1).clamp(min=1e-12), usid if doc.by_sums else None)


class SentenceTables:
    """Per-document sentence tables cached by the run of segments scored (DocTokens.key); safe across threads."""

    def __init__(self, max_docs: int = 4096) -> None:
        self._cache: dict[tuple[str, str, int, int, bool], DocSentences] = {}
        self._lock = threading.Lock()
        self.max_docs = max_docs

    def get(self, doc: DocTokens) -> DocSentences:
        """The sentences of one document run, computed once per run and version."""
        key = (*doc.key, doc.by_sums)
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None:
            return hit
        ds = doc_sentences(doc)
        with self._lock:
            if len(self._cache) >= self.max_docs:
                self._cache.pop(next(iter(self._cache)))  # oldest first: a bound, not an LRU
            self._cache[key] = ds
        return ds

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()

    def table(self, docs: list[DocTokens], device: torch.device) -> SentenceTable:
        """The sentences of `docs` laid end to end, as their tokens are in the flat relevance.

        Args:
            docs: one query's candidate documents, in scoring order.
            device: where an empty table is made (others live where their documents' rows are).

        Returns:
            The `SentenceTable`.
        """
        parts = [self.get(d) for d in docs if len(d.starts)]
        tok_off = np.cumsum([0] + [len(d.starts) for d in docs if len(d.starts)])
        sent_off = np.cumsum([0] + [p.start.numel() for p in parts])
        doc_idx = [i for i, d in enumerate(docs) if len(d.starts)]
        if not parts:
            z = torch.zeros(0, dtype=torch.long, device=device)
            return SentenceTable(z, z, z, z, torch.zeros(0, device=device), z)
        sid = torch.cat([p.sid + int(sent_off[i]) for i, p in enumerate(parts)])
        start = torch.cat([p.start + int(tok_off[i]) for i, p in enumerate(parts)])
        end = torch.cat([p.end + int(tok_off[i]) for i, p in enumerate(parts)])
        doc = torch.cat([torch.full_like(p.start, doc_idx[i]) for i, p in enumerate(parts)])
        norm = torch.cat([p.norm for p in parts])
        table = SentenceTable(sid, doc, start, end, norm, end - start + 1)
        summed = [d for d in docs if len(d.starts) and d.sums is not None]
        if summed:
            if len(summed) != len(parts):
                raise ValueError("a query's documents were fetched some by their rows, some by their sentence sums")
            table.pieces = torch.cat([d.sums for d in summed])  # type: ignore[misc]
            table.piece_sid = torch.cat([_shifted(p.piece_sid, int(sent_off[i])) for i, p in enumerate(parts)])
        return table


def _shifted(t: torch.Tensor | None, by: int) -> torch.Tensor:
    assert t is not None  # every part of a table by sums has its pieces' sentences
    return t + by


@dataclass
class SentenceCandidates:
    """The best sentences for one query, best first by the token signal; `score` is re-ranked in place."""

    doc: np.ndarray  # (k,) document index into the query's docs
    chars: list[tuple[int, int]]  # character [start, end)
    texts: list[str]
    score: np.ndarray  # (k,) float64
    q: np.ndarray  # (dim,) the query vector
    context: np.ndarray | None = None  # (k,) in-context cosine (the first stage)
    lexical: np.ndarray | None = None  # (k,) BM25 scaled to [0, 1] over the query's fetched sentences
    sentence_cos: np.ndarray | None = None  # (m <= k,) cosine of the re-ranked candidates' sentence vectors
    segment_score: float | None = None  # best segment's MaxSim per query token
    # with stored sentence vectors: each candidate's (doc_id, version, char start, char end) and the
    # segments it may start in (where the store keeps its sentence vector)
    keys: list[tuple[str, str, int, int]] | None = None
    segments: list[list[int]] | None = None


Neighbours = dict[tuple[str, int], tuple[int, str]]  # (doc_id, segment) -> (char_start, text)


def _cut(c0: int, c1: int, d: DocTokens) -> tuple[bool, bool]:
    """Whether a candidate [c0, c1) of run `d` was cut by the run's start / end.

    A run that starts mid-document begins mid-sentence (its first "sentence" is a tail); one that
    stops before the document's end, on a token that ends no sentence, ends with a head.
    """
    at_start = d.first_segment > 0 and c0 <= int(d.starts[0])
    more = d.first_segment + d.n_segments < d.header.n_segments
    at_end = more and c1 >= int(d.ends[-1]) and not bool(d.ends_sentence[-1])
    return at_start, at_end


def cut_sentences(c: SentenceCandidates, docs: list[DocTokens]) -> dict[tuple[str, str], list[int]]:
    """Segments whose text would finish the candidates a fetched run cut at its first or last token."""
    need: dict[tuple[str, str], set[int]] = {}
    for i, (c0, c1) in enumerate(c.chars):
        d = docs[int(c.doc[i])]
        at_start, at_end = _cut(c0, c1, d)
        if at_start:
            need.setdefault((d.doc_id, d.version), set()).add(d.first_segment - 1)
        if at_end:
            need.setdefault((d.doc_id, d.version), set()).add(d.first_segment + d.n_segments)
    return {k: sorted(v) for k, v in need.items()}


def complete_cut(c: SentenceCandidates, docs: list[DocTokens], texts: Neighbours, rule: Boundary) -> None:
    """Extend cut candidates, in place, to their sentence's real start and end in the neighbour segments.

    Their scores stay those of the part that was fetched; the re-ranking then embeds the whole sentence.
    """
    for i, (c0, c1) in enumerate(c.chars):
        d = docs[int(c.doc[i])]
        at_start, at_end = _cut(c0, c1, d)
        run_end = d.char_base + len(d.text)
        head, tail, n0, n1 = "", "", c0, c1
        prev = texts.get((d.doc_id, d.first_segment - 1)) if at_start else None
        if prev is not None and prev[0] + len(prev[1]) == d.char_base:
            stops = np.flatnonzero(boundary_chars(prev[1], rule))
            k = int(stops[-1]) + 1 if len(stops) else 0
            k += len(prev[1][k:]) - len(prev[1][k:].lstrip())  # the sentence starts after the gap
            head, n0 = prev[1][k:], prev[0] + k
        nxt = texts.get((d.doc_id, d.first_segment + d.n_segments)) if at_end else None
        if nxt is not None and nxt[0] == run_end:
            stops = np.flatnonzero(boundary_chars(nxt[1], rule))
            k = int(stops[0]) + 1 if len(stops) else len(nxt[1])
            # the run's text after the candidate (whitespace) belongs to the sentence too
            tail, n1 = d.chars(c1, run_end) + nxt[1][:k], nxt[0] + k
        if head or tail:
            c.chars[i] = (n0, n1)
            c.texts[i] = head + d.chars(d.char_base if head else c0, c1) + tail
