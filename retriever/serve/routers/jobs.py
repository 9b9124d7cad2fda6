"""GET /v1/jobs/{job_id}: an ingest job's state, progress and report."""

from __future__ import annotations

import re

from fastapi import APIRouter

from retriever.serve.deps import ServiceDep
from retriever.serve.errors import ApiError
from retriever.serve.models import API_VERSION, Job

JOB_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")

router = APIRouter(prefix=f"/{API_VERSION}", tags=["jobs"])


@router.get("/jobs/{job_id}")
async def job(job_id: str, service: ServiceDep) -> Job:
    """State, documents and tokens done, and the ingest report (failures with reasons)."""
    found = service.jobs.get(job_id) if JOB_ID_PATTERN.match(job_id) else None
    if found is None:
        raise ApiError(404, "job_id", f"no job {job_id[:64]!r}; jobs are kept in memory until the service restarts")
    return found
