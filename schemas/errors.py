"""Typed errors. Each message names the file, field or setting at fault and says what to do."""


class ChunklessError(Exception):
    """Base of every error chunkless raises on purpose."""


class InputError(ChunklessError):
    """A file that cannot be ingested (missing, unsupported, corrupt, empty, undecodable)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class StoreNotFoundError(ChunklessError):
    """The store or collection a search names does not exist."""


class StoreMismatchError(ChunklessError):
    """A write or query does not match the collection's recorded model, dimension or dtype."""


class StoreBusyError(ChunklessError):
    """The embedded store is held by another process (Edge allows one process per shard)."""


class QueryError(ChunklessError):
    """An empty or oversize query."""


class ModelLoadError(ChunklessError):
    """The embedding model could not be loaded."""
