"""Ingest jobs: queued, run one at a time against the service's one store, each with a report, one result per
file, and a record kept beside the store so a restarted service (or another replica) still lists them.

Where the record lives (`job_log`): for the embedded store, a JSON-lines file in the store folder
(`<store>/<collection>.jobs.jsonl`, one line per change, the last line per job wins, rewritten when it grows);
for a Qdrant server, a small collection `<collection>_jobs` (one point per job, the job in its payload), which
replicas behind one server share. A job is written when it is queued, starts, finishes each group of files and
ends, and at most every `HEARTBEAT_S` seconds while a large file embeds. A job left queued or running by a
process that stopped is `interrupted` when the next service opens the same embedded store (its uploads are
gone); on a server, a running job whose record has not moved for `STALE_S` seconds reads as interrupted.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from indexer.discover import discover
from indexer.ingest import ingest
from indexer.store import TokenStore
from retriever.serve.embedder import SerialEmbedder
from retriever.serve.models import FileResult, Job
from schemas.errors import ChunklessError, ShuttingDownError
from schemas.models import IngestReport
from schemas.settings import Settings

log = logging.getLogger(__name__)

KEEP_JOBS = 1000  # jobs remembered, in memory and in the record
HEARTBEAT_S = 5.0  # a running job's record is rewritten at least this often while it embeds
STALE_S = 600.0  # a running job whose record has not moved for this long: its service stopped
_STOP = object()


class JobLog(Protocol):
    """Where jobs are kept beyond the process: `save` every change, `load` them back, newest last.

    Attributes:
        shared: other processes (replicas) record their jobs here too, so listings read it back.
    """

    shared: bool

    def save(self, job: Job) -> None:
        """Record the job's current state (replacing what was recorded for its id)."""
        ...

    def load(self) -> list[Job]:
        """Every recorded job, oldest first (at most about `KEEP_JOBS`)."""
        ...

    def get(self, job_id: str) -> Job | None:
        """One recorded job (another replica's, or one from before a restart), or None."""
        ...

    def close(self) -> None:
        """Let go of what the record holds open (a client)."""
        ...


class FileJobLog:
    """Jobs as JSON lines in one file beside the embedded store's collection; the last line per id wins.

    Args:
        path: the file (created on the first save).
    """

    shared = False  # the embedded store admits one process

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._lines = 0

    def save(self, job: Job) -> None:
        line = job.model_dump_json() + "\n"
        with self._lock:
            try:
                with self.path.open("a", encoding="utf-8") as f:
                    f.write(line)
                self._lines += 1
                if self._lines > 4 * KEEP_JOBS:  # one line per change: fold to one line per job now and then
                    self._rewrite(self._read())
            except OSError as e:  # a full or read-only disk must not stop the job; only its record lags
                log.warning("cannot record job %s in %s (%s)", job.id, self.path, e)

    def load(self) -> list[Job]:
        with self._lock:
            jobs = self._read()
            self._lines = len(jobs)
        return list(jobs.values())

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._read().get(job_id)

    def close(self) -> None:
        pass  # nothing is held open between saves

    def _read(self) -> OrderedDict[str, Job]:
        jobs: OrderedDict[str, Job] = OrderedDict()
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return jobs
        except OSError as e:
            log.warning("cannot read the job record %s (%s); jobs before this start are not listed", self.path, e)
            return jobs
        for line in text.splitlines():
            try:
                job = Job.model_validate_json(line)
            except ValueError:
                continue  # a line cut short by a crash: the job's previous line stands
            jobs.pop(job.id, None)
            jobs[job.id] = job
        while len(jobs) > KEEP_JOBS:
            jobs.popitem(last=False)
        return jobs

    def _rewrite(self, jobs: OrderedDict[str, Job]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(j.model_dump_json() + "\n" for j in jobs.values()), encoding="utf-8")
        os.replace(tmp, self.path)
        self._lines = len(jobs)


class QdrantJobLog:
    """Jobs as points of a small Qdrant collection (one per job, no vectors to speak of), shared by replicas.

    Args:
        client: a qdrant-client `QdrantClient` (a server, or local mode in tests).
        collection: the jobs' collection, created when missing.
    """

    shared = True

    def __init__(self, client: Any, collection: str) -> None:
        from qdrant_client import models

        self.client, self.collection, self._models = client, collection, models
        if not client.collection_exists(collection):
            # one 1-d vector per point: some server versions want a vector; the payload is what matters
            client.create_collection(collection, vectors_config=models.VectorParams(size=1, distance="Dot"))

    @staticmethod
    def _point_id(job_id: str) -> str:
        return str(uuid.UUID(hex=job_id))

    def save(self, job: Job) -> None:
        point = self._models.PointStruct(id=self._point_id(job.id), vector=[1.0], payload=job.model_dump(mode="json"))
        try:
            self.client.upsert(self.collection, [point], wait=True)
        except Exception as e:  # an unreachable server must not stop the job; only its record lags
            log.warning("cannot record job %s in collection %s (%s)", job.id, self.collection, e)

    def load(self) -> list[Job]:
        out: list[Job] = []
        offset = None
        while True:
            recs, offset = self.client.scroll(self.collection, limit=256, offset=offset, with_payload=True)
            out += [Job.model_validate(r.payload) for r in recs if r.payload]
            if offset is None:
                break
        out.sort(key=lambda j: j.created_at)
        return out[-KEEP_JOBS:]

    def get(self, job_id: str) -> Job | None:
        try:
            recs = self.client.retrieve(self.collection, [self._point_id(job_id)], with_payload=True)
        except ValueError:
            return None
        return Job.model_validate(recs[0].payload) if recs and recs[0].payload else None

    def close(self) -> None:
        self.client.close()


