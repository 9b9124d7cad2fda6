"""Reads for other processes from the process that holds an embedded store: a loopback endpoint it advertises.

Edge admits one process per store, so while `chunkless ingest` (or `chunkless serve`) holds one, no other
process can open it. `ReadEndpoint` lets the holder answer their reads instead: the service's read
routes (`app.create_read_app`: search, the document list, stats, health, metrics) over the holder's own
open store, on 127.0.0.1 at a port the system picks, in a background thread, behind a random token; and
an advert in the store's folder (`indexer.holder`) that says where. Readers (`chunkless search`, `list`,
`stats`, `RemoteRetriever.for_store`) find the advert and ask; documents are visible as their headers
commit, as within the holder.

The model: a search needs it, an ingest loads it only when a file needs embedding. Both go through one
`SerialEmbedder` (`shared`), whose lock every model call takes, so a search and the ingest never run the
model at once and a search waits at most for one document (or one part of a long one). A search that
arrives before the ingest has loaded the model loads it, through the ingest's own loader, once.

What it costs the holder when nobody reads: a thread whose event loop wakes ten times a second, and the
import of the HTTP stack at start (docs/operations.md, "Read while writing", has the measurements).
"""

from __future__ import annotations

import logging
import secrets
import socket
import threading
from collections.abc import Callable

import uvicorn

from indexer.embedders import TokenEmbedder
from indexer.holder import Advert, new_advert, remove_advert, write_advert
from indexer.store import TokenStore
from retriever.serve.app import create_read_app
from retriever.serve.embedder import SerialEmbedder
from retriever.serve.service import ReadService
from schemas.settings import Settings

log = logging.getLogger(__name__)

STOP_GRACE_S = 30.0  # a search in flight when the holder stops is answered if it finishes in this time


class ReadEndpoint:
    """Serves reads of the store this process holds to other processes, and advertises it in the store.

    Used by an ingest run (`indexer.ingest.ReadsServer`: `shared`, `start`, `stop`) and by `Service`
    (`start_over` its own `ReadService`). Nothing here stops the holder's own work: an endpoint that
    cannot start (no loopback, a folder it cannot write its advert to) logs why and serves nothing.

    Args:
        settings: the holder's settings; the endpoint's copy (`self.settings`) has the random token as
            its API key, and takes one search at a time (no micro-batch wait: readers are few).
        role: what the holder does, named in the advert (``ingest``, ``serve``).
    """

    def __init__(self, settings: Settings, role: str) -> None:
        self.role = role
        self._token = secrets.token_urlsafe(32)
        self.settings = settings.updated(service_api_key=self._token, max_batch=1, batch_wait_ms=0.0)
        self._folder = settings.store.collection_path
        self._shared: SerialEmbedder | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.advert: Advert | None = None

    # --- the ingest's side ----------------------------------------------------------------------------
    def shared(self, embedder: TokenEmbedder) -> TokenEmbedder:
        """The model as the holder's work and the reads share it: one `SerialEmbedder` around `embedder`."""
        if self._shared is None:
            self._shared = SerialEmbedder(embedder)
        return self._shared

    def start(self, store: TokenStore, model: Callable[[], TokenEmbedder]) -> None:
        """Serve reads of `store`; `model()` gives the shared model (loading it if nobody has yet)."""
        from retriever.search import Retriever

        self.start_over(
            ReadService(self.settings, store, lambda: Retriever(self.settings, embedder=model(), store=store))
        )

    # --- any holder -----------------------------------------------------------------------------------
    def start_over(self, reader: ReadService) -> None:
        """Serve `reader`'s read routes on loopback and advertise them; logs and serves nothing if that fails."""
        try:
            sock = socket.create_server(("127.0.0.1", 0))  # listening now: a reader's connection waits in the backlog
        except OSError as e:
            log.warning("not serving reads of %s to other processes: cannot listen on loopback (%s)", self._folder, e)
            return
        config = uvicorn.Config(
            create_read_app(reader),
            log_config=None,  # the holder's logging stays as it set it up
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=int(STOP_GRACE_S),
        )
        self._server = uvicorn.Server(config)
        # uvicorn installs no signal handlers outside the main thread: the holder's own handling of
        # SIGINT/SIGTERM is unchanged
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="chunkless-reads", daemon=True
        )
        self._thread.start()
        advert = new_advert(f"http://127.0.0.1:{sock.getsockname()[1]}", self._token, self.role)
        try:
            write_advert(self._folder, advert)
        except OSError as e:
            log.warning("not serving reads of %s to other processes: cannot write its advert (%s)", self._folder, e)
            self.stop()
            return
        self.advert = advert

    def stop(self) -> None:
        """Withdraw the advert (no new reader comes), answer the searches in flight, stop the thread."""
        if self.advert is not None:
            remove_advert(self._folder, self.advert)
            self.advert = None
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(STOP_GRACE_S + 5)
        self._server = self._thread = None
