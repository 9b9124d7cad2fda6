"""POST /v1/search and /v1/search/batch: spans for queries, as `chunkless search --json` prints them."""

from __future__ import annotations

import time

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from retriever.serve.deps import BatcherDep, ReaderDep
from retriever.serve.errors import ApiError
from retriever.serve.models import API_VERSION, SearchBatchRequest, SearchRequest, SearchResult
from schemas.errors import QueryError
from schemas.query import check_query as shared_check
from schemas.settings import ServeSettings

router = APIRouter(prefix=f"/{API_VERSION}", tags=["search"])


@router.post("/search")
async def search(body: SearchRequest, service: ReaderDep, batcher: BatcherDep) -> SearchResult:
    """Spans for one query: what `chunkless search --json` prints, plus `timings_ms`."""
    cfg = service.settings.serve
    check_query(body.query, "query", cfg)
    t0 = time.perf_counter()
    try:
        if cfg.max_batch > 1:
            r = await batcher.search(body.query, body.top, body.filter_dict())
        else:
            r = await run_in_threadpool(service.retriever.search, body.query, body.top, body.filter_dict())
    except QueryError as e:  # what only the model can tell: a query with nothing it reads
        raise ApiError(422, "query", str(e)) from e
    r.timings_ms["total"] = (time.perf_counter() - t0) * 1e3
    return SearchResult.of(r)


@router.post("/search/batch")
async def search_batch(body: SearchBatchRequest, service: ReaderDep) -> list[SearchResult]:
    """One response per query, in order, from one `search_batch` call."""
    for i, q in enumerate(body.queries):
        check_query(q, f"queries.{i}", service.settings.serve)
    service.metrics.batch_size.observe(len(body.queries))
    try:
        rs = await run_in_threadpool(service.retriever.search_batch, body.queries, body.top, body.filter_dict())
    except QueryError as e:
        raise ApiError(422, "queries", str(e)) from e
    return [SearchResult.of(r) for r in rs]


def check_query(q: str, field: str, cfg: ServeSettings) -> None:
    """An ApiError naming `field` for an empty query or one over `max_query_chars` (the CLI's and SDK's check)."""
    try:
        shared_check(q, cfg.max_query_chars, field)
    except QueryError as e:
        raise ApiError(422, field, str(e)) from None
