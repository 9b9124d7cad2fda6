"""Pydantic models at chunkless' edges and its one Settings class."""

from schemas.models import (
    EmbeddedDocument,
    IngestFailure,
    IngestReport,
    LoadedDocument,
    SearchResponse,
    SpanResult,
)
from schemas.settings import Settings, StorageDtype

__all__ = [
    "EmbeddedDocument",
    "IngestFailure",
    "IngestReport",
    "LoadedDocument",
    "SearchResponse",
    "Settings",
    "SpanResult",
    "StorageDtype",
]
