"""What the service's routes take and answer: the request and response bodies, as pydantic models.

These are the API's contract (and its OpenAPI schema at /docs); the routes in `retriever.serve.routers`
only validate, call the `Service` and return one of these. Errors have one shape of their own,
``{"detail": message, "field": name}`` (`retriever.serve.errors`).
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from indexer.store import DocHeader
from schemas.models import IngestReport, SearchResponse, SpanResult

API_VERSION = "v1"  # the prefix of every route but the operations' (/healthz, /readyz, /metrics)
MAX_BATCH_QUERIES = 256
MAX_TOP = 100

FilterField = Literal["doc_id", "source"]
Filter = dict[str, str | list[str]]


# --- search ----------------------------------------------------------------------------------------
class SearchRequest(BaseModel):
    """Body of POST /v1/search."""

    model_config = ConfigDict(extra="forbid")

    query: str
    top: int | None = Field(None, ge=1, le=MAX_TOP)
    filter: dict[FilterField, str | list[str]] | None = None

    def filter_dict(self) -> Filter | None:
        """The filter as `Retriever.search` takes it."""
        return _filter(self.filter)


class SearchBatchRequest(BaseModel):
    """Body of POST /v1/search/batch."""

    model_config = ConfigDict(extra="forbid")

    queries: list[str] = Field(min_length=1, max_length=MAX_BATCH_QUERIES)
    top: int | None = Field(None, ge=1, le=MAX_TOP)
    filter: dict[FilterField, str | list[str]] | None = None

    def filter_dict(self) -> Filter | None:
        """The filter as `Retriever.search_batch` takes it."""
        return _filter(self.filter)


def _filter(given: dict[FilterField, str | list[str]] | None) -> Filter | None:
    return {str(k): v for k, v in given.items()} if given else None


class SearchResult(BaseModel):
    """One query's answer: what `chunkless search --json` prints, plus `timings_ms`."""

    query: str
    confidence: float | None = Field(description="Probability that the top span answers (None: not computed).")
    abstained: bool = Field(description="The confidence was below `threshold`: the spans were withheld.")
    threshold: float | None = Field(description="The abstention threshold in force (None: never abstains).")
    spans: list[SpanResult]
    timings_ms: dict[str, float]

    @classmethod
    def of(cls, r: SearchResponse) -> SearchResult:
        """The answer for a `Retriever` response (its `timings_ms` are excluded from its own dump)."""
        return cls(
            query=r.query,
            confidence=r.confidence,
            abstained=r.abstained,
            threshold=r.threshold,
            spans=r.spans,
            timings_ms=r.timings_ms,
        )


# --- documents and jobs ----------------------------------------------------------------------------
class DocumentInfo(BaseModel):
    """One live document in GET /v1/documents."""

    doc_id: str
    source: str
    title: str
    n_tokens: int
    pages: int
    version: str = Field(description="Content hash of the stored version.")
    ingested_at: float | None = Field(
        None, description="When it was stored (Unix seconds); null for a document stored before this was recorded."
    )

    @classmethod
    def of(cls, h: DocHeader) -> DocumentInfo:
        """The listing entry for a stored document's header."""
        return cls(
            doc_id=h.doc_id,
            source=h.source,
            title=h.title,
            n_tokens=h.n_tokens,
            pages=len(h.page_starts),
            version=h.version,
            ingested_at=h.ingested_at or None,
        )


class DocumentsPage(BaseModel):
    """GET /v1/documents: one page of live documents, by doc id."""

    total: int
    offset: int
    limit: int
    documents: list[DocumentInfo]


class Deleted(BaseModel):
    """DELETE /v1/documents/{doc_id}."""

    deleted: str


JobStateName = Literal["queued", "running", "done", "failed", "partial", "interrupted", "cancelled"]
FileStateName = Literal["pending", "stored", "unchanged", "failed"]


class FileResult(BaseModel):
    """One file of a job: what happened to it."""

    input: str = Field(description="The uploaded file's doc id, or the server-side file's path.")
    doc_id: str | None = Field(None, description="The doc id it is stored under (None: it never got one).")
    state: FileStateName = "pending"
    tokens: int = Field(0, description="Tokens stored for it (0 when unchanged or failed).")
    reason: str | None = Field(None, description="Why it failed.")


class Job(BaseModel):
    """What GET /v1/jobs/{id} answers: state, progress, one result per file and the same report as
    `chunkless ingest --report`.

    States: queued, running, then done (every file stored or unchanged), partial (some files failed),
    failed (every file failed, or the job stopped on a store or model error), interrupted (the service
    stopped while it ran: upload again) or cancelled (the service stopped before it started).
    """

    id: str
    state: JobStateName = "queued"
    inputs: list[str] = Field(description="Doc ids of uploaded files, or the server-side paths to ingest.")
    files: list[FileResult] = Field(default_factory=list, description="One result per file, in order.")
    documents_done: int = Field(0, description="Files finished so far: stored, unchanged or failed.")
    tokens_done: int = Field(
        0, description="Tokens embedded so far; moves while a large file is embedded, exact once its group is stored."
    )
    report: dict[str, Any] = Field(default_factory=lambda: IngestReport().to_json_dict())
    error: str | None = Field(None, description="Why the job stopped early or failed.")
    created_at: float = Field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float = Field(default_factory=time.time, description="Last change (a running job's heartbeat).")


class JobsPage(BaseModel):
    """GET /v1/jobs: the most recent jobs first (kept beside the store, so they outlive a restart)."""

    jobs: list[Job]


# --- operations ------------------------------------------------------------------------------------
class Status(BaseModel):
    """/healthz and /readyz when the answer is yes."""

    status: Literal["ok", "ready"]
