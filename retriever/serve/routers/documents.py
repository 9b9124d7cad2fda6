"""Documents: upload or name files to ingest (a job), list, delete, and the store's stats.

Nothing a client sends reaches the store before it is checked: a doc id is a relative name of plain
parts, an uploaded file's own name is never used as a path, and server-side paths must lie under
CHUNKLESS_INGEST_ROOTS.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from starlette.datastructures import UploadFile

from indexer.admit import SUPPORTED_SUFFIXES
from retriever.serve.deps import ReaderDep, ServiceDep, UploadLimit
from retriever.serve.errors import ApiError
from retriever.serve.models import API_VERSION, Deleted, DocumentInfo, DocumentsPage, Job
from retriever.serve.service import Service

MAX_PAGE = 1000
UPLOAD_CHUNK = 1 << 20
# a doc id is a relative path of plain names: no '..', no leading '/', no drive, no control characters
_SEGMENT = r"[A-Za-z0-9_][A-Za-z0-9 _.,+=@()\[\]-]{0,199}"
DOC_ID_PATTERN = re.compile(rf"^{_SEGMENT}(/{_SEGMENT}){{0,15}}$")

router = APIRouter(prefix=f"/{API_VERSION}", tags=["documents"])
# the list and stats: also what a store's holder answers other processes (app.create_read_app)
read_router = APIRouter(prefix=f"/{API_VERSION}", tags=["documents"])


@router.post("/documents", status_code=202)
async def upload(request: Request, response: Response, service: ServiceDep, max_bytes: UploadLimit) -> Job:
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
            raise ApiError(422, sorted(unknown)[0], f"unknown form field(s) {sorted(unknown)}; use files, doc_id, path")
        if not files and not paths:
            raise ApiError(422, "files", "nothing to ingest: send 'files' parts or 'path' fields")
        if files and paths:
            raise ApiError(422, "path", "send either uploaded 'files' or server-side 'path' fields, not both")
        if paths:
            roots = service.settings.serve.ingest_roots
            job = service.jobs.submit_paths([under_roots(p, roots) for p in paths])
        else:
            job = await save_uploads(service, files, doc_ids, max_bytes)
    response.headers["Location"] = str(request.app.url_path_for("job", job_id=job.id))  # routers/jobs.py
    return job


@read_router.get("/documents")
async def documents(
    service: ReaderDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> DocumentsPage:
    """Live documents by doc id, one page."""
    heads = await run_in_threadpool(service.store.headers)
    ids = sorted(heads)
    page = [DocumentInfo.of(heads[d]) for d in ids[offset : offset + limit]]
    return DocumentsPage(total=len(ids), offset=offset, limit=limit, documents=page)


@router.delete("/documents/{doc_id:path}")
async def delete(doc_id: str, service: ServiceDep) -> Deleted:
    """Remove one document (waits for the document group an ingest job is writing)."""
    check_doc_id(doc_id, "doc_id")

    def run() -> bool:
        with service.jobs.write_lock:
            return service.store.delete_document(doc_id)

    if not await run_in_threadpool(run):
        raise ApiError(404, "doc_id", f"no document {doc_id!r} in the collection; see GET /v1/documents")
    return Deleted(deleted=doc_id)


@read_router.get("/stats")
async def stats(service: ReaderDep) -> dict[str, Any]:
    """What `chunkless stats --json` prints."""
    return await run_in_threadpool(service.store.stats)


# --- checks and saving ---------------------------------------------------------------------------------
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


def under_roots(given: str, roots: list[Path]) -> Path:
    """The resolved server-side path if it lies under a configured ingest root; ApiError otherwise."""
    if not roots:
        raise ApiError(403, "path", "server-side ingest is off; set CHUNKLESS_INGEST_ROOTS or upload 'files'")
    p = Path(given).resolve()
    if not any(p.is_relative_to(r.resolve()) for r in roots):
        raise ApiError(403, "path", f"{given!r} is not under CHUNKLESS_INGEST_ROOTS; ingest only from there")
    if not p.exists():
        raise ApiError(422, "path", f"{given!r} does not exist on the server")
    return p


async def save_uploads(service: Service, files: list[UploadFile], doc_ids: list[str], max_bytes: int) -> Job:
    """Check the uploads' names, save them in a fresh spool folder under their doc ids, queue the job.

    Raises:
        ApiError: a bad or repeated doc id, an unsupported type, or more than `max_bytes` in all (the
            folder is removed).
    """
    if doc_ids and len(doc_ids) != len(files):
        raise ApiError(
            422, "doc_id", f"{len(doc_ids)} doc_id field(s) for {len(files)} file(s); give one per file or none"
        )
    names = doc_ids or [PurePosixPath((f.filename or "").replace("\\", "/")).name for f in files]
    field = "doc_id" if doc_ids else "files"
    for i, name in enumerate(names):
        check_doc_id(name, f"{field}.{i}")
        if PurePosixPath(name).suffix.lower() not in SUPPORTED_SUFFIXES:
            raise ApiError(
                422,
                f"{field}.{i}",
                f"{name!r}: chunkless reads {sorted(SUPPORTED_SUFFIXES)}; name the file by its type",
            )
    if len(set(names)) != len(names):
        raise ApiError(422, field, "two files in one upload share a doc id; rename one")
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
                    if total > max_bytes:
                        raise ApiError(
                            413,
                            "files",
                            f"upload over max_upload_mb={max_bytes >> 20}; send fewer or smaller files",
                        )
                    out.write(chunk)
            items.append((name, target))
        return service.jobs.submit_uploads(job_id, folder, items)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
