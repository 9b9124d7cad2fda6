"""`--server URL` routing: search, ingest, stats and delete through a running chunkless service.

With `--server` (or CHUNKLESS_SERVER) these commands call the service instead of opening the store,
and print what the local command prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from retriever.cli.flags import settings_of
from retriever.cli.printing import print_search, print_stats
from schemas.errors import EXIT_FILES_FAILED, ChunklessError, SettingsError
from schemas.settings import ServeSettings

if TYPE_CHECKING:
    from retriever.serve.client import RemoteRetriever

Command = Callable[[argparse.Namespace], int]


def routable(p: argparse.ArgumentParser, local: Command, remote: Command) -> None:
    """Give command parser `p` a `--server` flag: `remote` runs when a service is named, `local` otherwise."""
    p.add_argument("--server", help="go through a running chunkless service at this URL (CHUNKLESS_SERVER)")

    def run(args: argparse.Namespace) -> int:
        if args.server is None:
            args.server = ServeSettings().server
        return remote(args) if args.server else local(args)

    p.set_defaults(func=run)


def _client(args: argparse.Namespace) -> RemoteRetriever:
    from retriever.serve.client import RemoteRetriever

    key = ServeSettings().service_api_key
    return RemoteRetriever(args.server, (key.get_secret_value() if key is not None else "") or None)


def remote_search(args: argparse.Namespace) -> int:
    """`chunkless search --server URL`: the same output as the local command."""
    top = settings_of(args).spans.top  # --top, else CHUNKLESS_TOP, else the default
    with _client(args) as c:
        resp = c.search(args.query, top=top)
    print_search(resp, args.json)
    return 0


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
