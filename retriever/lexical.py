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
from collections import Counter
from collections.abc import Hashable, Sequence
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
