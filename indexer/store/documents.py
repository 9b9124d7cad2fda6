"""chunkless' document model on top of any PointsBackend.

Per document: segment points (token multivector + segment pooled vector + offsets and text), and one
header point (document pooled vector + what search returns). Segments carry the document version
(content hash) in their ids and payloads; the header names the live version. Writes go segments
first, header last, stale versions after, so a search (which always goes header -> version ->
segments) sees the old or the new document, never a mix, and a killed write leaves only orphans
that `remove_orphans` deletes.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from indexer.codec import CodecParams, TokenCodec, fit, pool_document
from indexer.store.backend import Match, NewPoint, PointRecord, PointsBackend, Prefetch, VectorSpace, Where
from indexer.store.meta import RECALL_FIELDS, CollectionMeta, DocHeader
from indexer.store.ranking import candidates, ranking_rows
from indexer.store.segments import POINT_NAMESPACE, Segment, header_id, segment_id, split_segments
from indexer.store.sentence_sums import read_sums
from indexer.store.sentence_sums import segment_payload as sums_payload
from indexer.store.sentence_vectors import SentenceKey, read_sentence_vectors, segment_payload
from schemas.errors import StorageFaultError, StoreMismatchError, StoreNotFoundError
from schemas.layout import StorageLayout
from schemas.models import EmbeddedDocument, LoadedDocument, SentenceVectors
from schemas.settings import Boundary, StoreSettings

KEYWORD_FIELDS = ["kind", "doc_id", "version", "source"]
# `chunkless delete` compacts an embedded store when the deleted tokens reach this fraction of its
# tokens: Qdrant's own default deleted_threshold. Compacting rewrites every live point, so its cost
# follows the store's size, not the deletion's (README, Reclaiming space).
COMPACT_AFTER_FRACTION = 0.2


@dataclass
class StoredSegment:
    """A segment as read back: stored (encoded) token rows and what decoding and span-making need."""

    doc_id: str
    version: str
    index: int
    stored: np.ndarray | None  # (n, columns) float32, or uint8 codes for int8 and binary; None: not read
    scales: np.ndarray | None  # (n,) int8 / binary row scales
    starts: np.ndarray  # (n,) absolute char offsets
    ends: np.ndarray
    char_start: int
    text: str
    sums: np.ndarray | None = None  # (P, dim) float32 piece sums (indexer.store.sentence_sums), when read


@dataclass(frozen=True)
class Written:
    """What writing one document stored."""

    bytes: int  # token-vector bytes as stored (after the collection's encoding)
    segments: int


@dataclass(frozen=True)
class CompactReport:
    """What compacting the store did.

    Attributes:
        bytes_before: bytes on disk before (None where the backend cannot tell: a server).
        bytes_after: bytes on disk after (None likewise).
        seconds: time the compaction took.
    """

    bytes_before: int | None
    bytes_after: int | None
    seconds: float

    @property
    def reclaimed(self) -> int | None:
        """Bytes freed, or None when the backend does not report its bytes."""
        if self.bytes_before is None or self.bytes_after is None:
            return None
        return self.bytes_before - self.bytes_after


@dataclass(frozen=True)
class WriteTarget:
    """What embedding for a collection needs to know of it, without a connection to the store.

    The storage layout (its pool), whether sentence vectors are kept and the rows per segment decide
    how documents are cut into segments and sentences before they are written. A distributed ingest
    (`indexer.distributed`) embeds on machines that never open the store, and plans with this.

    Attributes:
        meta: the collection's metadata.
        segment_rows: rows per segment written (None: the most a Qdrant server takes).
    """

    meta: CollectionMeta
    segment_rows: int | None


@dataclass
class Candidate:
    """A recalled document: its id, recall score and header."""

    doc_id: str
    score: float
    header: DocHeader


def _seg_filter(doc_id: str, version: str | None = None) -> Where:
    must: list[Match | Where] = [Match("kind", "segment"), Match("doc_id", doc_id)]
    if version is not None:
        must.append(Match("version", version))
    return Where(must=must)


class TokenStore:
    """Documents as token multivectors in one collection: chunkless' document model over a PointsBackend.

    Args:
        backend: the attached backend (`open_store`/`open_or_create_store` build it).
        meta: the collection's metadata.
        segment_rows: rows per segment written (None: the most a Qdrant server takes).

    Example:
        >>> store = open_or_create_store(settings.store, emb.name, emb.dim, "mean")  # doctest: +SKIP
        >>> store.write_document(embedded)  # segments, then the header  # doctest: +SKIP
        >>> store.recall(query_vector, k=10)[0].header.source  # doctest: +SKIP
    """

    def __init__(self, backend: PointsBackend, meta: CollectionMeta, segment_rows: int | None = None) -> None:
        self.backend = backend
        self.meta = meta
        self.segment_rows = segment_rows  # rows per segment written (None: the server's limit)
        self._codec: TokenCodec | None = None

    @property
    def target(self) -> WriteTarget:
        """The collection's metadata and rows per segment, for embedding that runs away from the store."""
        return WriteTarget(self.meta, self.segment_rows)

    # -- storage layout ----------------------------------------------------------------------------
    @property
    def codec(self) -> TokenCodec:
        """The collection's token codec; fitted layouts read their parameters from the codec point."""
        if self._codec is None:
            params = None
            if self.meta.layout.needs_fit:
                recs = self.backend.scroll(Where(must=[Match("kind", "codec")]), [], limit=1)
                if not recs:
                    raise StoreMismatchError(
                        f"collection stores {self.meta.layout.name} tokens but has no fitted codec yet; "
                        "ingest a document first"
                    )
                params = CodecParams.from_payload(recs[0].payload["params"])
            self._codec = TokenCodec(self.meta.layout, self.meta.dim, params)
        return self._codec

    def fit_codec(self, sample: np.ndarray) -> bool:
        """Fit and store the layout's parameters on (n, dim) token rows, unless already fitted; True if fitted now.

        The first document written fits them when nobody called this; a sample across documents fits better.
        """
        layout = self.meta.layout
        if not layout.needs_fit or self.backend.count(Where(must=[Match("kind", "codec")])):
            return False
        params = fit(layout, sample)
        # a codec point carries the parameters so every backend keeps them with the collection;
        # its pooled vector is a fixed unit vector, never recalled (recall filters on kind)
        unit = np.zeros(self.meta.dim, dtype=np.float32)
        unit[0] = 1.0
        pid = str(uuid.uuid5(POINT_NAMESPACE, "codec"))
        self.backend.upsert([NewPoint(pid, {"pooled": unit}, {"kind": "codec", "params": params.to_payload()})])
        self._codec = TokenCodec(layout, self.meta.dim, params)
        return True

    # -- writes ------------------------------------------------------------------------------------
    def write_document(self, emb: EmbeddedDocument) -> Written:
        """Store (or replace) a document: its segments first, its header last, then drop older versions.

        Args:
            emb: the embedded document (its `doc.doc_id` names it, `doc.content_hash` is its version).

        Returns:
            The token-vector bytes and segments written.

        Raises:
            StoreMismatchError: the document's dimension is not the collection's.
            StorageFaultError: not enough free space (checked before anything is written), disk full,
                read-only or permission denied; the document's previous version stays live.
        """
        d = emb.doc
        self.meta.check(self.meta.model, emb.dim, None, d.source)
        n_model_tokens, sentences = emb.n_tokens, emb.sentences
        emb = pool_document(emb, self.meta.layout.pool)
        segs = split_segments(emb, self.segment_rows)
        self.begin_document(d, emb.dim, emb.vectors, emb.n_tokens, len(segs))
        nbytes = self.write_segments(d, segs, sentences)
        self.commit_document(d, emb.pooled, n_model_tokens, emb.n_tokens, len(segs))
        return Written(nbytes, len(segs))

    # A document written in parts (the pipeline's long documents, indexer/parts.py): begin_document,
    # then write_segments for each run of segments as it is embedded, then commit_document. Until the
    # commit the new segments are orphans no search reaches, so a killed write loses nothing.
    def begin_document(self, doc: LoadedDocument, dim: int, sample: np.ndarray, n_rows: int, n_segments: int) -> None:
        """Check a document fits the collection and the disk, and fit the codec if nothing has yet.

        Args:
            doc: the document about to be written.
            dim: its token vectors' dimension.
            sample: (n, dim) stored-row vectors (after storage pooling) to fit the codec on: the first part's.
            n_rows: stored rows the whole document will have.
            n_segments: segments the whole document will have.

        Raises:
            StoreMismatchError: `dim` is not the collection's.
            StorageFaultError: not enough free space for the whole document; nothing was written.
        """
        self.meta.check(self.meta.model, dim, None, doc.source)
        # stored bytes on paper: token rows in the layout, the pooled vectors, offsets (JSON) and the text
        expected = int(
            n_rows * self.meta.layout.vector_bytes_per_token(self.meta.dim) * self.meta.layout.pool
            + (n_segments + 1) * self.meta.dim * 4
            + n_rows * 24
            + len(doc.text.encode("utf-8", "surrogatepass"))
        )
        self.backend.ensure_space(expected, f"writing document '{doc.doc_id}'")
        self.fit_codec(sample)

    def write_segments(self, doc: LoadedDocument, segs: list[Segment], sentences: SentenceVectors | None = None) -> int:
        """Encode and write segments of the document version `doc.content_hash`.

        Args:
            doc: the document (its text gives each segment's text).
            segs: segments with their final indices, row offsets and character ranges.
            sentences: the document's sentence vectors, each written with the segment its sentence starts in.

        Returns:
            Token-vector bytes as stored.

        Raises:
            StorageFaultError: disk full, read-only or permission denied.
        """
        nbytes = 0
        written_at = time.time()
        for s in segs:
            stored, scales = self.codec.encode(s.vectors)
            payload: dict[str, Any] = {
                "kind": "segment",
                "doc_id": doc.doc_id,
                "version": doc.content_hash,
                "seg": s.index,
                "tok_start": s.tok_start,
                "char_start": s.char_start,
                "char_end": s.char_end,
                "text": doc.text[s.char_start : s.char_end],
                "starts": s.offsets[:, 0].tolist(),
                "ends": s.offsets[:, 1].tolist(),
                "written_at": written_at,  # lets remove_orphans spare a concurrent writer's in-flight segments
            }
            if scales is not None:
                payload["scales"] = scales.tolist()
            if sentences is not None:
                payload |= segment_payload(sentences, s.char_start, s.char_end)
            if self.meta.sentence_sums is not None:
                rows = self.codec.decode_numpy(stored, scales)  # as a query decodes them
                seg_text = payload["text"]
                payload |= sums_payload(rows, seg_text, s.offsets[:, 0] - s.char_start, self.meta.sentence_sums)
            vectors = {"tokens": stored, "pooled": s.pooled}
            if self.meta.rank_pool:
                vectors["rank"] = ranking_rows(s.vectors, self.meta.rank_pool)
            # one segment per upsert keeps each request under a server's payload limit
            point = NewPoint(segment_id(doc.doc_id, doc.content_hash, s.index), vectors, payload)
            self._upsert(doc, point)
            # bytes as Qdrant stores them: float16 rows travel as float32 arrays but are kept at 2 B/number
            nbytes += stored.size * (2 if self.meta.layout.dtype == "float16" else stored.itemsize)
        return nbytes

    def _upsert(self, doc: LoadedDocument, point: NewPoint) -> None:
        """Write one point of `doc`; a storage fault names the document."""
        try:
            self.backend.upsert([point])
        except StorageFaultError as e:
            raise StorageFaultError(f"document '{doc.doc_id}' not stored: {e}") from e

    def commit_document(
        self, doc: LoadedDocument, pooled: np.ndarray, n_tokens: int, n_rows: int, n_segments: int
    ) -> None:
        """Write the header naming this version (the document becomes visible whole), then drop older versions.

        Args:
            doc: the document.
            pooled: (dim,) unit document vector.
            n_tokens: model tokens in the document.
            n_rows: stored token rows (fewer than tokens when adjacent tokens are pooled).
            n_segments: segments written for this version, indices 0..n_segments-1.

        Raises:
            StorageFaultError: disk full, read-only or permission denied; the previous version stays live.
        """
        header = DocHeader(
            doc_id=doc.doc_id,
            version=doc.content_hash,
            source=doc.source,
            title=doc.title,
            n_tokens=n_tokens,
            n_rows=n_rows,
            n_segments=n_segments,
            page_starts=doc.page_starts,
            text_len=len(doc.text),
            ingested_at=time.time(),
            page_labels=doc.structure.page_labels if doc.structure is not None else None,
            structure=doc.structure.to_payload() if doc.structure is not None else None,
        )
        self._upsert(doc, NewPoint(header_id(doc.doc_id), {"pooled": pooled}, header.to_payload()))
        # the header now names the new version: older versions' segments are unreachable, drop them
        self.backend.delete(
            Where(
                must=[Match("kind", "segment"), Match("doc_id", doc.doc_id)],
                must_not=[Match("version", doc.content_hash)],
            )
        )

    def delete_document(self, doc_id: str) -> bool:
        """Remove a document, header first so search stops seeing it at once.

        Args:
            doc_id: the document.

        Returns:
            False when there was no such document.

        Raises:
            StorageFaultError: read-only store or permission denied.
        """
        if self.header(doc_id) is None:
            return False
        self.backend.delete(Where(must=[Match("kind", "doc"), Match("doc_id", doc_id)]))
        self.backend.delete(_seg_filter(doc_id))
        return True

    def remove_orphans(self, min_age_s: float = 0.0) -> int:
        """Delete segments no header points to (left by a killed write).

        Args:
            min_age_s: spare orphans written in the last that many seconds: on a server, another
                worker's document between its segments and its header looks exactly like an orphan.

        Returns:
            How many segments were deleted.

        Raises:
            StorageFaultError: read-only store or permission denied.
        """
        live = {(h.doc_id, h.version) for h in self.headers().values()}
        # three small fields, not each segment's text and offsets: this runs at the start of every ingest
        segs = self.backend.scroll(
            Where(must=[Match("kind", "segment")]), with_vectors=[], payload=["doc_id", "version", "written_at"]
        )
        cutoff = time.time() - min_age_s
        counts = Counter((r.payload["doc_id"], r.payload["version"]) for r in segs)
        young = {(r.payload["doc_id"], r.payload["version"]) for r in segs if r.payload.get("written_at", 0) > cutoff}
        stale = set(counts) - live - young
        for doc_id, version in stale:
            self.backend.delete(_seg_filter(doc_id, version))
        return sum(counts[k] for k in stale)

    # -- reads -------------------------------------------------------------------------------------
    def headers(self) -> dict[str, DocHeader]:
        """Every live document's header.

        Returns:
            doc_id -> header.
        """
        recs = self.backend.scroll(Where(must=[Match("kind", "doc")]), with_vectors=[])
        return {r.payload["doc_id"]: DocHeader.model_validate(r.payload) for r in recs}

    def header(self, doc_id: str) -> DocHeader | None:
        """One document's header.

        Args:
            doc_id: the document.

        Returns:
            Its header, or None when it is not stored.
        """
        recs = self.backend.scroll(Where(must=[Match("kind", "doc"), Match("doc_id", doc_id)]), [], limit=1)
        return DocHeader.model_validate(recs[0].payload) if recs else None

    def recall(
        self,
        query: np.ndarray,
        k: int,
        level: Literal["doc", "segment"] = "doc",
        where: Where | None = None,
    ) -> list[Candidate]:
        """Top-k documents by pooled cosine: of their header (doc) or of their best segment (segment).

        Args:
            query: (dim,) unit query vector.
            k: most documents to return.
            level: "doc" compares the document's pooled vector, "segment" its best segment's.
            where: a filter on header fields (its `must` conditions apply), or None.

        Returns:
            Candidates, best first.

        Raises:
            StoreMismatchError: the query's dimension is not the collection's.
        """
        self._check_query(query)
        if level == "doc":
            flt = Where(must=[Match("kind", "doc"), *(where.must if where else [])])
            recs = self.backend.query("pooled", query, k, flt, RECALL_FIELDS)
            return [Candidate(r.payload["doc_id"], r.score, DocHeader.model_validate(r.payload)) for r in recs]
        recs = self.backend.query("pooled", query, 4 * k, Where(must=[Match("kind", "segment")]), ["doc_id", "version"])
        return self._segments_to_docs(recs, k, where)

    def maxsim(self, query_tokens: np.ndarray, k: int, doc_ids: list[str] | None = None) -> list[Candidate]:
        """Top-k documents by Qdrant's MaxSim of the query's token vectors over segment token matrices.

        Args:
            query_tokens: (m, dim) query token vectors.
            k: most documents to return.
            doc_ids: only these documents (None: all).

        Returns:
            Candidates, best first (a document scores as its best segment).

        Raises:
            StoreMismatchError: wrong dimension, or a layout Qdrant cannot score (pooled, reduced, int4, binary).
        """
        self._check_query(query_tokens[0])
        if not self.meta.layout.is_plain:
            raise StoreMismatchError(
                f"MaxSim in Qdrant needs plain token rows; this collection stores {self.meta.layout.name}"
            )
        must: list[Match | Where] = [Match("kind", "segment")]
        if doc_ids is not None:
            must.append(Match("doc_id", list(doc_ids)))
        recs = self.backend.query("tokens", query_tokens, 4 * k, Where(must=must), ["doc_id", "version"])
        return self._segments_to_docs(recs, k, None)

    def _segments_to_docs(self, recs: list[PointRecord], k: int, where: Where | None) -> list[Candidate]:
        best: dict[str, float] = {}
        versions: dict[str, str] = {}
        for r in recs:  # best segment per document; results come best first
            did = r.payload["doc_id"]
            if did not in best:
                best[did], versions[did] = r.score, r.payload["version"]
        if not best:
            return []
        must: list[Match | Where] = [Match("kind", "doc"), Match("doc_id", list(best)), *(where.must if where else [])]
        heads = {
            r.payload["doc_id"]: DocHeader.model_validate(r.payload)
            for r in self.backend.scroll(Where(must=must), [], payload=RECALL_FIELDS)
        }
        # a segment whose version is not its header's is an orphan or stale: never a candidate
        out = [Candidate(d, s, heads[d]) for d, s in best.items() if d in heads and heads[d].version == versions[d]]
        return sorted(out, key=lambda c: -c.score)[:k]

    def rank_segments(
        self,
        query: np.ndarray,
        versions: dict[str, str],
        k: int,
        shortlist: int = 0,
        pooled: np.ndarray | None = None,
        segments: int | None = None,
    ) -> list[tuple[str, int, float]]:
        """The k segments of these documents (doc_id -> live version) nearest the query, best first.

        A (dim,) query ranks by pooled cosine (HNSW); an (m, dim) matrix of query token vectors by Qdrant's
        MaxSim over each segment's token rows, which reads them inside the engine but never moves them.
        A collection with ranking rows (`rank_pool`) scores in two stages of one engine call: MaxSim over
        the int8 ranking rows picks `ranking.candidates(k)` segments, MaxSim over their stored rows ranks
        them (`indexer.store.ranking`). With a `shortlist` (and the `pooled` query vector) instead, MaxSim
        scores only the `shortlist` segments nearest the pooled query by their pooled segment vectors.

        Args:
            query: (dim,) query vector or (m, dim) query token vectors.
            versions: doc_id -> live version (from the headers).
            k: most segments to return.
            shortlist: segments MaxSim scores, taken by pooled cosine first (0: every segment).
            pooled: (dim,) the pooled query vector, for the shortlist.
            segments: how many segments these documents hold, when the caller knows (their headers): the
                ranking rows' first stage is skipped when it would pass on most of them anyway.

        Returns:
            (doc_id, segment index, score), best first: what a query fetches when it need not score whole documents.

        Raises:
            StoreMismatchError: wrong dimension, or MaxSim asked of a layout Qdrant cannot score.
        """
        self._check_query(query[-1] if query.ndim == 2 else query)
        if not versions or k <= 0:
            return []
        using = "pooled" if query.ndim == 1 else "tokens"
        if using == "tokens" and not self.meta.layout.is_plain:
            raise StoreMismatchError(
                f"MaxSim in Qdrant needs plain token rows; this collection stores {self.meta.layout.name}"
            )
        flt = Where(must=[Match("kind", "segment"), Match("doc_id", list(versions))])
        first = None
        if using == "tokens" and shortlist > 0 and pooled is not None:
            self._check_query(pooled)
            # the spare hits below apply to the shortlist too: stale segments take places in it until swept
            first = Prefetch("pooled", pooled, max(shortlist, 2 * k))
        elif using == "tokens" and self.meta.rank_pool and (segments is None or segments > 2 * candidates(k)):
            first = Prefetch("rank", query, candidates(k))  # indexer.store.ranking: int8 first, then exact
        # a few spare hits: a document's orphaned or stale segments match the filter until swept
        recs = self.backend.query(using, query, 2 * k, flt, ["doc_id", "version", "seg"], first)
        out = [
            (r.payload["doc_id"], int(r.payload["seg"]), r.score)
            for r in recs
            if versions.get(r.payload["doc_id"]) == r.payload["version"]
        ]
        # equal scores (segments of one window share its pooled vector) in document order, not in the
        # engine's point order, which an optimize rewrites
        return sorted(out, key=lambda x: (-x[2], x[0], x[1]))[:k]

    def fetch_segments(
        self, docs: dict[str, str], indices: dict[str, list[int]] | None = None, rows: bool = True
    ) -> dict[str, list[StoredSegment]]:
        """Segments of each doc_id at the given version, in order, with their stored token rows.

        Args:
            docs: doc_id -> version.
            indices: restricts a document to those segment indices; documents it leaves out come whole.
            rows: read the token rows; False: their piece sums instead (`StoredSegment.sums`, None for a
                segment written without them), and `stored` is None.

        Returns:
            doc_id -> its segments sorted by index (documents with none found are absent).
        """
        if not docs:
            return {}
        # the chosen segments of a document by id (a filter on their index reads every segment of it);
        # documents wanted whole by filter
        ids = [segment_id(d, v, int(i)) for d, v in docs.items() if indices and d in indices for i in indices[d]]
        whole = [_seg_filter(d, v) for d, v in docs.items() if not (indices and d in indices)]
        vectors = ["tokens"] if rows else []
        recs = self.backend.retrieve(ids, vectors, True)
        if whole:
            recs += self.backend.scroll(Where(should=list(whole)), with_vectors=vectors)
        rule = self.meta.sentence_sums
        out: dict[str, list[StoredSegment]] = defaultdict(list)
        for r in recs:
            p = r.payload
            scales = p.get("scales")
            out[p["doc_id"]].append(
                StoredSegment(
                    doc_id=p["doc_id"],
                    version=p["version"],
                    index=int(p["seg"]),
                    stored=r.vectors["tokens"] if rows else None,
                    scales=None if scales is None else np.asarray(scales, dtype=np.float32),
                    starts=np.asarray(p["starts"], dtype=np.int64),
                    ends=np.asarray(p["ends"], dtype=np.int64),
                    char_start=int(p["char_start"]),
                    text=p["text"],
                    sums=None if rows or rule is None else read_sums(p, self.meta.dim, rule),
                )
            )
        for segs in out.values():
            segs.sort(key=lambda s: s.index)
        return dict(out)

    def structures(self, versions: dict[str, str]) -> dict[str, dict[str, Any] | None]:
        """The structure payloads of some documents' live versions (recall leaves them out of headers).

        Args:
            versions: doc_id -> the version wanted.

        Returns:
            doc_id -> its structure payload, or None when that version has none (a document replaced
            since is left out).
        """
        if not versions:
            return {}
        must: list[Match | Where] = [Match("kind", "doc"), Match("doc_id", list(versions))]
        recs = self.backend.scroll(Where(must=must), [], payload=["doc_id", "version", "structure"])
        return {
            r.payload["doc_id"]: r.payload.get("structure")
            for r in recs
            if versions.get(r.payload["doc_id"]) == r.payload["version"]
        }

    def segment_texts(self, wanted: dict[tuple[str, str], list[int]]) -> dict[tuple[str, int], tuple[int, str]]:
        """The text of some segments: payload only, no token rows.

        Args:
            wanted: (doc_id, version) -> segment indices.

        Returns:
            (doc_id, segment index) -> (char_start, text).
        """
        if not wanted:
            return {}
        ids = [segment_id(d, v, int(i)) for (d, v), idx in wanted.items() for i in idx]
        recs = self.backend.retrieve(ids, [], ["doc_id", "seg", "char_start", "text"])
        return {
            (r.payload["doc_id"], int(r.payload["seg"])): (int(r.payload["char_start"]), r.payload["text"])
            for r in recs
        }

    def sentence_vectors(self, wanted: dict[tuple[str, str], list[int]]) -> dict[SentenceKey, np.ndarray]:
        """The stored sentence vectors of the sentences starting in some segments (`indexer.store.sentence_vectors`).

        Args:
            wanted: (doc_id, version) -> segment indices.

        Returns:
            (doc_id, version, char start, char end) -> (dim,) float32; empty when the collection has none.
        """
        if not self.meta.sentence_vectors:
            return {}
        return read_sentence_vectors(self.backend, self.meta.dim, wanted)

    def _check_query(self, q: np.ndarray) -> None:
        if q.shape[-1] != self.meta.dim:
            raise StoreMismatchError(
                f"query vector is {q.shape[-1]}-d but collection holds {self.meta.dim}-d vectors from "
                f"'{self.meta.model}'; search with --model {self.meta.model}"
            )

    def stats(self) -> dict[str, Any]:
        """Documents, segments, tokens, bytes on disk and bytes per token.

        Returns:
            A JSON-able dict (bytes_on_disk and bytes_per_token are None where the backend cannot tell).
        """
        heads = self.headers()
        tokens = sum(h.n_tokens for h in heads.values())
        disk = self.backend.disk_bytes()
        return {
            "documents": len(heads),
            "segments": self.backend.count(Where(must=[Match("kind", "segment")])),
            "tokens": tokens,
            "dim": self.meta.dim,
            "storage_dtype": self.meta.layout.dtype,
            "storage_layout": self.meta.layout.name,
            "sentence_vectors": self.meta.sentence_vectors,
            "rank_pool": self.meta.rank_pool,
            "sentence_sums": self.meta.sentence_sums,
            "bytes_on_disk": disk,
            "bytes_per_token": (disk / tokens) if disk is not None and tokens else None,
        }

    def compact(self) -> CompactReport:
        """Reclaim the space of deleted documents (Qdrant's vacuum; see `PointsBackend.compact`).

        Deleting a document only marks its points deleted: the bytes stay on disk until this runs
        (Edge) or the server's optimizers get to them. Live documents read back unchanged.

        Returns:
            Bytes on disk before and after (None on a server) and the seconds it took.

        Raises:
            StorageFaultError: disk full, read-only or permission denied.
            ServerError: the server cannot be reached or refused the key.
        """
        before = self.backend.disk_bytes()
        t0 = time.perf_counter()
        self.backend.compact()
        seconds = time.perf_counter() - t0
        return CompactReport(before, self.backend.disk_bytes(), seconds)

    def build_rank_index(self) -> bool:
        """Build the int8 copy of the ranking rows MaxSim scans first (`StoreSettings.rank_pool`).

        Qdrant quantizes a segment when its optimizer rewrites it; Edge runs no optimizer by itself, so
        this runs them (as `compact` does, reclaiming deleted points on the way). Until it runs, the
        first stage scans the float ranking rows of the points written since: the same ranking, slower.

        Returns:
            Whether the collection keeps such a copy (and the optimizers ran).

        Raises:
            StorageFaultError: no room for the rewrite (nothing stored is lost); as `compact`.
            ServerError: the server cannot be reached or refused the key.
        """
        if not self.backend.quantized:
            return False
        self.backend.compact()
        return True

    def flush(self) -> None:
        """Persist pending writes.

        Raises:
            StorageFaultError: disk full, read-only or permission denied.
        """
        self.backend.flush()

    def close(self) -> None:
        """Flush and release the store (the embedded store's one-process lock)."""
        self.backend.close()


