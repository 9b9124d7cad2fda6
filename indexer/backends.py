"""The thin points API chunkless needs from Qdrant, and a backend-neutral filter.

`PointsBackend` is what differs between the embedded engine (Edge) and a Qdrant server; everything
chunkless-specific (headers, versions, segments, orphans) lives once in `indexer.store`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

Scalar = str | int | bool


@dataclass(frozen=True)
class Match:
    """payload[key] == value, or payload[key] in values when `value` is a list."""

    key: str
    value: Scalar | list[str] | list[int]
    negate: bool = False


@dataclass(frozen=True)
class Where:
    """Backend-neutral filter: all of `must`, at least one of `should` (when any), none of `must_not`."""

    must: Sequence[Match | Where] = ()
    should: Sequence[Match | Where] = ()
    must_not: Sequence[Match | Where] = ()


@dataclass
class PointRecord:
    """A point as a backend returns it: vectors already as NumPy arrays."""

    id: str
    payload: dict[str, Any]
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    score: float = 0.0


@dataclass(frozen=True)
class VectorSpace:
    """One named vector of the collection."""

    size: int
    multivector: bool
    datatype: str  # float32 | float16 | uint8
    distance: str  # cosine | dot
    hnsw: bool


@dataclass
class NewPoint:
    id: str
    vectors: dict[str, np.ndarray]
    payload: dict[str, Any]


class PointsBackend(Protocol):
    """Points, vectors and payloads in one collection."""

    def exists(self) -> bool: ...

    def create(self, spaces: dict[str, VectorSpace], metadata: dict[str, Any], keyword_fields: list[str]) -> None: ...

    def read_metadata(self) -> dict[str, Any]: ...

    def upsert(self, points: list[NewPoint]) -> None: ...

    def delete(self, where: Where) -> None: ...

    def scroll(
        self, where: Where, with_vectors: list[str], limit: int | None = None, payload: bool | list[str] = True
    ) -> list[PointRecord]: ...

    def query(
        self, using: str, vector: np.ndarray, limit: int, where: Where | None, with_payload: bool | list[str]
    ) -> list[PointRecord]: ...

    def count(self, where: Where) -> int: ...

    def disk_bytes(self) -> int | None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...
