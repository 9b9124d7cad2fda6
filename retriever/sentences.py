"""Sentence tables of candidate documents: which sentence each token is in, and what scoring needs.

A sentence's pooled in-context vector is the sum of its token vectors; its cosine with a query q is
(sum of the tokens' r = v.q) / |sum of v|. The numerator is a segment sum of r (cheap per query), the
denominator is query-independent, so it is computed once per document version and cached.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch

from retriever.fetch import DocTokens


@dataclass
class DocSentences:
    """One document's sentences as token ranges (local, inclusive) with their summed-vector norms."""

    sid: torch.Tensor  # (n,) sentence of each token
    start: torch.Tensor  # (S,)
    end: torch.Tensor  # (S,) inclusive
    norm: torch.Tensor  # (S,) |sum of the sentence's token vectors|


@dataclass
class SentenceTable:
    """The sentences of several documents laid end to end (flat token indices, as in retriever.spans)."""

    sid: torch.Tensor  # (N,) flat sentence index of each flat token
    doc: torch.Tensor  # (S,) document index
    start: torch.Tensor  # (S,) flat token index
    end: torch.Tensor  # (S,) flat token index, inclusive
    norm: torch.Tensor  # (S,)
    length: torch.Tensor  # (S,) tokens

    @property
    def n(self) -> int:
        return int(self.start.numel())


def doc_sentences(doc: DocTokens) -> DocSentences:
    """Split a document at its sentence-ending tokens (the fetcher's boundary rule); the last token always ends one."""
    brk = doc.ends_sentence.clone()
    brk[-1] = True
    sid = torch.cumsum(brk.long(), 0) - brk.long()  # a sentence's ending token belongs to it
    end = torch.nonzero(brk).view(-1)
    start = torch.cat([end.new_zeros(1), end[:-1] + 1])
    sums = torch.zeros(len(end), doc.vectors.shape[1], device=doc.vectors.device).index_add_(0, sid, doc.vectors)
    return DocSentences(sid, start, end, sums.norm(dim=1).clamp(min=1e-12))


class SentenceTables:
    """Per-document sentence tables cached by the run of segments scored (DocTokens.key); safe across threads."""

    def __init__(self, max_docs: int = 4096) -> None:
        self._cache: dict[tuple[str, str, int, int], DocSentences] = {}
        self._lock = threading.Lock()
        self.max_docs = max_docs

    def get(self, doc: DocTokens) -> DocSentences:
        key = doc.key
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

    def table(self, docs: list[DocTokens], device: torch.device) -> SentenceTable:
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
        return SentenceTable(sid, doc, start, end, norm, end - start + 1)


@dataclass
class SentenceCandidates:
    """The best sentences for one query, best first by the token signal; `score` is re-ranked in place."""

    doc: np.ndarray  # (k,) document index into the query's docs
    chars: list[tuple[int, int]]  # character [start, end)
    texts: list[str]
    score: np.ndarray  # (k,) float64
    q: np.ndarray  # (dim,) the query vector
