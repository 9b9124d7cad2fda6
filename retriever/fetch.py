"""Move candidate documents' token matrices from the store to the scoring device, through a cache.

The unit of fetching and caching is a stored segment (at most the server's multivector limit, or
`segment_tokens` rows), so a query can move only the segments worth scoring. The cache is keyed by
(doc_id, version, segment): a re-ingested document has a new version, so stale entries can never be
served, only evicted. It is bounded by bytes and evicts least recently used. What a query scores is a
`DocTokens`: a run of consecutive cached segments of one document (the whole document by default),
assembled without copying the token rows.

A document's structure (its header's largest field: 123 kB of the Valgrind manual's 128 kB) is not
in the headers recall returns. The fetcher owns the one cache of structures (`StructureCache`): a
document version's structure is read from the store once (or taken from a header that carries it),
parsed once into a `Layout`, and handed to every `DocTokens` of that version (`DocTokens.layout`),
which is what the span methods read.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from indexer.boundaries import sentence_rows, token_ends_sentence
from indexer.store import DocHeader, StoredSegment, TokenStore
from retriever.relevance import gemv_blocks
from schemas.settings import Boundary
from schemas.structure import KIND_CODES, NON_ANSWER_KINDS, DocStructure

SegKey = tuple[str, str, int]  # (doc_id, version, segment index)
SHORT_KINDS = frozenset({"heading", "table_row"})  # compete in the sentence method however short


def _code_table(kinds: frozenset[str]) -> np.ndarray:
    """(128,) bool by kind letter (`KIND_CODES`): indexed with a structure's letters, one mask in one step."""
    table = np.zeros(128, dtype=bool)
    table[[ord(c) for k, c in KIND_CODES.items() if k in kinds]] = True
    return table


_SKIP_CODES = _code_table(NON_ANSWER_KINDS)
_SHORT_CODES = _code_table(SHORT_KINDS)


