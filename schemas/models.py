"""Data crossing module boundaries: loaded and embedded documents, spans, responses, reports."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.structure import DocStructure


class LoadedDocument(BaseModel):
    """A document's text as the loader returns it; every offset in chunkless indexes `text`."""

    doc_id: str = Field(min_length=1)
    source: str
    title: str
    text: str
    page_starts: list[int] = Field(default_factory=lambda: [0], description="Character offset of each page.")
    content_hash: str = Field(min_length=8, description="sha256 of the source file's bytes.")
    structure: DocStructure | None = Field(None, description="Blocks indexing `text` (indexer/reading).")

    @field_validator("page_starts")
    @classmethod
    def _sorted(cls, v: list[int]) -> list[int]:
        if not v or v[0] != 0 or any(b < a for a, b in itertools.pairwise(v)):
            raise ValueError("page_starts must start at 0 and be non-decreasing")
        return v


class SentenceVectors(BaseModel):
    """A document's sentence vectors (each sentence embedded on its own): row i is the unit vector of
    text[chars[i, 0]:chars[i, 1]]."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    chars: np.ndarray  # (S, 2) int64 character [start, end), ascending
    vectors: np.ndarray  # (S, dim) float32, unit rows


class EmbeddedDocument(BaseModel):
    """Token matrix of one document: row i is token i's unit vector, covering text[offsets[i,0]:offsets[i,1]]."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    doc: LoadedDocument
    vectors: np.ndarray  # (n_tokens, dim) float32, rows L2-normalised
    offsets: np.ndarray  # (n_tokens, 2) int64 character [start, end)
    pooled: np.ndarray  # (dim,) float32, unit
    window_pooled: np.ndarray  # (n_windows, dim) float32, unit: one pooled vector per embedding window
    window_bounds: np.ndarray  # (n_windows, 2) int64 token [start, end) of each window
    sentences: SentenceVectors | None = None  # its sentence vectors, when the collection stores them

    @model_validator(mode="after")
    def _shapes(self) -> EmbeddedDocument:
        n, dim = self.vectors.shape
        if self.offsets.shape != (n, 2):
            raise ValueError(f"offsets shape {self.offsets.shape} does not match {n} tokens")
        if self.pooled.shape != (dim,):
            raise ValueError(f"pooled shape {self.pooled.shape} does not match dim {dim}")
        return self

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def n_tokens(self) -> int:
        return int(self.vectors.shape[0])


class SpanLead(BaseModel):
    """Text read with a span though it lies before it: a table's header row, a list's lead-in sentence."""

    start: int = Field(ge=0)
    end: int = Field(ge=0)
    text: str


class SpanResult(BaseModel):
    """One answer span: text[start:end] of document doc_id."""

    doc_id: str
    source: str
    start: int = Field(ge=0)
    end: int = Field(ge=0)
    text: str
    score: float
    pages: list[int] = Field(description="1-based pages the span touches.")
    page_labels: list[str] | None = Field(None, description="The printed labels of `pages`, if the PDF has any.")
    section: str | None = Field(None, description="Section path, e.g. '7 Troubleshooting › 7.24 Why ...?'.")
    lead: SpanLead | None = Field(
        None, description="The header row of the table / lead-in of the list the span's rows / items belong to."
    )


class SearchResponse(BaseModel):
    """Spans for one query, best first."""

    query: str
    spans: list[SpanResult]
    confidence: float | None = Field(
        None, description="Probability that the top span answers the query (calibrated; None: not computed)."
    )
    abstained: bool = Field(
        False, description="The top span's confidence was below `threshold`: its spans were withheld."
    )
    threshold: float | None = Field(None, description="The abstention threshold in force (None: never abstains).")
    timings_ms: dict[str, float] = Field(default_factory=dict, exclude=True)
    features: dict[str, float] = Field(
        default_factory=dict, exclude=True, description="What the confidence was computed from (top span)."
    )
    rows_scored: int = Field(0, exclude=True, description="Token rows fetched and scored for this query.")


class IngestFailure(BaseModel):
    path: str
    reason: str


class IngestReport(BaseModel):
    """What one ingest run did."""

    documents: int = 0
    skipped_unchanged: int = 0
    replaced: int = 0
    tokens: int = 0
    segments: int = 0
    bytes_stored: int = 0
    seconds: float = 0.0
    index_seconds: float = Field(0.0, description="Of `seconds`, building the int8 copy MaxSim ranking scans.")
    index_note: str | None = Field(None, description="Why that copy was not built (the documents are stored).")
    failures: list[IngestFailure] = Field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def to_json_dict(self) -> dict[str, Any]:
        d = self.model_dump()
        d["tokens_per_second"] = round(self.tokens_per_second, 1)
        return d
