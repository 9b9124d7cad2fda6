"""The token store: documents as token multivectors in one Qdrant collection (Edge or a server).

Public API (import from `indexer.store`):

- `open_store(settings.store)`, `open_or_create_store(settings.store, model, dim, pooling)` -> `TokenStore`
- `TokenStore`: write_document, delete_document, remove_orphans, headers, header, recall, maxsim,
  rank_segments, fetch_segments, segment_texts, stats, compact, fit_codec, flush, close
- `DocHeader` (one document), `CollectionMeta` (the collection), `check_embedder` (whether a model's
  vectors fit a collection), `Candidate`, `StoredSegment`, `Written`, `CompactReport`,
  `WriteTarget` (a collection's layout and segment rows, for embedding away from the store)
- `PointsBackend` (the documented backend contract), `EdgeBackend`, `make_backend`;
  `indexer.store.server.ServerBackend` (imported on demand: qdrant-client is only needed for a server)
- `Where`, `Match` (backend-neutral filters), `NewPoint`, `PointRecord`, `VectorSpace`, `to_array`
"""

from indexer.store.backend import Match, NewPoint, PointRecord, PointsBackend, VectorSpace, Where, to_array
from indexer.store.documents import (
    COMPACT_AFTER_FRACTION,
    KEYWORD_FIELDS,
    Candidate,
    CompactReport,
    StoredSegment,
    TokenStore,
    WriteTarget,
    Written,
    make_backend,
    open_or_create_store,
    open_store,
    vector_spaces,
)
from indexer.store.edge import EdgeBackend
from indexer.store.meta import CollectionMeta, DocHeader, check_embedder
from indexer.store.segments import POINT_NAMESPACE, header_id, max_segment_tokens, segment_id, split_segments

__all__ = [
    "COMPACT_AFTER_FRACTION",
    "KEYWORD_FIELDS",
    "POINT_NAMESPACE",
    "Candidate",
    "CollectionMeta",
    "CompactReport",
    "DocHeader",
    "EdgeBackend",
    "Match",
    "NewPoint",
    "PointRecord",
    "PointsBackend",
    "StoredSegment",
    "TokenStore",
    "VectorSpace",
    "Where",
    "WriteTarget",
    "Written",
    "check_embedder",
    "header_id",
    "make_backend",
    "max_segment_tokens",
    "open_or_create_store",
    "open_store",
    "segment_id",
    "split_segments",
    "to_array",
    "vector_spaces",
]