def vector_spaces(dim: int, layout: StorageLayout, rank_pool: int = 0) -> dict[str, VectorSpace]:
    """The named vectors: pooled (cosine, HNSW), tokens (MaxSim multivector, no HNSW) and, with
    `rank_pool`, rank (the ranking rows of `indexer.store.ranking`, kept with an int8 copy).

    Args:
        dim: the model's dimension.
        layout: how token rows are stored.
        rank_pool: token rows per ranking row (`StoreSettings.rank_pool`; 0: no ranking rows). A layout
            of codes is never ranked by MaxSim in Qdrant, so it gets none.

    Returns:
        name -> space.
    """
    spaces = {
        "pooled": VectorSpace(size=dim, multivector=False, datatype="float32", distance="cosine", hnsw=True),
        # dot, not cosine: rows are unit vectors already, and cosine would renormalise int8 codes
        "tokens": VectorSpace(
            size=layout.columns(dim), multivector=True, datatype=layout.qdrant_datatype, distance="dot", hnsw=False
        ),
    }
    if rank_pool and layout.is_plain:
        spaces["rank"] = VectorSpace(
            size=dim, multivector=True, datatype="float16", distance="dot", hnsw=False, quantized=True
        )
    return spaces


def make_backend(store: StoreSettings, read_only: bool = False) -> PointsBackend:
    """Edge on `store.store_path` unless `store.url` names a Qdrant server (or qdrant-client local mode).

    Args:
        store: the store settings.
        read_only: the caller only reads (Edge then opens a store this user cannot write through a
            temporary copy, and refuses writes to it).

    Returns:
        The backend, not yet attached to a collection.
    """
    if store.url:
        from indexer.store.server import ServerBackend

        return ServerBackend(store)
    from indexer.store.edge import EdgeBackend

    return EdgeBackend(store.collection_path, read_only=read_only)


