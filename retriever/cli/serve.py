"""`chunkless serve`: the HTTP service (search while ingesting, over an authenticated API) in the foreground."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import socket
import sys
from functools import partial

from retriever.cli.flags import settings_of
from schemas.errors import ServerError, SettingsError
from schemas.settings import ServeSettings

log = logging.getLogger("retriever.serve")


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The flags only `serve` has (its settings' flags come from `add_setting_flags`)."""
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="serve on a non-loopback address without CHUNKLESS_SERVICE_API_KEY (anyone who reaches it can "
        "search, upload and delete); refused without this flag",
    )


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or a name) reaches this machine only: every address it resolves to is loopback.

    An empty host or a wildcard (0.0.0.0, ::) binds every interface, so it is not.
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if not host:
        return False
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False  # the bind will fail and say so; a name that does not resolve is not known to be loopback
    return bool(infos) and all(ipaddress.ip_address(str(i[4][0]).split("%")[0]).is_loopback for i in infos)


def check_exposure(cfg: ServeSettings, insecure: bool) -> None:
    """Refuse to serve an open API (no service key) beyond this machine unless `--insecure` says so.

    Raises:
        SettingsError: a non-loopback host, no CHUNKLESS_SERVICE_API_KEY and no `--insecure` (exit 2).
    """
    key = cfg.service_api_key.get_secret_value() if cfg.service_api_key is not None else ""
    if key or is_loopback(cfg.host):
        return
    if not insecure:
        raise SettingsError(
            f"refusing to serve on {cfg.host or 'every interface'} without an API key: anyone who can reach it "
            "could search, upload and delete; set CHUNKLESS_SERVICE_API_KEY, use --host 127.0.0.1, or pass "
            "--insecure to serve it open anyway"
        )
    log.warning("serving on %s without an API key (--insecure): anyone who can reach it has full access", cfg.host)


def cmd_serve(args: argparse.Namespace) -> int:
    """Check the bind is safe, open the store and model, bind, and serve until SIGTERM/SIGINT."""
    settings = settings_of(args)
    import uvicorn

    from retriever.serve.app import create_app
    from retriever.serve.holder import ReadEndpoint
    from retriever.serve.service import Service

    cfg = settings.serve
    logging.getLogger("retriever.serve").setLevel(logging.INFO)
    check_exposure(cfg, args.insecure)
    # bind before loading the model: a taken port fails at once, and the real port (for --port 0) is known
    try:
        sock = socket.create_server((cfg.host, cfg.port))
    except OSError as e:
        raise ServerError(f"cannot listen on {cfg.host}:{cfg.port} ({e}); pick another --port") from e
    host, port = sock.getsockname()[:2]
    # `chunkless search` on this store asks this process
    service = Service(settings, reads=partial(ReadEndpoint, role="serve"))
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
