"""One error hierarchy. Each message names the file, field, setting or address at fault and says what to do.

Every error a user can cause is a `ChunklessError`; the CLI prints its message (no traceback) and exits
with its `exit_code`:

=====  ==========================================================================
code   meaning
=====  ==========================================================================
0      done
1      the run finished, but some files failed (listed, with reasons)
2      bad input: settings, flags, query, benchmark files, a model that cannot load
3      the store or collection does not exist or does not match (model, layout)
4      the store is busy: another process holds the embedded store
5      a storage fault: disk full, read-only, permission denied (nothing stored was lost)
6      a Qdrant server or chunkless service cannot be reached or answered wrongly
=====  ==========================================================================
"""

from __future__ import annotations

EXIT_FILES_FAILED = 1


class ChunklessError(Exception):
    """Base of every error chunkless raises on purpose."""

    exit_code = 2


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


class StorageFaultError(StoreError):
    """Disk full, read-only store or permission denied; what was stored before is intact."""

    exit_code = 5


class ServerError(ChunklessError):
    """A Qdrant server or chunkless service is unreachable, refused the key, or runs an incompatible version."""

    exit_code = 6