def open_store(store: StoreSettings, read_only: bool = False) -> TokenStore:
    """Open an existing collection; the embedded store is opened now, so a busy one fails before anything loads.

    Args:
        store: the store settings (`settings.store`).
        read_only: the caller only reads (a Retriever): a store this user cannot write (a read-only
            file system) still opens, through a temporary copy, and writes to it raise StorageFaultError.
            A writable store opens as usual either way.

    Returns:
        The store.

    Raises:
        StoreNotFoundError: no such store or collection (names it and what to run).
        StoreBusyError: another process holds the embedded store.
        StorageFaultError: the store cannot be opened (read-only, disk full, permissions).
        ServerError: the server cannot be reached, refused the key or runs an incompatible version.

    Example:
        >>> store = open_store(Settings(store_path="my_store").store)  # doctest: +SKIP
        >>> sorted(store.headers())  # doctest: +SKIP
    """
    backend = make_backend(store, read_only)
    if not backend.exists():
        raise StoreNotFoundError(
            f"no collection '{store.collection}' in store {store.location}; run 'chunkless ingest PATH' first "
            "or pass the right --store/--collection"
        )
    meta = CollectionMeta.model_validate(backend.open()["chunkless"])
    return TokenStore(backend, meta)


LAYOUT_FIELDS = {"storage_dtype", "storage_reduce", "storage_dim", "storage_pool"}


