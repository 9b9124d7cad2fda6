"""What every route depends on: the `Service`, the micro-batcher, the API key and the upload size limit.

The service and batcher live on ``app.state`` (set by `create_app`); routes ask for them with
`ServiceDep` / `BatcherDep` rather than closing over them, so a router is a plain module.

The API key and the request metrics are middleware, not dependencies, on purpose: the key is checked
before routing and before a byte of the body is read (FastAPI reads and parses a JSON body before a
route's dependencies run, so a dependency would let an anonymous client make the service parse a large
body, and learn from a 422 which fields exist), and the metrics see every answer, the 401s included.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Annotated, cast

from fastapi import Depends, Request
from fastapi.responses import Response
from starlette.routing import Route

from retriever.serve.auth import OPEN_PATHS, authorized
from retriever.serve.batcher import MicroBatcher
from retriever.serve.errors import ApiError, error_response
from retriever.serve.service import ReadService, Service

CallNext = Callable[[Request], Awaitable[Response]]
MULTIPART_SLACK = 1 << 20  # multipart framing on top of the files' bytes


def get_service(request: Request) -> Service:
    """The one `Service` of this app (store, model, retriever, job queue); only the write routes, which
    `create_read_app` leaves out, ask for it."""
    return cast(Service, request.app.state.service)


def get_reader(request: Request) -> ReadService:
    """The app's service as the read routes see it (a `Service`, or a holder's `ReadService`)."""
    return cast(ReadService, request.app.state.service)


def get_batcher(request: Request) -> MicroBatcher:
    """The micro-batcher that gathers single searches into `search_batch` calls."""
    return cast(MicroBatcher, request.app.state.batcher)


ServiceDep = Annotated[Service, Depends(get_service)]
ReaderDep = Annotated[ReadService, Depends(get_reader)]
BatcherDep = Annotated[MicroBatcher, Depends(get_batcher)]


def service_key(service: ReadService) -> str | None:
    """The key requests must carry, None for an open service (an empty CHUNKLESS_SERVICE_API_KEY is none)."""
    key = service.settings.serve.service_api_key
    return (key.get_secret_value() if key is not None else "") or None


async def require_api_key(request: Request, call_next: CallNext) -> Response:
    """Middleware: 401 for a request without the service's key (every path but /healthz)."""
    if request.url.path in OPEN_PATHS or authorized(request.headers, service_key(get_reader(request))):
        return await call_next(request)
    response = error_response(
        401, "authorization", "missing or wrong API key; send 'Authorization: Bearer KEY' or 'api-key: KEY'"
    )
    response.headers["WWW-Authenticate"] = "Bearer"
    return response


async def observe_request(request: Request, call_next: CallNext) -> Response:
    """Middleware: count and time every request by its route template and status."""
    t0 = time.perf_counter()
    response = await call_next(request)
    route = request.scope.get("route")
    label = route.path if isinstance(route, Route) else "unmatched"  # a template: bounded label values
    get_reader(request).metrics.observe_request(label, request.method, response.status_code, time.perf_counter() - t0)
    return response


def upload_limit(request: Request, service: ServiceDep) -> int:
    """The most bytes one upload may hold; refuses, before the body is read, one that declares more.

    Raises:
        ApiError: 411 without Content-Length, 400 when it is not a number, 413 when it is over the limit.
    """
    limit = service.settings.serve.max_upload_mb << 20
    length = request.headers.get("content-length")
    if length is None:
        raise ApiError(411, "content-length", "send Content-Length with uploads (curl and httpx do)")
    if not length.isdigit():
        raise ApiError(400, "content-length", "Content-Length must be a number of bytes")
    if int(length) > limit + MULTIPART_SLACK:
        raise ApiError(
            413,
            "files",
            f"upload of {int(length)} bytes is over max_upload_mb={limit >> 20}; send fewer or smaller files",
        )
    return limit


UploadLimit = Annotated[int, Depends(upload_limit)]
