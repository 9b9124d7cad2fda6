"""BM25: a lexical signal beside the dense one, over the sentences a query's fetched runs hold.

Terms are lower-cased Unicode word runs (NFKC), English stop words dropped, with a light plural
strip ("normans" -> "norman"), the same for queries and sentences. Statistics (how many sentences
hold each term, their mean length) are kept per unit of text — one fetched run of segments of one
document version, `DocTokens.key` — and summed over the units a query scores, so adding, replacing
or deleting a document changes exactly the units that carry its version: nothing is left stale.
"""

from __future__ import annotations

import math
import re
import threading
import unicodedata
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

from retriever.fetch import DocTokens
from retriever.sentence_table import DocSentences

WORD = re.compile(r"\w+", re.UNICODE)
STOP = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "been",
        "but",
        "by",
        "did",
        "do",
        "does",
        "for",
        "from",
        "had",
        "has",
        "have",
        "he",
        "her",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "she",
        "that",
        "the",
        "their",
        "them",
        "they",
        "this",
        "to",
        "was",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "whom",
        "whose",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "s",
    ]
)
K1, B = 1.2, 0.75


def terms(text: str) -> list[str]:
    """The BM25 terms of `text`, in order (repeats kept)."""
    out = []
    for w in WORD.findall(unicodedata.normalize("NFKC", text).lower()):
        if w in STOP:
            continue
        if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
            w = w[:-1]
        out.append(w)
    return out


@dataclass
class UnitStats:
    """Term statistics of one unit of text (a run of sentences): per-sentence term counts and document frequencies."""

    counts: list[Counter[str]]
    df: Counter[str]

    @classmethod
    def of(cls, sentences: Sequence[str]) -> UnitStats:
        counts = [Counter(terms(s)) for s in sentences]
        df: Counter[str] = Counter()
        for c in counts:
            df.update(c.keys())
        return cls(counts, df)

    @property
    def total_len(self) -> int:
        return sum(sum(c.values()) for c in self.counts)


@dataclass
class LexicalStats:
    """BM25 collection statistics as the sum of units' statistics; units are added, replaced and removed by key.

    Not thread-safe by itself: `LexicalIndex` guards it.
    """

    df: Counter[str] = field(default_factory=Counter)
    n: int = 0
    total_len: int = 0
    units: dict[Hashable, UnitStats] = field(default_factory=dict)

    def add(self, key: Hashable, unit: UnitStats) -> None:
        """Count `unit` under `key`, replacing what `key` held before."""
        self.remove(key)
        self.units[key] = unit
        self.df.update(unit.df)
        self.n += len(unit.counts)
        self.total_len += unit.total_len

    def remove(self, key: Hashable) -> bool:
        """Forget the unit under `key`; False when there was none."""
        unit = self.units.pop(key, None)
        if unit is None:
            return False
        self.df.subtract(unit.df)
        for t in unit.df:
            if self.df[t] <= 0:
                del self.df[t]
        self.n -= len(unit.counts)
        self.total_len -= unit.total_len
        return True

    def idf(self, term: str) -> float:
        """BM25 IDF (the +1 form, never negative) of `term` over the sentences counted."""
        d = self.df.get(term, 0)
        return math.log(1.0 + (self.n - d + 0.5) / (d + 0.5))

    @property
    def avg_len(self) -> float:
        return self.total_len / self.n if self.n else 0.0


def bm25(query: str, counts: Sequence[Counter[str]], stats: LexicalStats) -> np.ndarray:
    """(n,) BM25 scores of sentences (their term counts) for `query` under `stats`."""
    # query order, not a set's: a set's order changes between processes (hash seeds), and so would the
    # float sum's last bits
    q = list(dict.fromkeys(terms(query)))
    out = np.zeros(len(counts), dtype=np.float64)
    if not q or not counts:
        return out
    avg = max(stats.avg_len, 1e-9)
    idf = {t: stats.idf(t) for t in q}
    for i, c in enumerate(counts):
        length = sum(c.values())
        norm = K1 * (1.0 - B + B * length / avg)
        out[i] = sum(idf[t] * c[t] * (K1 + 1.0) / (c[t] + norm) for t in q if t in c)
    return out


