"""The HTTP API of `chunkless serve` (FastAPI): search, upload and jobs, documents, stats, health, metrics.

Every error a client can cause answers 4xx with one JSON body, ``{"detail": message, "field": name}``,
naming the field at fault and what to do; nothing a client sends reaches the store before it is
validated.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from indexer.loaders import SUPPORTED_SUFFIXES
from retriever.serve.auth import OPEN_PATHS, authorized
from retriever.serve.batcher import Filter, MicroBatcher
from retriever.serve.service import Service
from schemas.errors import ChunklessError, StorageFaultError, StoreBusyError
from schemas.models import SearchResponse

API_VERSION = "v1"
MAX_BATCH_QUERIES = 256
MAX_PAGE = 1000
UPLOAD_CHUNK = 1 << 20
# a doc id is a relative path of plain names: no '..', no leading '/', no drive, no control characters
_SEGMENT = r"[A-Za-z0-9_][A-Za-z0-9 _.,+=@()\[\]-]{0,199}"
DOC_ID_PATTERN = re.compile(rf"^{_SEGMENT}(/{_SEGMENT}){{0,15}}$")
JOB_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")

FilterField = Literal["doc_id", "source"]


class ApiError(Exception):
    """A request the service refuses: its status, the field at fault and what to do."""

    def __init__(self, status: int, field: str | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.field = field
        self.message = message


class SearchRequest(BaseModel):
    """Body of POST /v1/search."""

    model_config = ConfigDict(extra="forbid")

    query: str
    top: int | None = Field(None, ge=1, le=100)
    filter: dict[FilterField, str | list[str]] | None = None


class SearchBatchRequest(BaseModel):
    """Body of POST /v1/search/batch."""

    model_config = ConfigDict(extra="forbid")

    queries: list[str] = Field(min_length=1, max_length=MAX_BATCH_QUERIES)
    top: int | None = Field(None, ge=1, le=100)
    filter: dict[FilterField, str | list[str]] | None = None


def response_body(r: SearchResponse) -> dict[str, Any]:
    """What `chunkless search --json` prints, plus `timings_ms`."""
    body = {"query": r.query, "confidence": r.confidence, "abstained": r.abstained, "threshold": r.threshold}
    return body | {"spans": [s.model_dump() for s in r.spans], "timings_ms": r.timings_ms}


def check_doc_id(doc_id: str, field: str) -> str:
    """`doc_id` if it is a valid relative name; an ApiError naming `field` otherwise."""
    if not DOC_ID_PATTERN.match(doc_id) or len(doc_id) > 1024:
        raise ApiError(
            422,
            field,
            f"invalid doc id {doc_id[:100]!r}: use names of letters, digits and ' _.,+=@()[]-' joined by '/', "
            "not starting with '.' or '/'",
        )
    return doc_id


def create_app(service: Service, owns_service: bool = True) -> FastAPI:
    """The FastAPI app over an opened `Service`.

    Args:
        service: the store, model, retriever and job queue.
        owns_service: close the service when the app shuts down (False: the caller closes it).

    Returns:
        The app; OpenAPI docs at /docs.
    """
    cfg = service.settings.serve
    key = (cfg.api_key.get_secret_value() if cfg.api_key is not None else "") or None  # empty: no key set
    max_upload = cfg.max_upload_mb << 20
    batcher = MicroBatcher(
        service.retriever.search_batch, cfg.batch_wait_ms, cfg.max_batch, service.metrics.batch_size.observe
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            if owns_service:
                await run_in_threadpool(service.close)

    app = FastAPI(title="chunkless", version=API_VERSION, lifespan=lifespan)

    # --- cross-cutting: auth, upload size, metrics -------------------------------------------------
    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        t0 = time.perf_counter()
        path = request.url.path
        if path not in OPEN_PATHS and not authorized(request.headers, key):
            # before routing and before the body is read: a wrong key costs nothing else
            response: Response = _error(
                401, "authorization", "missing or wrong API key; send 'Authorization: Bearer KEY' or 'api-key: KEY'"
            )
            response.headers["WWW-Authenticate"] = "Bearer"
        elif (
            request.method == "POST"
            and path == f"/{API_VERSION}/documents"
            and (bad := _upload_size(request, max_upload))
        ):
            response = bad
        else:
            response = await call_next(request)
        route = request.scope.get("route")
        label = route.path if isinstance(route, Route) else "unmatched"  # a template: bounded label values
        service.metrics.observe_request(label, request.method, response.status_code, time.perf_counter() - t0)
        return response

    # --- errors: one JSON shape, never a 500 for bad input ------------------------------------------
    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> Response:
        return _error(e.status, e.field, e.message)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> Response:
        errs = e.errors()
        first: dict[str, Any] = dict(errs[0]) if errs else {"loc": (), "msg": "invalid request", "type": ""}
        loc = [str(x) for x in first.get("loc", ()) if x != "[key]"]  # a bad dict key: name the key itself
        if loc and loc[0] in ("body", "query", "path"):  # where the field was, not its name
            loc = loc[1:]
        field = ".".join(loc) or "body"
        if first.get("type") == "json_invalid":
            return _error(
                400,
                "body",
                f"malformed JSON ({first.get('ctx', {}).get('error', 'cannot parse')}); send one JSON object",
            )
        msg = f"{field}: {first.get('msg')}"
        if first.get("type") == "extra_forbidden" or (len(loc) >= 2 and loc[0] == "filter"):
            msg += "; allowed: query, top, filter (filter fields: doc_id, source)"
        return _error(422, field, msg)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> Response:
        return _error(e.status_code, None, str(e.detail))

    @app.exception_handler(ChunklessError)
    async def chunkless_error(request: Request, e: ChunklessError) -> Response:
        status = 503 if isinstance(e, StoreBusyError) else 507 if isinstance(e, StorageFaultError) else 400
        if status == 400 and "shutting down" in str(e):
            status = 503
        return _error(status, None, str(e))

    # --- search ------------------------------------------------------------------------------------
    def check_query(q: str, field: str) -> None:
        if not q.strip():
            raise ApiError(422, field, f"{field} is empty; send the question to search for")
        if len(q) > cfg.max_query_chars:
            raise ApiError(
                422, field, f"{field} is {len(q)} characters, over max_query_chars={cfg.max_query_chars}; shorten it"
            )

    @app.post(f"/{API_VERSION}/search")
    async def search(body: SearchRequest) -> dict[str, Any]:
        """Spans for one query: what `chunkless search --json` prints, plus `timings_ms`."""
        check_query(body.query, "query")
        flt: Filter | None = {str(k): v for k, v in body.filter.items()} if body.filter else None
        t0 = time.perf_counter()
        if cfg.max_batch > 1:
            r = await batcher.search(body.query, body.top, flt)
        else:
            r = await run_in_threadpool(service.retriever.search, body.query, body.top, flt)
        r.timings_ms["total"] = (time.perf_counter() - t0) * 1e3
        return response_body(r)

    @app.post(f"/{API_VERSION}/search/batch")
    async def search_batch(body: SearchBatchRequest) -> list[dict[str, Any]]:
        """One response per query, in order, from one `search_batch` call."""
        for i, q in enumerate(body.queries):
            check_query(q, f"queries.{i}")
        flt: Filter | None = {str(k): v for k, v in body.filter.items()} if body.filter else None
        service.metrics.batch_size.observe(len(body.queries))
        rs = await run_in_threadpool(service.retriever.search_batch, body.queries, body.top, flt)
        return [response_body(r) for r in rs]

    # --- documents and jobs -------------------------------------------------------------------------
    @app.post(f"/{API_VERSION}/documents", status_code=202)
    async def upload(request: Request) -> JSONResponse:
        """Queue an ingest job: multipart `files` (with optional `doc_id`, one per file, in order), or `path`
        fields naming server-side files/folders under CHUNKLESS_INGEST_ROOTS. Answers 202 with the job."""
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise ApiError(415, "body", "send multipart/form-data: 'files' (and optional 'doc_id') or 'path' fields")
        async with request.form(max_files=1000, max_fields=1000) as form:
            files = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
            if len(files) != len(form.getlist("files")):
                raise ApiError(422, "files", "'files' must be file parts (curl -F files=@FILE)")
            doc_ids = [str(d) for d in form.getlist("doc_id")]
            paths = [str(p) for p in form.getlist("path")]
            unknown = set(form.keys()) - {"files", "doc_id", "path"}
            if unknown:
                raise ApiError(
                    422, sorted(unknown)[0], f"unknown form field(s) {sorted(unknown)}; use files, doc_id, path"
                )
            if not files and not paths:
                raise ApiError(422, "files", "nothing to ingest: send 'files' parts or 'path' fields")
            if files and paths:
                raise ApiError(422, "path", "send either uploaded 'files' or server-side 'path' fields, not both")
            if paths:
                job = service.jobs.submit_paths([_under_roots(p, cfg.ingest_roots) for p in paths])
            else:
                job = await _save_uploads(files, doc_ids)
        return JSONResponse(job.model_dump(), status_code=202, headers={"Location": f"/{API_VERSION}/jobs/{job.id}"})

    async def _save_uploads(files: list[UploadFile], doc_ids: list[str]) -> Any:
        if doc_ids and len(doc_ids) != len(files):
            raise ApiError(
                422, "doc_id", f"{len(doc_ids)} doc_id field(s) for {len(files)} file(s); give one per file or none"
            )
        names = doc_ids or [PurePosixPath((f.filename or "").replace("\\", "/")).name for f in files]
        for i, name in enumerate(names):
            field = "doc_id" if doc_ids else "files"
            check_doc_id(name, f"{field}.{i}")
            if PurePosixPath(name).suffix.lower() not in SUPPORTED_SUFFIXES:
                raise ApiError(
                    422,
                    f"{field}.{i}",
                    f"{name!r}: chunkless reads {sorted(SUPPORTED_SUFFIXES)}; name the file by its type",
                )
        if len(set(names)) != len(names):
            raise ApiError(422, "doc_id" if doc_ids else "files", "two files in one upload share a doc id; rename one")
        job_id, folder = service.jobs.new_upload_folder()
        try:
            total = 0
            items = []
            for f, name in zip(files, names, strict=True):
                # the file's own name is never a path: it is stored under a validated doc id in a fresh folder
                target = folder / "files" / name
                target.parent.mkdir(parents=True, exist_ok=True)
                with target.open("wb") as out:
                    while chunk := await f.read(UPLOAD_CHUNK):
                        total += len(chunk)
                        if total > max_upload:
                            raise ApiError(
                                413,
                                "files",
                                f"upload over max_upload_mb={cfg.max_upload_mb}; send fewer or smaller files",
                            )
                        out.write(chunk)
                items.append((name, target))
            return service.jobs.submit_uploads(job_id, folder, items)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    @app.get(f"/{API_VERSION}/jobs/{{job_id}}")
    async def job(job_id: str) -> dict[str, Any]:
        """State, documents and tokens done, and the ingest report (failures with reasons)."""
        found = service.jobs.get(job_id) if JOB_ID_PATTERN.match(job_id) else None
        if found is None:
            raise ApiError(404, "job_id", f"no job {job_id[:64]!r}; jobs are kept in memory until the service restarts")
        return found.model_dump()

    @app.delete(f"/{API_VERSION}/documents/{{doc_id:path}}")
    async def delete(doc_id: str) -> dict[str, Any]:
        """Remove one document (waits for the document group an ingest job is writing)."""
        check_doc_id(doc_id, "doc_id")

        def run() -> bool:
            with service.jobs.write_lock:
                return service.store.delete_document(doc_id)

        if not await run_in_threadpool(run):
            raise ApiError(404, "doc_id", f"no document {doc_id!r} in the collection; see GET /v1/documents")
        return {"deleted": doc_id}

    @app.get(f"/{API_VERSION}/documents")
    async def documents(
        offset: Annotated[int, Query(ge=0)] = 0, limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100
    ) -> dict[str, Any]:
        """Live documents by doc id, one page."""
        heads = await run_in_threadpool(service.store.headers)
        ids = sorted(heads)
        page = [
            {
                "doc_id": d,
                "source": heads[d].source,
                "title": heads[d].title,
                "n_tokens": heads[d].n_tokens,
                "pages": len(heads[d].page_starts),
                "version": heads[d].version,
            }
            for d in ids[offset : offset + limit]
        ]
        return {"total": len(ids), "offset": offset, "limit": limit, "documents": page}

    @app.get(f"/{API_VERSION}/stats")
    async def stats() -> dict[str, Any]:
        """What `chunkless stats --json` prints."""
        return await run_in_threadpool(service.store.stats)

    # --- operations ----------------------------------------------------------------------------------
    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        """Model loaded, store open, job worker running."""
        if service.ready():
            return JSONResponse({"status": "ready"})
        return _error(503, None, "not ready: the service is stopping")

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus text format."""
        return Response(service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


def _error(status: int, field: str | None, message: str) -> JSONResponse:
    return JSONResponse({"detail": message, "field": field}, status_code=status)


def _upload_size(request: Request, limit: int) -> Response | None:
    """413 when the declared body is over the limit, 411 when it declares none (the body is never read)."""
    length = request.headers.get("content-length")
    if length is None:
        return _error(411, "content-length", "send Content-Length with uploads (curl and httpx do)")
    if not length.isdigit():
        return _error(400, "content-length", "Content-Length must be a number of bytes")
    if int(length) > limit + (1 << 20):  # multipart framing on top of the files' bytes
        return _error(
            413,
            "files",
            f"upload of {int(length)} bytes is over max_upload_mb={limit >> 20}; send fewer or smaller files",
        )
    return None


def _under_roots(given: str, roots: list[Path]) -> Path:
    """The resolved server-side path if it lies under a configured ingest root; ApiError otherwise."""
    if not roots:
        raise ApiError(403, "path", "server-side ingest is off; set CHUNKLESS_INGEST_ROOTS or upload 'files'")
    p = Path(given).resolve()
    if not any(p.is_relative_to(r.resolve()) for r in roots):
        raise ApiError(403, "path", f"{given!r} is not under CHUNKLESS_INGEST_ROOTS; ingest only from there")
    if not p.exists():
        raise ApiError(422, "path", f"{given!r} does not exist on the server")
    return p
