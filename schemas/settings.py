"""The one configuration object. Read once from the environment (prefix CHUNKLESS_), then passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

StorageDtype = Literal["float32", "float16", "int8", "int4", "binary"]
StorageReduce = Literal["none", "pca", "truncate"]
Pooling = Literal["auto", "last", "mean"]
Device = Literal["auto", "cpu", "cuda"]
ModelDtype = Literal["auto", "float32", "bfloat16", "float16"]
Boundary = Literal["separators", "sentences"]
ThresholdMode = Literal["absolute", "relative"]
SpanMethod = Literal["threshold", "sentences"]
RecallLevel = Literal["doc", "segment"]
FetchRank = Literal["auto", "pooled", "maxsim"]


class Settings(BaseSettings):
    """Everything chunkless can be told; CLI flags override fields, env vars (CHUNKLESS_*) set defaults."""

    model_config = SettingsConfigDict(env_prefix="CHUNKLESS_", extra="forbid", validate_assignment=True)

    # --- store -------------------------------------------------------------------------------------
    store_path: Path = Field(Path("chunkless_store"), description="Folder of the embedded (Edge) store.")
    url: str | None = Field(None, description="Qdrant server URL; when set, the server backend is used.")
    api_key: SecretStr | None = None
    prefer_grpc: bool = True
    https: bool | None = None
    collection: str = Field("chunkless", pattern=r"^[A-Za-z0-9_.-]+$")
    storage_dtype: StorageDtype = "float32"
    storage_reduce: StorageReduce = Field("none", description="Token dimension reduction of a new collection.")
    storage_dim: int | None = Field(None, ge=8, description="Stored dimensions when storage_reduce is pca/truncate.")
    storage_pool: int = Field(1, ge=1, le=4, description="Adjacent tokens merged into one stored row.")
    segment_tokens: int | None = Field(
        256,
        ge=16,
        description="Rows per stored segment written (None: the most a Qdrant server takes, 2,730 at 384-d); "
        "small segments let a query fetch and score only where the answer is (fetch_segments).",
    )
    shard_number: int = Field(1, ge=1)
    replication_factor: int = Field(1, ge=1)
    on_disk: bool = True

    # --- model -------------------------------------------------------------------------------------
    model: str = Field(
        "sentence-transformers/all-MiniLM-L6-v2",
        description="Hugging Face name or local path; the MiniLM name resolves to the packaged copy.",
    )
    pooling: Pooling = "auto"
    device: Device = "auto"
    dtype: ModelDtype = "auto"
    window_tokens: int | None = Field(None, ge=16, description="Tokens per embedding window (None: model max).")
    window_overlap: float = Field(0.5, ge=0.0, lt=1.0)
    batch_tokens: int = Field(16384, ge=256, description="Upper bound on padded tokens per forward pass.")
    query_instruction: str | None = Field(
        None, description="Task for decoder embedders: 'Instruct: {task}\\nQuery:{query}'."
    )
    max_query_tokens: int = Field(512, ge=1)

    # --- recall and spans --------------------------------------------------------------------------
    recall_k: int = Field(10, ge=1)
    recall_level: RecallLevel = "doc"
    recall_maxsim: bool = Field(False, description="Re-rank recalled documents by Qdrant MaxSim over `tokens`.")
    fetch_segments: int = Field(
        4,
        ge=0,
        description="Fetch and score only the best N segments of the recalled documents (0: whole documents).",
    )
    fetch_rank: FetchRank = Field(
        "auto",
        description="How fetch_segments ranks segments: Qdrant MaxSim over `tokens`, or pooled cosine; "
        "auto: MaxSim when the collection's layout and the embedder allow it.",
    )
    cache_mb: int = Field(1024, ge=0, description="Host/GPU cache of decoded token matrices.")
    top: int = Field(5, ge=1)
    sigma: float = Field(4.0, ge=0.0)
    threshold: float = 0.39
    threshold_mode: ThresholdMode = "absolute"
    relative_margin: float = Field(0.05, ge=0.0, description="relative mode: keep tokens within this of the best.")
    delta: int = Field(170, ge=0)
    min_span_size: int = Field(15, ge=1)
    max_extension: int = Field(32, ge=0)
    boundary: Boundary = Field(
        "sentences", description='Span ends: "sentences" (real boundaries) or "separators" (original: \\n \\t .).'
    )
    span_method: SpanMethod = Field(
        "sentences",
        description="threshold: the original method (smooth, threshold, cluster, extend); sentences: rank the "
        "sentences of candidate documents by their pooled in-context token vectors, re-embed the best alone.",
    )
    rerank_k: int = Field(40, ge=0, description="sentences: best candidates re-embedded alone per query (0: none).")
    rerank_weight: float = Field(0.7, ge=0.0, le=1.0, description="sentences: weight of the alone cosine.")
    token_weight: float = Field(0.0, ge=0.0, le=1.0, description="sentences: weight of the smoothed token maximum.")
    length_penalty: float = Field(
        0.0,
        ge=0.0,
        description="sentences: subtract this x ln(words) from every candidate's final score: shorter spans for "
        "some hit@1 (squad2-dev, MiniLM: 0.02 gives 24.6 words and .630 hit@1 against 26.0 and .649 at 0).",
    )
    min_sentence_tokens: int = Field(4, ge=1, description="sentences: shorter sentences (headings) are skipped.")
    rerank_cache: int = Field(16384, ge=0, description="sentences: alone embeddings kept (LRU by text).")

    @model_validator(mode="after")
    def _server_options_need_url(self) -> Settings:
        if self.url is None and self.api_key is not None:
            raise ValueError("api_key is set but url is not: set CHUNKLESS_URL to use a Qdrant server")
        if (self.storage_reduce == "none") != (self.storage_dim is None):
            raise ValueError("storage_dim is set exactly when storage_reduce is pca or truncate")
        return self

    @property
    def collection_path(self) -> Path:
        """Folder of this collection inside the embedded store."""
        return self.store_path / self.collection
