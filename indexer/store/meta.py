"""What a collection records about itself (`CollectionMeta`) and about each document (`DocHeader`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.errors import StoreMismatchError
from schemas.layout import StorageDtype, StorageLayout
from schemas.settings import Boundary

if TYPE_CHECKING:
    from indexer.embedders.base import TokenEmbedder

SCHEMA_VERSION = 1
# the flat fields collections made before `layout` was one object recorded it as
_FLAT_LAYOUT = {"storage_dtype": "dtype", "storage_reduce": "reduce", "storage_dim": "dim", "storage_pool": "pool"}


class CollectionMeta(BaseModel):
    """What a collection was built with; every later write and query must match it.

    Reads metadata of both forms: `layout` as one object, or the older flat `storage_dtype`,
    `storage_reduce`, `storage_dim`, `storage_pool` fields (missing ones take the layout's defaults).
    """

    model_config = ConfigDict(extra="ignore")

    model: str
    dim: int
    pooling: str
    layout: StorageLayout = Field(default_factory=StorageLayout)
    schema_version: int = SCHEMA_VERSION
    created_at: float = 0.0
    # how the token vectors were made (indexer.embedders Capabilities); older collections were all hf-pooled
    backend: str = "hf-pooled"
    vector_kind: str = "pooled-hidden"
    # segments carry their sentence vectors (indexer.sentence_vectors); older collections do not
    sentence_vectors: bool = False
    # segments carry ranking rows: their token rows mean-pooled by this many (0: none; older collections)
    rank_pool: int = 0
    # segments carry their sentences' piece sums, cut by this rule (indexer.store.sentence_sums); None: none
    sentence_sums: Boundary | None = None

    @model_validator(mode="before")
    @classmethod
    def _flat_layout(cls, data: Any) -> Any:
        if isinstance(data, dict) and "layout" not in data and any(k in data for k in _FLAT_LAYOUT):
            data = dict(data)
            data["layout"] = {new: data.pop(old) for old, new in _FLAT_LAYOUT.items() if old in data}
        return data

    @property
    def storage_dtype(self) -> StorageDtype:
        """The number format of stored token rows (the layout's dtype)."""
        return self.layout.dtype

    def check(
        self,
        model: str,
        dim: int,
        storage_dtype: StorageDtype | None,
        where: str,
        layout: StorageLayout | None = None,
        backend: str | None = None,
        vector_kind: str | None = None,
    ) -> None:
        """Refuse a write or query that does not match the collection.

        Args:
            model: the embedder's name.
            dim: the embedder's dimension.
            storage_dtype: the dtype asked for (None: any).
            where: what messages name (a file, a collection).
            layout: the layout asked for (None: any). Two plain layouts differing only in dtype are
                reported by the dtype check.
            backend: the embedder's backend (None: any).
            vector_kind: the embedder's vector kind (None: any).

        Raises:
            StoreMismatchError: model (compared by canonical identity), dimension, dtype, layout, backend or
                vector kind differ; says which flag fixes it.
        """
        from indexer.embedders.folder import canonical_name  # one identity per model: hub name, packaged copy

        model = canonical_name(model)
        if dim != self.dim:
            raise StoreMismatchError(
                f"{where}: model '{model}' gives {dim}-d vectors but the collection holds {self.dim}-d vectors "
                f"from '{self.model}'; use --model {self.model} or a new --collection"
            )
        if model != canonical_name(self.model):
            raise StoreMismatchError(
                f"{where}: the collection was built with model '{self.model}', not '{model}'; "
                f"use --model {self.model} or a new --collection"
            )
        if (backend, vector_kind) != (None, None) and (backend, vector_kind) != (self.backend, self.vector_kind):
            raise StoreMismatchError(
                f"{where}: the collection holds {self.vector_kind} vectors from the {self.backend} backend of "
                f"'{self.model}', not {vector_kind} vectors from {backend}; use the model folder it was built with "
                "or a new --collection"
            )
        plain = layout is None or (layout.is_plain and self.layout.is_plain)
        if layout is not None and layout != self.layout and not plain:  # names the whole layout, dtype included
            m = self.layout
            raise StoreMismatchError(
                f"{where}: the collection stores tokens as {m.name}, not {layout.name}; set "
                f"CHUNKLESS_STORAGE_DTYPE={m.dtype} CHUNKLESS_STORAGE_REDUCE={m.reduce} "
                f"CHUNKLESS_STORAGE_DIM={m.dim or ''} CHUNKLESS_STORAGE_POOL={m.pool} or use a new --collection"
            )
        if storage_dtype is not None and storage_dtype != self.layout.dtype:
            raise StoreMismatchError(
                f"{where}: the collection stores {self.layout.dtype} tokens, not {storage_dtype}; "
                f"set CHUNKLESS_STORAGE_DTYPE={self.layout.dtype} or use a new --collection"
            )


def check_embedder(meta: CollectionMeta, embedder: TokenEmbedder, where: str) -> None:
    """Refuse an embedder whose vectors the collection cannot hold: THE check ingest and search both make.

    Args:
        meta: the collection's record.
        embedder: the model about to write into it or query it.
        where: what the message names (the collection).

    Raises:
        StoreMismatchError: another model (by canonical identity), dimension, backend or vector kind;
            the message says which flag fixes it.
    """
    e = embedder
    meta.check(e.name, e.dim, None, where, backend=e.backend, vector_kind=e.vector_kind)


class DocHeader(BaseModel):
    """One live document as the store records it (its header point's payload); what search returns.

    Unknown payload keys are ignored, so stores written by other versions read.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    doc_id: str
    version: str = Field(description="Content hash of the live version; its segments carry it.")
    source: str
    title: str
    n_tokens: int = Field(description="Model tokens of the document.")
    n_rows: int = Field(description="Stored token rows: fewer than n_tokens when the layout pools tokens.")
    n_segments: int
    page_starts: list[int] = Field(default_factory=lambda: [0], description="Character offset of each page.")
    text_len: int
    ingested_at: float = 0.0
    page_labels: list[str] | None = Field(None, description="Reserved: printed page label per page.")
    structure: dict[str, Any] | None = Field(None, description="Reserved: the document's structure.")

    @model_validator(mode="before")
    @classmethod
    def _rows_default(cls, data: Any) -> Any:
        # headers written before pooled layouts had no n_rows: one row per token
        if isinstance(data, dict) and "n_rows" not in data and "n_tokens" in data:
            data = {**data, "n_rows": data["n_tokens"]}
        return data

    def to_payload(self) -> dict[str, Any]:
        """The header point's payload (reserved fields only when set)."""
        return {"kind": "doc", **self.model_dump(exclude_none=True)}


HEADER_FIELDS = list(DocHeader.model_fields)
# what recall returns: a big manual's structure is 20x the rest of its header (123 kB of 128 kB for the
# Valgrind manual), and only the documents whose spans get built need it (`TokenStore.structures`)
RECALL_FIELDS = [f for f in HEADER_FIELDS if f != "structure"]
