"""GET /v1/jobs and /v1/jobs/{job_id}: ingest jobs' state, progress, per-file results and report."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool

from retriever.serve.deps import ServiceDep
from retriever.serve.errors import ApiError
from retriever.serve.models import API_VERSION, Job, JobsPage

JOB_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")

router = APIRouter(prefix=f"/{API_VERSION}", tags=["jobs"])


@router.get("/jobs")
async def jobs(service: ServiceDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> JobsPage:
    """The most recent jobs first, from before a restart too (they are kept beside the store)."""
    return JobsPage(jobs=await run_in_threadpool(service.jobs.recent, limit))


@router.get("/jobs/{job_id}", responses={404: {"description": "No such job."}})
async def job(job_id: str, service: ServiceDep) -> Job:
    """State, documents and tokens done, one result per file, and the ingest report (failures with reasons)."""
    found = await run_in_threadpool(service.jobs.get, job_id) if JOB_ID_PATTERN.match(job_id) else None
    if found is None:
        raise ApiError(404, "job_id", f"no job {job_id[:64]!r}; the last 1000 jobs are kept; see GET /v1/jobs")
    return found
