"""Routing: a command through a running chunkless service, or through the process that holds the store.

With `--server` (or CHUNKLESS_SERVER), search, ingest, list, stats and delete call that service instead
of opening the store, and print what the local command prints.

Without it, the reads (search, list, stats) on an embedded store first look for the advert of a
process that holds the store and serves its reads (`indexer.holder`: a running `chunkless ingest` or
`chunkless serve`) and ask it; this costs a file read, and such a search imports neither torch nor the
search engine nor a model. With no advert they open the store; if another process took it meanwhile
and advertises, they ask it after all. A holder that has gone (its advert left by a SIGKILL, its pid
reused) is passed over; one that is there but does not answer (stopped with Ctrl-Z) is named, exit 4.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from indexer.holder import Advert, read_advert
from retriever.cli.flags import settings_of
from retriever.cli.printing import print_documents, print_search, print_stats
from schemas.errors import EXIT_FILES_FAILED, ChunklessError, SettingsError, StoreBusyError
from schemas.query import check_query
from schemas.settings import ServeSettings

if TYPE_CHECKING:
    from retriever.serve.client import RemoteRetriever

Command = Callable[[argparse.Namespace], int]
PAGE = 1000  # documents per request of a remote list (the service's most)
PROBE_S = 10.0  # how long a store's advertised holder may take to answer /healthz


def routable(p: argparse.ArgumentParser, local: Command, remote: Command, reads: bool = False) -> None:
    """Give command parser `p` a `--server` flag: `remote` runs when a service is named, `local` otherwise.

    With `reads`, a command on an embedded store held by another process runs `remote` against that
    process when it advertises reads (see the module docstring) instead of failing on the store's lock.
    """
    p.add_argument("--server", help="go through a running chunkless service at this URL (CHUNKLESS_SERVER)")
    p.set_defaults(holder=None)

    def run(args: argparse.Namespace) -> int:
        if args.server is None:
            args.server = ServeSettings().server
        if args.server:
            return remote(args)
        return _local_or_holder(args, local, remote) if reads else local(args)

    p.set_defaults(func=run)


def _local_or_holder(args: argparse.Namespace, local: Command, remote: Command) -> int:
    """`remote` against the store's advertised holder if one answers, else `local` (see the module docstring)."""
    store = settings_of(args).store
    if store.url is not None:  # a Qdrant server takes any number of clients
        return local(args)
    advert = read_advert(store.collection_path)
    if advert is not None and _answers(advert, store.collection_path):
        return _ask(args, advert, remote)
    try:
        return local(args)
    except StoreBusyError:
        advert = read_advert(store.collection_path)  # a holder that took the store while this one looked
        if advert is None or not _answers(advert, store.collection_path):
            raise
        return _ask(args, advert, remote)


def _answers(advert: Advert, folder: Path) -> bool:
    """Whether the advertised holder answers; False when nothing listens at its address (a stale advert).

    A search may rightly take long (the holder may load the model for it first), so the search itself
    has the client's long timeout; this probe of /healthz, answered by the holder's event loop at once
    even mid-ingest, has a short one.

    Raises:
        StoreBusyError: the holder accepted the connection but did not answer within `PROBE_S`: a process
            stopped with Ctrl-Z (SIGSTOP) still holds the store and its listening socket.
    """
    import httpx

    try:
        httpx.get(f"{advert.url}/healthz", timeout=PROBE_S, trust_env=False)  # loopback: never via a proxy
    except httpx.ConnectError:
        return False
    except httpx.HTTPError as e:
        raise StoreBusyError(
            f"store {folder} is held by a running chunkless {advert.role or 'process'} (pid {advert.pid}) that "
            f"did not answer within {PROBE_S:g} s; if it is stopped, resume it ('fg', or 'kill -CONT "
            f"{advert.pid}'), or wait for it to finish"
        ) from e
    return True