def coverage(query: str, text: str) -> float:
    """Share of the query's distinct terms that occur in `text` (0 when the query has none)."""
    q = set(terms(query))
    return len(q & set(terms(text))) / len(q) if q else 0.0


class LexicalUnits:
    """Term statistics of fetched runs (`DocTokens.key`: document, version, segments), cached; thread-safe.

    A replaced document has a new version, so its runs get new keys; entries of old versions are
    never read again and age out (oldest first) past `max_units`.
    """

    def __init__(self, max_units: int = 4096) -> None:
        self.max_units = max_units
        self._cache: dict[Hashable, UnitStats] = {}
        self._lock = threading.Lock()

    def unit(self, doc: DocTokens, sentences: DocSentences) -> UnitStats:
        """Statistics of the sentences of run `doc` (as `sentences` splits it)."""
        key = doc.key
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None:
            return hit
        a, b = sentences.start.cpu().numpy(), sentences.end.cpu().numpy()
        unit = UnitStats.of([doc.chars(int(doc.starts[x]), int(doc.ends[y])) for x, y in zip(a, b, strict=True)])
        with self._lock:
            if len(self._cache) >= self.max_units:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = unit
        return unit

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()


SegmentTexts = Callable[[dict[tuple[str, str], list[int]]], dict[tuple[str, int], tuple[int, str]]]


class SegmentLexicon:
    """BM25 over the stored segments of document versions: a lexical ranking of segments beside MaxSim's.

    Dense MaxSim ranks a long document's segments by how near their tokens are to the question's, and
    misses a table or a paragraph that carries the question's rare words (a line item's name, a year)
    without being near it in the model's space. Each document version's segment texts are read once
    (payload only, no token rows) and their term counts cached; statistics are summed over the documents a
    query ranks, so a replaced document (a new version) never mixes with its old counts. Thread-safe.
    """

    def __init__(self, max_docs: int = 256) -> None:
        self.max_docs = max_docs
        self._docs: OrderedDict[tuple[str, str], UnitStats] = OrderedDict()
        self._stats: tuple[tuple[tuple[str, str], ...], LexicalStats] | None = None
        self._lock = threading.Lock()

    def rank(
        self, query: str, docs: dict[str, tuple[str, int]], k: int, read: SegmentTexts
    ) -> list[tuple[str, int, float]]:
        """The k segments of `docs` (doc_id -> (version, n_segments)) with the highest BM25 for `query`.

        Args:
            query: the question.
            docs: doc_id -> (live version, its number of segments).
            k: most segments to return.
            read: reads segment texts ((doc_id, version) -> indices) from the store.

        Returns:
            (doc_id, segment index, BM25), best first, only segments sharing a term with the query; ties in
            the documents' order, then by segment index.
        """
        if k <= 0 or not docs or not terms(query):
            return []
        keys = [(d, v) for d, (v, _) in docs.items()]
        with self._lock:
            missing = [key for key in keys if key not in self._docs]
        if missing:
            texts = read({(d, v): list(range(docs[d][1])) for d, v in missing})
            for d, v in missing:
                unit = UnitStats.of([texts.get((d, i), (0, ""))[1] for i in range(docs[d][1])])
                with self._lock:
                    self._docs[(d, v)] = unit
                    while len(self._docs) > self.max_docs:
                        self._docs.popitem(last=False)
        with self._lock:
            units = {key: self._docs[key] for key in keys if key in self._docs}
            combined = tuple(sorted(units))
            if self._stats is None or self._stats[0] != combined:
                stats = LexicalStats()
                for key in combined:
                    stats.add(key, units[key])
                self._stats = (combined, stats)
            stats = self._stats[1]
        out: list[tuple[str, int, float]] = []
        for d, v in keys:
            held = units.get((d, v))
            if held is None:
                continue
            scores = bm25(query, held.counts, stats)
            out.extend((d, i, float(s)) for i, s in enumerate(scores) if s > 0)
        order = sorted(range(len(out)), key=lambda j: -out[j][2])  # stable: ties keep the documents' order
        return [out[j] for j in order[:k]]

    def clear(self) -> None:
        with self._lock:
            self._docs.clear()
            self._stats = None
