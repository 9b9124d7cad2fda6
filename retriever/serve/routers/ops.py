"""/healthz, /readyz and /metrics: what load balancers, orchestrators and Prometheus ask."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from retriever.serve.deps import ReaderDep
from retriever.serve.errors import ApiError
from retriever.serve.models import Status

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> Status:
    """The process is up (open without the API key: a liveness probe carries none)."""
    return Status(status="ok")


@router.get("/readyz", responses={503: {"description": "The service is stopping."}})
async def readyz(service: ReaderDep) -> Status:
    """Model loaded, store open, job worker running."""
    if not service.ready():
        raise ApiError(503, None, "not ready: the service is stopping")
    return Status(status="ready")


@router.get("/metrics", response_class=Response)
async def metrics(service: ReaderDep) -> Response:
    """Prometheus text format."""
    return Response(service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