@dataclass
class Layout:
    """One document version's structure, with arrays for per-token lookups."""

    structure: DocStructure
    starts: np.ndarray  # (B,) block starts
    ends: np.ndarray  # (B,)
    skip: np.ndarray  # (B,) bool: block never answers
    short_ok: np.ndarray  # (B,) bool: block competes however short (headings, table rows)

    @classmethod
    def of(cls, s: DocStructure) -> Layout:
        """The arrays of a structure, from its parallel arrays (`DocStructure.arrays`): a parsed payload's
        blocks are never built for this."""
        a = s.arrays
        codes = np.frombuffer(a.kinds.encode("ascii"), dtype=np.uint8)
        return cls(
            s,
            np.array(a.starts, dtype=np.int64),
            np.array(a.ends, dtype=np.int64),
            _SKIP_CODES[codes],
            _SHORT_CODES[codes],
        )

    @classmethod
    def of_payload(cls, payload: dict[str, Any] | None) -> Layout | None:
        """The layout of a stored structure payload; None when there is none or it has no blocks."""
        s = DocStructure.from_payload(payload)
        return cls.of(s) if s is not None and s.blocks else None

    def blocks_of(self, chars: np.ndarray) -> np.ndarray:
        """(n,) block index of each character position, -1 between blocks."""
        i = np.searchsorted(self.starts, chars, side="right") - 1
        inside = (i >= 0) & (chars < self.ends[np.maximum(i, 0)])
        return np.where(inside, i, -1)

    def run_of_kind(self, i: int) -> tuple[int, int]:
        """First and last block index of the run of consecutive blocks of block i's kind (a table's rows,
        a list's items)."""
        blocks = self.structure.blocks
        kind = blocks[i].kind
        first, last = i, i
        while first > 0 and blocks[first - 1].kind == kind:
            first -= 1
        while last + 1 < len(blocks) and blocks[last + 1].kind == kind:
            last += 1
        return first, last

    def table_header(self, pos: int) -> tuple[int, int] | None:
        """The header row (the table's first row) of the table row holding character `pos`; None when
        `pos` is in no table row or in the header row itself."""
        touched = self.overlapping(pos, pos + 1)
        if not touched or self.structure.blocks[touched[0]].kind != "table_row":
            return None
        first, _ = self.run_of_kind(touched[0])
        head = self.structure.blocks[first]
        return (head.start, head.end) if first < touched[0] else None

    def overlapping(self, c0: int, c1: int) -> range:
        """Indices of the blocks that characters [c0, c1) touch, in order."""
        first = int(np.searchsorted(self.ends, c0, side="right"))  # the first block ending after c0
        last = int(np.searchsorted(self.starts, max(c1, c0 + 1), side="left"))  # blocks starting before c1
        return range(first, max(first, last))

    def token_masks(self, token_starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(skip, short_ok) bool masks of tokens by the block their first character is in."""
        if not len(self.starts):
            z = np.zeros(len(token_starts), dtype=bool)
            return z, z
        b = self.blocks_of(np.asarray(token_starts, dtype=np.int64))
        ok = b >= 0
        bb = np.maximum(b, 0)
        return ok & self.skip[bb], ok & self.short_ok[bb]


@dataclass
class SegmentTokens:
    """One segment decoded on the scoring device, with what spans need on the host: its token rows, its
    sentence pieces' sums (`indexer.store.sentence_sums`), or both."""

    doc_id: str
    version: str
    index: int
    vectors: torch.Tensor | None  # (n, dim) float32 on the scoring device; None: only the sums were read
    starts: np.ndarray  # (n,) absolute char offsets
    ends: np.ndarray  # (n,) running max of token ends within the segment
    ends_sentence: torch.Tensor  # (n,) bool on the device
    char_start: int  # absolute offset of text[0]
    text: str
    sums: torch.Tensor | None = None  # (P, dim) float32 sums of the pieces starting at `piece_first` rows
    piece_first: np.ndarray | None = None  # (P,) first row of each piece (sentence_rows over ends_sentence)

    @property
    def key(self) -> SegKey:
        return (self.doc_id, self.version, self.index)

    @property
    def nbytes(self) -> int:
        held = [t for t in (self.vectors, self.sums) if t is not None]
        return sum(t.numel() * t.element_size() for t in held) + len(self.text) + 24 * len(self.starts)


@dataclass
class DocTokens:
    """Consecutive segments [first_segment, first_segment + len(parts)) of one document, ready to score.

    Offsets are absolute in the document; `text` starts at char `char_base`, so slice through `chars`.
    """

    doc_id: str
    version: str
    header: DocHeader
    parts: list[torch.Tensor]  # (n_i, dim) row blocks on the device, scored block by block, never concatenated;
    # empty when the run was fetched by its sentence sums
    starts: np.ndarray  # (n,) absolute char offsets
    ends: np.ndarray  # (n,) running max of token ends: end char of a span ending at token i
    ends_sentence: torch.Tensor  # (n,) bool on the device
    text: str
    char_base: int = 0
    first_segment: int = 0
    n_segments: int = 1
    layout: Layout | None = None  # the document's parsed structure; None: it has none
    sums: torch.Tensor | None = None  # (P, dim) the segments' piece sums in order, when fetched by them
    piece_first: np.ndarray | None = None  # (P,) first row of each piece within the run

    @property
    def key(self) -> tuple[str, str, int, int]:
        """Identifies this run of this document version (sentence tables are cached by it)."""
        return (self.doc_id, self.version, self.first_segment, self.n_segments)

    @property
    def n(self) -> int:
        return len(self.starts)

    @property
    def by_sums(self) -> bool:
        """Fetched by its sentence sums: its sentences are scored from them, and it has no rows."""
        return self.sums is not None

    @property
    def vectors(self) -> torch.Tensor:
        """(n, dim) all rows; a copy when the run spans several segments, so not for the per-query path.

        Raises:
            ValueError: the run was fetched by its sentence sums (`Fetcher.fetch(..., rows=True)` reads rows).
        """
        if not self.parts:
            raise ValueError(f"document '{self.doc_id}' was fetched by its sentence sums, without token rows")
        return self.parts[0] if len(self.parts) == 1 else torch.cat(self.parts)

    def relevance(self, q: torch.Tensor) -> torch.Tensor:
        """r = D @ q, one GEMV per block of rows.

        Args:
            q: (dim,) on the rows' device.

        Returns:
            (n,) float32.
        """
        return gemv_blocks(self.parts, q)

    def chars(self, start: int, end: int) -> str:
        """Document characters [start, end) (absolute offsets)."""
        return self.text[start - self.char_base : end - self.char_base]

    @classmethod
    def of_segments(
        cls, header: DocHeader, segs: Sequence[SegmentTokens], layout: Layout | None = None, by_sums: bool = False
    ) -> DocTokens:
        """A run of consecutive segments; one segment is used as is, no copies. `by_sums`: the run is
        scored from the segments' piece sums (each must have them), else from their rows."""
        s0 = segs[0]
        if len(segs) == 1:
            starts, ends, es, text = s0.starts, s0.ends, s0.ends_sentence, s0.text
        else:
            starts = np.concatenate([s.starts for s in segs])
            ends = np.maximum.accumulate(np.concatenate([s.ends for s in segs]))
            es = torch.cat([s.ends_sentence for s in segs])
            text = "".join(s.text for s in segs)
        sums = first = None
        if by_sums:
            assert all(s.sums is not None and s.piece_first is not None for s in segs)  # Fetcher._decode made them
            parts: list[torch.Tensor] = []
            sums = segs[0].sums if len(segs) == 1 else torch.cat([s.sums for s in segs])  # type: ignore[misc]
            offsets = np.cumsum([0] + [len(s.starts) for s in segs[:-1]])
            first = np.concatenate([s.piece_first + o for s, o in zip(segs, offsets, strict=True)])
        else:
            parts = _merge_contiguous([s.vectors for s in segs])  # type: ignore[misc]
        return cls(
            s0.doc_id,
            s0.version,
            header,
            parts,
            starts,
            ends,
            es,
            text,
            s0.char_start,
            s0.index,
            len(segs),
            layout,
            sums,
            first,
        )


class DocCache:
    """Bounded LRU of SegmentTokens by bytes; safe across threads.

    Segments decoded together are views of one tensor, so memory returns when a document's last cached
    segment goes: the bound can be overshot by part of one document, never more.

    Putting a segment of a new version of a document drops every cached segment of its older versions
    at once: they can never be served again (the header names one version), so they would only hold memory.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[SegKey, SegmentTokens] = OrderedDict()
        self._keys: dict[str, set[SegKey]] = {}  # doc_id -> keys held, to drop stale versions on put
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: SegKey) -> bool:
        return key in self._items

    @property
    def nbytes(self) -> int:
        """Bytes held now; never above max_bytes."""
        return self._bytes

    def get(self, key: SegKey) -> SegmentTokens | None:
        """The cached segment, made most recent; counts a hit or a miss.

        Args:
            key: (doc_id, version, segment index).

        Returns:
            The segment, or None when it is not cached.
        """
        with self._lock:
            seg = self._items.get(key)
            if seg is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return seg

    def put(self, seg: SegmentTokens) -> None:
        """Insert as most recent, evicting least recent entries past max_bytes; too-big segments are not kept.

        Args:
            seg: the decoded segment; cached segments of other versions of its document are dropped.
        """
        key = seg.key
        with self._lock:
            held = self._items.get(key)
            if seg.nbytes > self.max_bytes or (held is not None and (held.vectors is not None or seg.vectors is None)):
                return
            if held is not None:  # rows read for a segment cached with its sums only
                self._remove(key)
            for old in [k for k in self._keys.get(seg.doc_id, set()) if k[1] != seg.version]:
                self._remove(old)
            self._items[key] = seg
            self._keys.setdefault(seg.doc_id, set()).add(key)
            self._bytes += seg.nbytes
            while self._bytes > self.max_bytes:
                self._remove(next(iter(self._items)))

    def clear(self) -> None:
        """Drop everything (a cold start for benchmarks); hit and miss counts are kept."""
        with self._lock:
            self._items.clear()
            self._keys.clear()
            self._bytes = 0

    def _remove(self, key: SegKey) -> None:
        """Caller holds the lock."""
        old = self._items.pop(key)
        self._bytes -= old.nbytes
        keys = self._keys[key[0]]
        keys.discard(key)
        if not keys:
            del self._keys[key[0]]


class StructureCache:
    """Parsed structures (`Layout`) by (doc_id, version), bounded LRU; thread-safe. A version without a
    structure holds None, so it is not read again either.

    Args:
        max_docs: most document versions kept; the least recently used go first.

    Attributes:
        misses: document versions whose structure was read from the store.
    """

    def __init__(self, max_docs: int = 1024) -> None:
        self.max_docs = max_docs
        self._items: OrderedDict[tuple[str, str], Layout | None] = OrderedDict()
        self._lock = threading.Lock()
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def lookup(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], Layout | None]:
        """The cached layouts among `keys` (absent keys are not in the result)."""
        with self._lock:
            found = {k: self._items[k] for k in keys if k in self._items}
            for k in found:
                self._items.move_to_end(k)
        return found

    def put(self, key: tuple[str, str], layout: Layout | None, read: bool = False) -> None:
        """Keep one version's layout as most recent, evicting the least recent past `max_docs`.

        Args:
            key: (doc_id, version).
            layout: its parsed structure, or None when it has none.
            read: its payload was read from the store (counted in `misses`).
        """
        with self._lock:
            self.misses += read
            self._items[key] = layout
            self._items.move_to_end(key)
            while len(self._items) > self.max_docs:
                self._items.popitem(last=False)

    def clear(self) -> None:
        """Drop everything (a cold start); the miss count is kept."""
        with self._lock:
            self._items.clear()


class Fetcher:
    """Store -> device, caching hot segments.

    Args:
        store: the collection's store.
        device: where token matrices are decoded to and scored.
        boundary: the sentence-end rule marking which tokens end a sentence.
        cache_bytes: bound of the segment cache (`cache`).

    Attributes:
        cache: decoded segments.
        structures: the parsed structures of document versions, handed to each `DocTokens` as its `layout`.
    """

    def __init__(self, store: TokenStore, device: torch.device, boundary: Boundary, cache_bytes: int) -> None:
        self.store = store
        self.device = device
        self.boundary: Boundary = boundary
        self.cache = DocCache(cache_bytes)
        self.structures = StructureCache()

    @property
    def has_sums(self) -> bool:
        """The collection stores sentence sums cut by this fetcher's rule: `fetch(..., rows=False)` reads them."""
        return self.store.meta.sentence_sums is not None and self.store.meta.sentence_sums == self.boundary

    def fetch(
        self, headers: dict[str, DocHeader], segments: dict[str, list[int]] | None = None, rows: bool = True
    ) -> list[DocTokens]:
        """Runs of consecutive segments to score, in the order of `headers`.

        Args:
            headers: doc_id -> its header (version and n_segments), as recall returns them.
            segments: segment indices wanted per document; a document it leaves out (or None) comes whole.
            rows: the runs carry their token rows; False: their sentence sums where the collection stores
                them under this fetcher's rule (`has_sums`; the runs then have no rows), else rows anyway.

        Returns:
            One `DocTokens` per run of consecutive wanted segments. Documents gone from the store, or
            being replaced right now, are skipped rather than scored in part.

        Raises:
            StoreError: the store cannot be read.
        """
        by_sums = not rows and self.has_sums
        wanted: dict[str, list[int]] = {}
        for doc_id, h in headers.items():
            idx = (segments or {}).get(doc_id)
            wanted[doc_id] = sorted(set(idx)) if idx else list(range(h.n_segments))
        have: dict[SegKey, SegmentTokens] = {}
        missing: dict[str, list[int]] = {}
        for doc_id, idx in wanted.items():
            version = headers[doc_id].version
            for i in idx:
                hit = self.cache.get((doc_id, version, i))
                if hit is not None and (hit.vectors is not None or by_sums):
                    have[hit.key] = self._with_sums(hit) if by_sums else hit
                else:
                    missing.setdefault(doc_id, []).append(i)
        if missing:
            self._read(headers, missing, by_sums, have)
        complete = [d for d, idx in wanted.items() if all((d, headers[d].version, i) in have for i in idx)]
        layouts = self.layouts({d: headers[d] for d in complete})
        out = []
        for doc_id in complete:
            version = headers[doc_id].version
            for run in _runs(wanted[doc_id]):
                parts = [have[(doc_id, version, i)] for i in run]
                out.append(DocTokens.of_segments(headers[doc_id], parts, layouts[doc_id], by_sums))
        return out

    def _read(
        self,
        headers: dict[str, DocHeader],
        missing: dict[str, list[int]],
        by_sums: bool,
        have: dict[SegKey, SegmentTokens],
        rows: bool = False,
    ) -> None:
        """Read the missing segments into `have` (and the cache): their rows when `rows` or not `by_sums`,
        else their stored sums, and then the rows of any segment stored without them (summed here)."""
        versions = {d: headers[d].version for d in missing}
        whole = {d: i for d, i in missing.items() if len(i) == headers[d].n_segments}
        some = {d: i for d, i in missing.items() if d not in whole}
        found = self.store.fetch_segments(versions, some or None, rows=rows or not by_sums)
        without: dict[str, list[int]] = {}
        for doc_id, segs in found.items():
            if len(segs) != len(missing[doc_id]):
                continue  # being replaced or deleted right now: its absent segments are skipped by `fetch`
            for seg in self._decode(segs, by_sums):
                if seg is not None:
                    self.cache.put(seg)
                    have[seg.key] = seg
            without[doc_id] = [s.index for s in segs if (doc_id, s.version, s.index) not in have]
        without = {d: i for d, i in without.items() if i}
        if without:
            self._read(headers, without, by_sums, have, rows=True)

    def _with_sums(self, seg: SegmentTokens) -> SegmentTokens:
        """`seg` with its piece sums, summed from its rows when it was read without them."""
        if seg.sums is None:
            assert seg.vectors is not None
            first = sid = np.zeros(0, dtype=np.int64)
            if len(seg.starts):
                first, _, sid = sentence_rows(seg.ends_sentence.cpu().numpy())
            sums = torch.zeros(len(first), seg.vectors.shape[1], device=seg.vectors.device)
            seg.piece_first, seg.sums = first, sums.index_add_(0, torch.from_numpy(sid).to(sums.device), seg.vectors)
        return seg

    def layouts(self, headers: dict[str, DocHeader]) -> dict[str, Layout | None]:
        """The parsed structure of each document version, through `structures`.

        A version not cached yet is parsed from its header's payload when the header carries one (a
        whole header), else from the payload read from the store (recall's headers leave it out), all
        such versions in one read.

        Args:
            headers: doc_id -> its header.

        Returns:
            doc_id -> its layout, or None when it has no structure (or was replaced meanwhile).

        Raises:
            StoreError: the store cannot be read.
        """
        keys = {d: (d, h.version) for d, h in headers.items()}
        found = self.structures.lookup(list(keys.values()))
        out: dict[str, Layout | None] = {}
        unread: dict[str, str] = {}
        for d, h in headers.items():
            if keys[d] in found:
                out[d] = found[keys[d]]
            elif h.structure is not None:
                out[d] = Layout.of_payload(h.structure)
                self.structures.put(keys[d], out[d])
            else:
                unread[d] = h.version
        if unread:
            read = self.store.structures(unread)
            for d, v in unread.items():
                out[d] = Layout.of_payload(read.get(d))
                if d in read:  # a document replaced meanwhile is not cached under the old version
                    self.structures.put((d, v), out[d], read=True)
        return out

    def _decode(self, segs: list[StoredSegment], by_sums: bool = False) -> list[SegmentTokens | None]:
        """Decode one document's fetched segments in one go: their rows are views of one device tensor, so
        consecutive segments can later be scored as one GEMV (`_merge_contiguous`). Segments read by their
        sums come with those (None for one stored without them: its rows are to be read); `by_sums` read
        by their rows get their sums summed from the rows."""
        rows = None
        if segs[0].stored is not None:
            stored = np.concatenate([s.stored for s in segs]) if len(segs) > 1 else segs[0].stored
            scales = [s.scales for s in segs if s.scales is not None]
            t = torch.from_numpy(stored).to(self.device, non_blocking=True)
            sc = torch.from_numpy(np.concatenate(scales)).to(self.device) if scales else None
            rows = self.store.codec.decode(t, sc)  # (sum n_i, dim) in the collection's storage layout
        out: list[SegmentTokens | None] = []
        at = 0
        for s in segs:
            n = len(s.starts)
            # boundaries from the segment's own text: its text runs up to the next segment's first token,
            # so every token's "gap after it" is inside it
            es = token_ends_sentence(s.text, s.starts - s.char_start, self.boundary)
            ends = np.maximum.accumulate(s.ends) if n else s.ends
            seg = SegmentTokens(
                s.doc_id,
                s.version,
                s.index,
                None if rows is None else rows[at : at + n],
                s.starts,
                ends,
                torch.from_numpy(es).to(self.device),
                s.char_start,
                s.text,
            )
            at += n
            if rows is None:
                first = sentence_rows(es)[0] if n else np.zeros(0, dtype=np.int64)
                if s.sums is None or len(s.sums) != len(first):
                    out.append(None)  # no sums stored (or cut otherwise): read its rows
                    continue
                seg.sums, seg.piece_first = torch.from_numpy(s.sums.copy()).to(self.device), first
            elif by_sums:
                self._with_sums(seg)
            out.append(seg)
        return out


def _merge_contiguous(parts: list[torch.Tensor]) -> list[torch.Tensor]:
    """Fuse neighbouring (n_i, dim) row blocks that are adjacent views of one tensor into one view.

    Segments decoded together share storage, so a whole document is scored by one GEMV rather than one
    per 256-row segment (per-call overhead is a large share of a small GEMV).
    """
    out = [parts[0]]
    for p in parts[1:]:
        a = out[-1]
        adjacent = (
            a.is_contiguous()
            and p.is_contiguous()
            and a.untyped_storage().data_ptr() == p.untyped_storage().data_ptr()
            and a.storage_offset() + a.numel() == p.storage_offset()
        )
        if adjacent:
            out[-1] = a.as_strided((a.shape[0] + p.shape[0], a.shape[1]), a.stride(), a.storage_offset())
        else:
            out.append(p)
    return out


def _runs(idx: list[int]) -> list[list[int]]:
    """Sorted indices -> runs of consecutive ones: [0, 1, 3] -> [[0, 1], [3]]."""
    runs: list[list[int]] = []
    for i in idx:
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs
