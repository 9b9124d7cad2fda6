"""The HTTP API of `chunkless serve` (FastAPI): search, upload and jobs, documents, stats, health, metrics.

`create_app` (the whole API, over a `Service`) and `create_read_app` (its read routes, over a
`ReadService`: what a store's holder answers other processes, `retriever.serve.holder`) only wire:
the routers (`retriever.serve.routers`: search, documents, jobs, ops), the middleware and dependencies
(`retriever.serve.deps`: the API key, request metrics, the service), the exception handlers
(`retriever.serve.errors`: one JSON body, ``{"detail": message, "field": name}``, with the status from
the error) and the lifespan (the micro-batcher runs while the app does; the service is closed after it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.middleware.base import BaseHTTPMiddleware

from retriever.serve import deps, errors
from retriever.serve.batcher import MicroBatcher
from retriever.serve.models import API_VERSION
from retriever.serve.routers import documents, jobs, ops, search
from retriever.serve.service import ReadService, Service
from schemas.errors import ChunklessError

ALL_ROUTERS = (search.router, documents.read_router, documents.router, jobs.router, ops.router)
READ_ROUTERS = (search.router, documents.read_router, ops.router)


def create_app(service: Service, owns_service: bool = True) -> FastAPI:
    """The FastAPI app over an opened `Service`.

    Args:
        service: the store, model, retriever and job queue.
        owns_service: close the service when the app shuts down (False: the caller closes it).

    Returns:
        The app; OpenAPI docs at /docs.
    """
    return _wire(service, owns_service, ALL_ROUTERS)


def create_read_app(reader: ReadService) -> FastAPI:
    """The read routes only (search, the document list, stats, health, metrics) over a `ReadService`.

    What the process holding a store answers other processes (`retriever.serve.holder`); the reader
    is left open when the app stops (its store belongs to the holder).
    """
    return _wire(reader, False, READ_ROUTERS)


def _wire(service: ReadService, owns_service: bool, routers: tuple[APIRouter, ...]) -> FastAPI:
    app = FastAPI(title="chunkless", version=API_VERSION, lifespan=lifespan)
    cfg = service.settings.serve
    app.state.service = service
    app.state.owns_service = owns_service
    # the service's method, not the retriever's: a holder makes its retriever (and loads the model) at the first search
    app.state.batcher = MicroBatcher(
        service.search_batch, cfg.batch_wait_ms, cfg.max_batch, service.metrics.batch_size.observe
    )

    # each router carries its own prefix, so a route's template (the metrics' label) is its whole path
    for router in routers:
        app.include_router(router)

    # the last added runs first: metrics see every answer, including the key check's 401s
    app.add_middleware(BaseHTTPMiddleware, dispatch=deps.require_api_key)
    app.add_middleware(BaseHTTPMiddleware, dispatch=deps.observe_request)

    app.exception_handler(errors.ApiError)(errors.on_api_error)
    app.exception_handler(ChunklessError)(errors.on_chunkless_error)
    app.exception_handler(RequestValidationError)(errors.on_invalid_request)
    app.exception_handler(HTTPException)(errors.on_http_error)
    return app


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Run the micro-batcher while the app serves; then stop it (queued searches get 503) and close the service."""
    batcher: MicroBatcher = app.state.batcher
    batcher.start()
    try:
        yield
    finally:
        await batcher.stop()
        if app.state.owns_service:
            service: ReadService = app.state.service
            await run_in_threadpool(service.close)
