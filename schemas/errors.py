"""One error hierarchy. Each message names the file, field, setting or address at fault and says what to do.

Every error a user can cause is a `ChunklessError`. Each class carries the two numbers its callers
answer with, so no caller keeps a table of its own: the CLI prints the message (no traceback) and exits
with `exit_code`; the service (`chunkless serve`) answers ``{"detail": message, "field": null}`` with
`http_status`. A subclass inherits both unless it says otherwise.

=======================  ====  =====  ==========================================================
class                    exit  HTTP   meaning
=======================  ====  =====  ==========================================================
ChunklessError           2     400    bad input: settings, flags, query, files, a model that cannot load
SettingsError            2     400    an unknown setting or an invalid value
InputError               2     400    a file that cannot be ingested
QueryError               2     400    an empty or oversize query, an unknown filter field
ModelLoadError           2     400    the embedding model cannot be loaded
StoreError               3     400    the store or collection does not exist or does not match
StoreNotFoundError       3     400    the store or collection a command names does not exist
StoreMismatchError       3     400    another model, dimension or layout than the collection's
DocIdCollisionError      3     400    two different files would share one doc_id
StoreBusyError           4     503    another process holds the embedded store
StorageFaultError        5     507    disk full, read-only, permission denied (nothing stored was lost)
ServerError              6     502    a Qdrant server or chunkless service cannot be reached or answered wrongly
ShuttingDownError        6     503    the chunkless service is stopping and takes no new work; retry
=======================  ====  =====  ==========================================================

Other exit codes: 0 done; 1 (`EXIT_FILES_FAILED`) the run finished, but some files failed (listed,
with reasons). The service's own refusals of a request (a bad field, a wrong API key, an upload too
large) are not `ChunklessError`s: `retriever.serve.errors.ApiError` carries their status.
"""

from __future__ import annotations

EXIT_FILES_FAILED = 1


class ChunklessError(Exception):
    """Base of every error chunkless raises on purpose."""

    exit_code = 2
    http_status = 400


class SettingsError(ChunklessError, ValueError):
    """An unknown setting or an invalid value; the message names CHUNKLESS_<NAME>, the value and the range."""


class InputError(ChunklessError):
    """A file that cannot be ingested (missing, unsupported, corrupt, encrypted, empty, undecodable)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class QueryError(ChunklessError):
    """An empty or oversize query, an unknown filter field, a document that is not there."""


class ModelLoadError(ChunklessError):
    """The embedding model could not be loaded."""


class StoreError(ChunklessError):
    """Something about the store; subclasses say what."""

    exit_code = 3


class StoreNotFoundError(StoreError):
    """The store or collection a command names does not exist."""


class StoreMismatchError(StoreError):
    """A write or query does not match the collection's recorded model, dimension or layout."""


class DocIdCollisionError(StoreError):
    """Two different files would be stored under one doc_id; the message names both."""


class StoreBusyError(StoreError):
    """The embedded store is held by another process (Edge allows one process per store)."""

    exit_code = 4
    http_status = 503


class StorageFaultError(StoreError):
    """Disk full, read-only store or permission denied; what was stored before is intact."""

    exit_code = 5
    http_status = 507


class ServerError(ChunklessError):
    """A Qdrant server or chunkless service is unreachable, refused the key, or runs an incompatible version."""

    exit_code = 6
    # to a client of the service this is an upstream fault (the Qdrant server behind it), not its request's
    http_status = 502


class ShuttingDownError(ServerError):
    """The chunkless service is stopping: a search still queued, or a job submitted now, is refused; retry."""

    http_status = 503
