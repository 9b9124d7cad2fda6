"""Move candidate documents' token matrices from the store to the scoring device, through a cache.

The cache is keyed by (doc_id, version): a re-ingested document has a new version, so stale
entries can never be served, only evicted. It is bounded by bytes and evicts least recently used.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from indexer.store import TokenStore
from retriever.boundaries import token_ends_sentence
from schemas.settings import Boundary


@dataclass
class DocTokens:
    """One document ready to score: decoded token rows on the device and what spans need on the host."""

    doc_id: str
    version: str
    header: dict
    vectors: torch.Tensor  # (n, dim) float32 on the scoring device
    starts: np.ndarray  # (n,) char offsets
    ends: np.ndarray  # (n,) running max of token ends: end char of a span ending at token i
    ends_sentence: torch.Tensor  # (n,) bool on the device
    text: str

    @property
    def nbytes(self) -> int:
        return self.vectors.numel() * self.vectors.element_size() + len(self.text) + 24 * len(self.starts)


class DocCache:
    """Bounded LRU of DocTokens by bytes; safe across threads.

    Keyed by (doc_id, version). Putting a new version of a document drops its older versions at once:
    they can never be served again (the header names one version), so they would only hold memory.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, str], DocTokens] = OrderedDict()
        self._versions: dict[str, set[str]] = {}  # doc_id -> versions held, to drop stale ones on put
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._items

    @property
    def nbytes(self) -> int:
        """Bytes held now; never above max_bytes."""
        return self._bytes

    def get(self, key: tuple[str, str]) -> DocTokens | None:
        with self._lock:
            doc = self._items.get(key)
            if doc is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return doc

    def put(self, doc: DocTokens) -> None:
        """Insert as most recent, evicting least recent entries past max_bytes; too-big documents are not kept."""
        key = (doc.doc_id, doc.version)
        with self._lock:
            if key in self._items or doc.nbytes > self.max_bytes:
                return
            for old_version in self._versions.get(doc.doc_id, set()) - {doc.version}:
                self._remove((doc.doc_id, old_version))
            self._items[key] = doc
            self._versions.setdefault(doc.doc_id, set()).add(doc.version)
            self._bytes += doc.nbytes
            while self._bytes > self.max_bytes:
                self._remove(next(iter(self._items)))

    def clear(self) -> None:
        """Drop everything (a cold start for benchmarks); hit and miss counts are kept."""
        with self._lock:
            self._items.clear()
            self._versions.clear()
            self._bytes = 0

    def _remove(self, key: tuple[str, str]) -> None:
        """Caller holds the lock."""
        old = self._items.pop(key)
        self._bytes -= old.nbytes
        versions = self._versions[key[0]]
        versions.discard(key[1])
        if not versions:
            del self._versions[key[0]]


class Fetcher:
    """Store -> device, caching hot documents."""

    def __init__(self, store: TokenStore, device: torch.device, boundary: Boundary, cache_bytes: int) -> None:
        self.store = store
        self.device = device
        self.boundary: Boundary = boundary
        self.cache = DocCache(cache_bytes)

    def fetch(self, headers: dict[str, dict]) -> list[DocTokens]:
        """DocTokens for each doc_id -> header, in the given order; documents gone from the store are skipped."""
        out: dict[str, DocTokens] = {}
        missing: dict[str, str] = {}
        for doc_id, h in headers.items():
            hit = self.cache.get((doc_id, h["version"]))
            if hit is not None:
                out[doc_id] = hit
            else:
                missing[doc_id] = h["version"]
        for doc_id, segs in self.store.fetch_segments(missing).items():
            if len(segs) != int(headers[doc_id]["n_segments"]):
                continue  # being replaced or deleted right now: skip rather than score half a document
            doc = self._assemble(doc_id, headers[doc_id], segs)
            self.cache.put(doc)
            out[doc_id] = doc
        return [out[d] for d in headers if d in out]

    def _assemble(self, doc_id: str, header: dict, segs: list) -> DocTokens:
        dtype = self.store.meta.storage_dtype
        stored = np.concatenate([s.stored for s in segs])
        scales = np.concatenate([s.scales for s in segs]) if dtype == "int8" else None
        t = torch.from_numpy(stored).to(self.device, non_blocking=True)
        sc = torch.from_numpy(scales).to(self.device) if scales is not None else None
        vectors = self.store.codec.decode(t, sc)  # the collection's storage layout
        text = "".join(s.text for s in segs)
        starts = np.concatenate([s.starts for s in segs])
        ends = np.maximum.accumulate(np.concatenate([s.ends for s in segs]))
        es = torch.from_numpy(token_ends_sentence(text, starts, self.boundary)).to(self.device)
        return DocTokens(doc_id, header["version"], header, vectors, starts, ends, es, text)
