"""Pydantic models at chunkless' edges and its one Settings class.

`from schemas import Settings` is the public way to configure chunkless (beside `from retriever import
Retriever, RemoteRetriever`); the models are what a search returns and what ingest reads and reports.
"""

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