def open_or_create_store(
    store: StoreSettings,
    model: str,
    dim: int,
    pooling: str,
    model_backend: str | None = None,
    vector_kind: str | None = None,
    sentence_rule: Boundary = "sentences",
) -> TokenStore:
    """Open the collection for writing, creating it for (model, dim, `store.layout`) if it does not exist.

    Args:
        store: the store settings (`settings.store`).
        model: the embedder's name.
        dim: the embedder's dimension.
        pooling: the embedder's pooling, recorded with the collection.
        model_backend: the embedder's backend, recorded (default "hf-pooled") and checked when given.
        vector_kind: the embedder's vector kind, recorded (default "pooled-hidden") and checked when given.
        sentence_rule: the sentence-end rule a new collection's sentence sums are cut by
            (`store.store_sentence_sums`; the `SpanSettings.boundary` its searches will use).

    Returns:
        The store, writing segments of `store.segment_tokens` rows.

    Raises:
        StoreMismatchError: the collection was built with another model, dimension or layout, or
            `store_sentence_vectors` was set to what the collection did not record.
        StoreBusyError: another process holds the embedded store.
        StorageFaultError: not enough free space, read-only store or permission denied.
        ServerError: the server cannot be reached, refused the key or runs an incompatible version.
    """
    backend = make_backend(store)
    layout = store.layout
    if backend.exists():
        meta = CollectionMeta.model_validate(backend.open()["chunkless"])
        try:
            where = f"collection '{store.collection}'"
            # a layout applies to new collections; an existing one keeps its own unless the user asked
            # for another (a changed default must not lock people out of the stores they have)
            asked = bool(LAYOUT_FIELDS & store.model_fields_set)
            meta.check(
                model,
                dim,
                store.storage_dtype if asked else None,
                where,
                layout if asked else None,
                model_backend,
                vector_kind,
            )
            # asked for explicitly and not what the collection records: storing them for some documents
            # only, or silently not at all, would leave the user guessing which re-ranking runs
            if "rank_pool" in store.model_fields_set and store.rank_pool != meta.rank_pool:
                raise StoreMismatchError(
                    f"{where} was created with rank_pool {meta.rank_pool}, and rank_pool (CHUNKLESS_RANK_POOL)="
                    f"{store.rank_pool} asks otherwise; the setting applies when a collection is created: ingest "
                    "into a new collection (--collection NAME) or leave the setting unset"
                )
            asked_sv = "store_sentence_vectors" in store.model_fields_set
            if asked_sv and store.store_sentence_vectors != meta.sentence_vectors:
                had = "with" if meta.sentence_vectors else "without"
                raise StoreMismatchError(
                    f"{where} was created {had} sentence vectors, and store_sentence_vectors "
                    f"(CHUNKLESS_STORE_SENTENCE_VECTORS)={store.store_sentence_vectors} asks otherwise; the setting "
                    "applies when a collection is created: ingest into a new collection (--collection NAME) or "
                    "leave the setting unset"
                )
            asked_sums = "store_sentence_sums" in store.model_fields_set
            if asked_sums and store.store_sentence_sums != (meta.sentence_sums is not None):
                had = "with" if meta.sentence_sums is not None else "without"
                raise StoreMismatchError(
                    f"{where} was created {had} sentence sums, and store_sentence_sums "
                    f"(CHUNKLESS_STORE_SENTENCE_SUMS)={store.store_sentence_sums} asks otherwise; the setting "
                    "applies when a collection is created: ingest into a new collection (--collection NAME) or "
                    "leave the setting unset"
                )
        except StoreMismatchError:
            backend.close()
            raise
        return TokenStore(backend, meta, store.segment_tokens)
    try:
        layout.stored_dim(dim)
    except ValueError as e:
        raise StoreMismatchError(f"collection '{store.collection}': {e}") from e
    from indexer.embedders.folder import canonical_name

    meta = CollectionMeta(
        model=canonical_name(model),
        dim=dim,
        pooling=pooling,
        layout=layout,
        created_at=time.time(),
        backend=model_backend or "hf-pooled",
        vector_kind=vector_kind or "pooled-hidden",
        sentence_vectors=store.store_sentence_vectors,
        rank_pool=store.rank_pool if layout.is_plain else 0,
        # only a pooled-hidden model's sentence scores are sums of rows (multivector models take maxima)
        sentence_sums=sentence_rule
        if store.store_sentence_sums and (vector_kind or "pooled-hidden") == "pooled-hidden"
        else None,
    )
    spaces = vector_spaces(dim, layout, meta.rank_pool)
    backend.create(
        spaces,
        {"chunkless": meta.model_dump(mode="json"), "spaces": {n: vars(s) for n, s in spaces.items()}},
        KEYWORD_FIELDS,
    )
    return TokenStore(backend, meta, store.segment_tokens)
