"""Ingest jobs: queued, run one at a time against the service's one store, each with a report."""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from indexer.embedders import TokenEmbedder
from indexer.ingest import ingest
from indexer.store import TokenStore
from retriever.serve.models import Job
from schemas.errors import ChunklessError, ShuttingDownError
from schemas.models import IngestReport
from schemas.settings import Settings

log = logging.getLogger(__name__)

KEEP_JOBS = 1000  # finished jobs remembered for GET /v1/jobs/{id}
_STOP = object()


class _Work:
    """A job's groups of paths to hand to `ingest` (with the folder doc_ids are relative to), and the
    folder to remove when done."""

    def __init__(self, job: Job, groups: list[list[Path]], spool: Path | None, id_from: list[Path]) -> None:
        self.job = job
        self.groups = groups
        self.spool = spool
        self.id_from = id_from  # per group


class JobQueue:
    """Runs ingest jobs in one worker thread, in submission order, on a shared store and model.

    Writes are serialised: jobs run one at a time, and `write_lock` is held while a group of files
    is ingested, so a delete (which takes it too) never interleaves with a document being written.
    A job is a list of groups (about one embedding batch of files each); `stop` lets the group being
    written finish, marks the job interrupted and cancels the queued ones. Because every document is
    written segments first, header last, a killed job leaves nothing visible half-written, and the
    next job (or the same upload again) sweeps the orphans.

    Args:
        settings: the service's settings.
        store: the one open store, shared with the `Retriever`.
        embedder: the one model, shared with the `Retriever` (a `SerialEmbedder`).
        spool: folder where uploads wait for their job.
        on_tokens: called with the tokens each group stored (metrics).
    """

    def __init__(
        self,
        settings: Settings,
        store: TokenStore,
        embedder: TokenEmbedder,
        spool: Path,
        on_tokens: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.embedder = embedder
        self.spool = spool
        self.write_lock = threading.Lock()
        self._on_tokens = on_tokens
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._queue: queue.Queue[Any] = queue.Queue()
        self._stopping = threading.Event()
        self._worker = threading.Thread(target=self._run, name="chunkless-jobs", daemon=True)
        self._worker.start()

    # --- submitting -------------------------------------------------------------------------------
    def new_upload_folder(self) -> tuple[str, Path]:
        """A fresh job id and the empty folder its uploads go into."""
        job_id = uuid.uuid4().hex
        folder = self.spool / job_id
        folder.mkdir(parents=True)
        return job_id, folder

    def submit_uploads(self, job_id: str, folder: Path, files: list[tuple[str, Path]]) -> Job:
        """Queue uploaded files already saved under `folder`.

        Args:
            job_id: from `new_upload_folder`.
            folder: from `new_upload_folder`.
            files: (doc_id, saved file) per file; each is saved at `folder/files/<doc_id>`, and ingested with
                doc_ids relative to `folder/files`, so it is stored under the doc_id it was uploaded with.

        Returns:
            The queued job.

        Raises:
            ShuttingDownError: the service is stopping.
        """
        budget = self.settings.model.batch_tokens * 4  # bytes of text per group: about one embedding batch
        groups: list[list[Path]] = []
        size = budget
        for _, path in files:
            n = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
            if size + n > budget:
                groups.append([])
                size = 0
            groups[-1].append(path)
            size += n
        ids_root = folder / "files"
        return self._submit(Job(id=job_id, inputs=[d for d, _ in files]), groups, folder, [ids_root] * len(groups))

    def submit_paths(self, paths: list[Path]) -> Job:
        """Queue server-side files or folders (already checked to lie under the ingest roots).

        Doc ids are relative to the ingest root each path lies under (one group per root), so they do not
        depend on where the roots are mounted.

        Raises:
            ShuttingDownError: the service is stopping.
        """
        by_root: dict[Path, list[Path]] = {}
        for p in paths:
            root = next(r.resolve() for r in self.settings.serve.ingest_roots if p.is_relative_to(r.resolve()))
            by_root.setdefault(root, []).append(p)
        job = Job(id=uuid.uuid4().hex, inputs=[str(p) for p in paths])
        return self._submit(job, list(by_root.values()), None, list(by_root))

    def _submit(self, job: Job, groups: list[list[Path]], spool: Path | None, id_from: list[Path]) -> Job:
        if self._stopping.is_set():
            raise ShuttingDownError("the service is shutting down and takes no new jobs; retry on the next one")
        with self._lock:
            self._jobs[job.id] = job
            while len(self._jobs) > KEEP_JOBS:
                self._jobs.popitem(last=False)
        self._queue.put(_Work(job, groups, spool, id_from))
        return job.model_copy()

    # --- reading ----------------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        """A snapshot of the job, or None if unknown."""
        with self._lock:
            job = self._jobs.get(job_id)
            return None if job is None else job.model_copy(deep=True)

    def depth(self) -> int:
        """Jobs queued or running."""
        with self._lock:
            return sum(j.state in ("queued", "running") for j in self._jobs.values())

    def alive(self) -> bool:
        """True while the worker can run jobs."""
        return self._worker.is_alive() and not self._stopping.is_set()

    # --- running ----------------------------------------------------------------------------------
    def stop(self, timeout: float | None = None) -> None:
        """Finish the group being written, mark that job interrupted, cancel the queued ones."""
        self._stopping.set()
        self._queue.put(_STOP)
        self._worker.join(timeout)

    def _run(self) -> None:
        while True:
            work = self._queue.get()
            if work is _STOP:
                break
            try:
                self._run_job(work)
            finally:
                if work.spool is not None:
                    shutil.rmtree(work.spool, ignore_errors=True)
        while not self._queue.empty():  # shutting down: what never started is cancelled
            work = self._queue.get_nowait()
            if work is not _STOP:
                self._set(
                    work.job, state="cancelled", error="the service stopped before this job started; upload again"
                )
                if work.spool is not None:
                    shutil.rmtree(work.spool, ignore_errors=True)

    def _run_job(self, work: _Work) -> None:
        job = work.job
        if self._stopping.is_set():
            self._set(job, state="cancelled", error="the service stopped before this job started; upload again")
            return
        self._set(job, state="running", started_at=time.time())
        total = IngestReport()
        try:
            for i, group in enumerate(work.groups):
                if self._stopping.is_set():
                    left = sum(len(g) for g in work.groups[i:])
                    self._set(
                        job,
                        state="interrupted",
                        error=f"the service stopped; {left} file(s) not ingested",
                        finished_at=time.time(),
                    )
                    return
                with self.write_lock:
                    rep = ingest(group, self.settings, self.embedder, store=self.store, id_from=work.id_from[i])
                _merge(total, rep)
                if self._on_tokens is not None:
                    self._on_tokens(rep.tokens)
                self._set(
                    job,
                    documents_done=total.documents + total.skipped_unchanged + len(total.failures),
                    tokens_done=total.tokens,
                    report=total.to_json_dict(),
                )
        except ChunklessError as e:  # the store or model broke: the job stops, what it stored stays
            self._set(job, state="failed", error=str(e), finished_at=time.time())
            return
        except Exception as e:
            log.exception("ingest job %s failed", job.id)
            self._set(job, state="failed", error=f"internal error ({type(e).__name__}: {e})", finished_at=time.time())
            return
        self._set(job, state="done", finished_at=time.time())

    def _set(self, job: Job, **changes: Any) -> None:
        with self._lock:
            for k, v in changes.items():
                setattr(job, k, v)


def _merge(total: IngestReport, rep: IngestReport) -> None:
    total.documents += rep.documents
    total.skipped_unchanged += rep.skipped_unchanged
    total.replaced += rep.replaced
    total.tokens += rep.tokens
    total.segments += rep.segments
    total.bytes_stored += rep.bytes_stored
    total.seconds += rep.seconds
    total.failures += rep.failures
