"""`chunkless serve`: the HTTP service (search while ingesting, over an authenticated API) in the foreground."""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys

from retriever.cli.flags import settings_of
from schemas.errors import ServerError


def cmd_serve(args: argparse.Namespace) -> int:
    """Open the store and model, bind, and serve until SIGTERM/SIGINT."""
    settings = settings_of(args)
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
    service = Service(settings, serve_reads=True)  # `chunkless search` on this store asks this process
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