def _ask(args: argparse.Namespace, advert: Advert, remote: Command) -> int:
    args.holder = advert
    print(
        f"chunkless: the store is held by a running chunkless {advert.role or 'process'} (pid {advert.pid}); "
        "asked it (what is committed so far)",
        file=sys.stderr,
    )
    return remote(args)


def _client(args: argparse.Namespace) -> RemoteRetriever:
    from retriever.serve.client import RemoteRetriever

    if args.holder is not None:
        return RemoteRetriever(args.holder.url, args.holder.token)
    key = ServeSettings().service_api_key
    return RemoteRetriever(args.server, (key.get_secret_value() if key is not None else "") or None)


def remote_search(args: argparse.Namespace) -> int:
    """`chunkless search --server URL`: the same output as the local command."""
    settings = settings_of(args)
    check_query(args.query, settings.serve.max_query_chars)
    with _client(args) as c:
        resp = c.search(args.query, top=settings.spans.top)  # --top, else CHUNKLESS_TOP, else the default
    print_search(resp, args.json)
    return 0


def remote_list(args: argparse.Namespace) -> int:
    """`chunkless list --server URL`: every document, page by page."""
    rows: list[dict[str, Any]] = []
    with _client(args) as c:
        while True:
            page = c.documents(offset=len(rows), limit=PAGE)
            rows += [
                {
                    "doc_id": d["doc_id"],
                    "source": d["source"],
                    "title": d["title"],
                    "n_tokens": d["n_tokens"],
                    "ingested_at": _iso(d.get("ingested_at")),
                }
                for d in page["documents"]
            ]
            if not page["documents"] or len(rows) >= page["total"]:
                break
    print_documents(rows, args.json)
    return 0


def _iso(t: float | None) -> str | None:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds") if t else None


def remote_ingest(args: argparse.Namespace) -> int:
    """`chunkless ingest --server URL PATH...`: upload the files (named as a local run names them), wait."""
    from indexer.discover import discover

    if args.engine != "local":
        raise SettingsError(f"--engine {args.engine} runs here, not in a service: drop --server (CHUNKLESS_SERVER)")
    found = discover(args.paths, args.id_from, args.doc_id)
    files, bad = [(f.path, f.doc_id) for f in found.files], found.failures
    for f in bad:
        print(f"  failed: {f.path}: {f.reason}", file=sys.stderr)
    if not files:
        return EXIT_FILES_FAILED if bad else 0
    with _client(args) as c:
        job = c.upload(files)
        print(f"job {job['id']} queued at {args.server}", file=sys.stderr)
        job = c.wait(job["id"])
    rep = job["report"]
    print(
        f"ingested {rep['documents']} documents ({rep['tokens']} tokens, {rep['replaced']} replaced, "
        f"{rep['skipped_unchanged']} unchanged) on {args.server}; job {job['state']}; "
        f"{len(rep['failures'])} failed",
        file=sys.stderr,
    )
    for f in rep["failures"]:
        print(f"  failed: {f['path']}: {f['reason']}", file=sys.stderr)
    if args.report:
        Path(args.report).write_text(json.dumps(rep, indent=2))
    if job["state"] != "done":
        raise ChunklessError(f"job {job['id']} {job['state']}: {job.get('error')}")
    return EXIT_FILES_FAILED if rep["failures"] or bad else 0


def remote_stats(args: argparse.Namespace) -> int:
    """`chunkless stats --server URL`."""
    with _client(args) as c:
        st = c.stats()
    print_stats(st, args.json)
    return 0


def remote_delete(args: argparse.Namespace) -> int:
    """`chunkless delete --server URL DOC_ID`."""
    with _client(args) as c:
        if not c.delete(args.target):
            print(
                f"chunkless: error: no document '{args.target}' (doc_id) on {args.server}; see GET /v1/documents",
                file=sys.stderr,
            )
            return 2
    print(f"deleted {args.target}", file=sys.stderr)
    return 0
