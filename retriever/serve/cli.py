"""The `serve` subcommand, and `--server URL` routing of search, ingest, stats and delete through a service.

`install(sub)` is the one hook `retriever/cli.py` calls: it adds `serve`, and gives the existing
`search`, `ingest`, `stats` and `delete` parsers a `--server` flag; with it (or CHUNKLESS_SERVER) they
call the service instead of opening the store, and print what the local command prints.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from schemas.errors import EXIT_FILES_FAILED, ChunklessError, ServerError
from schemas.settings import ServeSettings, Settings

Command = Callable[[argparse.Namespace], int]


def install(sub: Any, settings_of: Callable[[argparse.Namespace], Settings]) -> None:
    """Add `serve` and `--server` routing to the `chunkless` parser.

    Args:
        sub: the subparsers action of `chunkless` (its `choices` are the existing subcommands).
        settings_of: how the CLI turns flags into `Settings`.
    """
    sv = sub.add_parser("serve", help="run the HTTP service: search while ingesting, over an authenticated API")
    from retriever.cli import MODEL_FLAGS, STORE_FLAGS, add_setting_flags

    add_setting_flags(sv, {"--host": "host", "--port": "port"} | STORE_FLAGS | MODEL_FLAGS)
    sv.set_defaults(func=lambda a: cmd_serve(a, settings_of(a)))
    remote: dict[str, Command] = {
        "search": remote_search,
        "ingest": remote_ingest,
        "stats": remote_stats,
        "delete": remote_delete,
    }
    for name, fn in remote.items():
        p = sub.choices[name]
        p.add_argument("--server", help="go through a running chunkless service at this URL (CHUNKLESS_SERVER)")
        p.set_defaults(func=_routed(p.get_default("func"), fn))


def _routed(local: Command, remote: Command) -> Command:
    def run(args: argparse.Namespace) -> int:
        if args.server is None:
            args.server = ServeSettings().server
        return remote(args) if args.server else local(args)

    return run


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """Open the store and model, bind, and serve until SIGTERM/SIGINT."""
    import uvicorn

    from retriever.serve.app import create_app
    from retriever.serve.service import Service

    cfg = settings.serve
    logging.getLogger("retriever.serve").setLevel(logging.INFO)
    # bind before loading the model: a taken port fails at once, and the real port (for --port 0) is known
    try:
        sock = socket.create_server((cfg.host, cfg.port))
    except OSError as e:
        raise ServerError(f"cannot listen on {cfg.host}:{cfg.port} ({e}); pick another --port") from e
    host, port = sock.getsockname()[:2]
    service = Service(settings)
    app = create_app(service)
    print(f"chunkless serve: listening on http://{host}:{port} (store {settings.store.location})", file=sys.stderr)
    sys.stderr.flush()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=30))
    # uvicorn shuts down gracefully on SIGTERM/SIGINT (requests answered, the job's document group
    # finished, the store closed), then re-raises the signal to the handler that was there before;
    # this one makes that re-raise a no-op, so a clean stop exits 0 rather than dying by the signal
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _client(args: argparse.Namespace) -> Any:
    from retriever.serve.client import RemoteRetriever

    key = ServeSettings().service_api_key
    return RemoteRetriever(args.server, (key.get_secret_value() if key is not None else "") or None)


def remote_search(args: argparse.Namespace) -> int:
    """`chunkless search --server URL`: the same output as the local command."""
    from retriever.cli import print_search, settings_of

    top = settings_of(args).spans.top  # --top, else CHUNKLESS_TOP, else the default
    with _client(args) as c:
        resp = c.search(args.query, top=top)
    print_search(resp, args.json)
    return 0


def remote_ingest(args: argparse.Namespace) -> int:
    """`chunkless ingest --server URL PATH...`: upload the files (named as a local run names them), wait."""
    from indexer.discover import discover

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
    print(json.dumps(st, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in st.items()))
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