def job_log(settings: Settings) -> JobLog:
    """The record for this service's store: a file beside the embedded store, a collection on a server."""
    s = settings.store
    if s.url is None:
        return FileJobLog(s.store_path / f"{s.collection}.jobs.jsonl")
    from indexer.store.server import LOCAL_PREFIX, make_client

    # qdrant-client's local mode lets one client per folder, and the store holds that one: jobs go beside it
    url = s.url + ".jobs" if s.url.startswith(LOCAL_PREFIX) else s.url
    return QdrantJobLog(make_client(s.model_copy(update={"url": url})), f"{s.collection}_jobs")


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
        embedder: the one model, shared with the `Retriever` (the service's `SerialEmbedder`, whose
            `on_embedded` moves a running job's `tokens_done` while a large file embeds).
        spool: folder where uploads wait for their job.
        on_tokens: called with the tokens each group stored (metrics).
        record: where jobs are kept beyond this process (`job_log`); None: in memory only.
        exclusive: this process alone runs jobs on the store (the embedded store's lock says so), so a job the
            record holds as queued or running was left by a process that stopped: it is marked interrupted.
    """

    def __init__(
        self,
        settings: Settings,
        store: TokenStore,
        embedder: SerialEmbedder,
        spool: Path,
        on_tokens: Callable[[int], None] | None = None,
        record: JobLog | None = None,
        exclusive: bool = True,
    ) -> None:
        self.settings = settings
        self.store = store
        self.embedder = embedder
        self.spool = spool
        self.write_lock = threading.Lock()
        self._on_tokens = on_tokens
        self._record = record
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._queue: queue.Queue[Any] = queue.Queue()
        self._stopping = threading.Event()
        self._saved_at = 0.0
        for job in record.load() if record is not None else []:
            if exclusive and job.state in ("queued", "running"):
                job.state = "interrupted"
                job.error = "the service stopped before this job finished; upload again"
                job.finished_at = job.updated_at = time.time()
                record.save(job)  # type: ignore[union-attr]
            self._jobs[job.id] = job
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
        results = [FileResult(input=d, doc_id=d) for d, _ in files]
        job = Job(id=job_id, inputs=[d for d, _ in files], files=results)
        return self._submit(job, groups, folder, [ids_root] * len(groups))

    def submit_paths(self, paths: list[Path]) -> Job:
        """Queue server-side files or folders (already checked to lie under the ingest roots).

        Doc ids are relative to the ingest root each path lies under (one group per root), so they do not
        depend on where the roots are mounted. The files are listed now (a walk, no reads), one result each.

        Raises:
            ShuttingDownError: the service is stopping.
        """
        by_root: dict[Path, list[Path]] = {}
        for p in paths:
            root = next(r.resolve() for r in self.settings.serve.ingest_roots if p.is_relative_to(r.resolve()))
            by_root.setdefault(root, []).append(p)
        results: list[FileResult] = []
        for root, group in by_root.items():
            found = discover(group, root)
            results += [FileResult(input=str(f.path), doc_id=f.doc_id) for f in found.files]
            results += [FileResult(input=x.path, state="failed", reason=x.reason) for x in found.failures]
        job = Job(id=uuid.uuid4().hex, inputs=[str(p) for p in paths], files=results)
        return self._submit(job, list(by_root.values()), None, list(by_root))

    def _submit(self, job: Job, groups: list[list[Path]], spool: Path | None, id_from: list[Path]) -> Job:
        if self._stopping.is_set():
            raise ShuttingDownError("the service is shutting down and takes no new jobs; retry on the next one")
        with self._lock:
            self._jobs[job.id] = job
            while len(self._jobs) > KEEP_JOBS:
                self._jobs.popitem(last=False)
        self._save(job)
        self._queue.put(_Work(job, groups, spool, id_from))
        return job.model_copy(deep=True)

    # --- reading ----------------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        """A snapshot of the job (this service's, or one the record holds: from before a restart, or
        another replica's), or None if unknown."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None:
                return job.model_copy(deep=True)
        found = self._record.get(job_id) if self._record is not None else None
        return None if found is None else _stale(found)

    def recent(self, limit: int = 100) -> list[Job]:
        """The most recent jobs first: this service's and, with a shared record, other replicas'."""
        with self._lock:
            mine = {j.id: j.model_copy(deep=True) for j in self._jobs.values()}
        if self._record is not None and self._record.shared:
            for j in self._record.load():  # other replicas' jobs; ours as we hold them
                mine.setdefault(j.id, _stale(j))
        return sorted(mine.values(), key=lambda j: j.created_at, reverse=True)[:limit]

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
        if self._record is not None and not self._worker.is_alive():
            self._record.close()

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
                    work.job,
                    state="cancelled",
                    error="the service stopped before this job started; upload again",
                    finished_at=time.time(),
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
        self.embedder.on_embedded = lambda n: self._progress(job, n)
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
                before = self._versions(job)
                with self.write_lock:
                    rep = ingest(group, self.settings, self.embedder, store=self.store, id_from=work.id_from[i])
                _merge(total, rep)
                if self._on_tokens is not None:
                    self._on_tokens(rep.tokens)
                self._set(
                    job,
                    files=self._results(job, group, work.id_from[i], before, rep),
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
        finally:
            self.embedder.on_embedded = None
        self._set(job, state=_outcome(job), error=_why(job), finished_at=time.time())

    def _progress(self, job: Job, tokens: int) -> None:
        """Tokens embedded (not yet stored) in the running job: `tokens_done` moves during a large file."""
        with self._lock:
            job.tokens_done += tokens
            job.updated_at = now = time.time()
            due = now - self._saved_at >= HEARTBEAT_S
        if due:
            self._save(job)

    def _versions(self, job: Job) -> dict[str, str]:
        """The stored version of each of the job's documents, before a group: unchanged vs stored after it."""
        heads = self.store.headers()
        return {f.doc_id: heads[f.doc_id].version for f in job.files if f.doc_id and f.doc_id in heads}

    def _results(
        self, job: Job, group: list[Path], id_from: Path, before: dict[str, str], rep: IngestReport
    ) -> list[FileResult]:
        """The job's per-file results once a group is ingested: stored, unchanged or failed (with the reason)."""
        failed = {x.path: x.reason for x in rep.failures}
        heads = self.store.headers()
        roots = [p.resolve() for p in group]
        out = []
        for f in job.files:
            if f.state != "pending":
                out.append(f)
                continue
            where = Path(f.input) if Path(f.input).is_absolute() else id_from / f.input
            if not any(where.resolve().is_relative_to(r) for r in roots):
                out.append(f)  # in a later group
                continue
            reason = failed.get(str(where)) or failed.get(str(where.resolve()))
            h = heads.get(f.doc_id or "")
            if reason is not None:
                # an upload's reason names the file as it was uploaded, not the server's spool folder
                reason = reason.replace(str(where), f.input)
                out.append(f.model_copy(update={"state": "failed", "reason": reason}))
            elif h is None:
                out.append(f.model_copy(update={"state": "failed", "reason": "not stored; see the job's report"}))
            elif before.get(h.doc_id) == h.version:
                out.append(f.model_copy(update={"state": "unchanged"}))
            else:
                out.append(f.model_copy(update={"state": "stored", "tokens": h.n_tokens}))
        return out

    def _set(self, job: Job, **changes: Any) -> None:
        with self._lock:
            for k, v in changes.items():
                setattr(job, k, v)
            job.updated_at = time.time()
        self._save(job)

    def _save(self, job: Job) -> None:
        if self._record is None:
            return
        with self._lock:
            snapshot = job.model_copy(deep=True)
            self._saved_at = time.time()
        self._record.save(snapshot)


def _outcome(job: Job) -> str:
    """done: nothing failed; failed: every file failed (or none was found); partial: some failed."""
    failed = sum(f.state == "failed" for f in job.files) + len(job.report.get("failures", [])) * (not job.files)
    if not job.files:
        return "failed" if failed or not job.report.get("documents") else "done"
    if failed == 0:
        return "done"
    return "failed" if failed == len(job.files) else "partial"


def _why(job: Job) -> str | None:
    failed = [f for f in job.files if f.state == "failed"]
    if not job.files:
        return "no supported file to ingest" if _outcome(job) == "failed" else None
    if not failed:
        return None
    first = f"{failed[0].input}: {failed[0].reason}"
    return first if len(job.files) == 1 else f"{len(failed)} of {len(job.files)} files failed; first: {first}"


def _stale(job: Job) -> Job:
    """A recorded running job whose record stopped moving: its service stopped."""
    if job.state == "running" and time.time() - job.updated_at > STALE_S:
        return job.model_copy(
            update={"state": "interrupted", "error": f"no progress for {STALE_S:.0f}s: its service stopped"}
        )
    return job


def _merge(total: IngestReport, rep: IngestReport) -> None:
    total.documents += rep.documents
    total.skipped_unchanged += rep.skipped_unchanged
    total.replaced += rep.replaced
    total.tokens += rep.tokens
    total.segments += rep.segments
    total.bytes_stored += rep.bytes_stored
    total.seconds += rep.seconds
    total.failures += rep.failures
