"""Storage-cost experiment: bytes per token measured in the store against span quality.

    chunkless storage-report ../shared/benchmarks/squad2-dev --out storage_report
    python scripts/storage_experiment.py ../shared/benchmarks/squad2-dev --out storage_report

The corpus is embedded once (cached as .npz) and every storage layout (indexer.codec) is written
into its own Qdrant Edge store. Per layout it measures, from the store's files (allocated blocks):
all files, all files but the write-ahead log (bounded in size, so not a per-token cost at scale),
and the token-vector files alone; the span engine's decoded cache per token (RAM); hit@1, hit@5 and
evidence F1 on a fixed sample of answerable questions; and warm latency per query (query vectors
precomputed, so it times recall + fetch + score + spans, which is where layouts differ). A 128-token
chunk index (one pooled vector per chunk, in a real Edge store) is the reference row.

Writes table.md, results.csv, projection.md and quality_vs_bytes.png to --out. `storage_report` runs it;
the command's flags are declared with the others in retriever/cli.
"""

from __future__ import annotations

import csv
import hashlib
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from indexer.codec import pool_document
from indexer.embedders import DelegatingEmbedder, EncodedQuery, TokenEmbedder, load_embedder
from indexer.store import POINT_NAMESPACE, EdgeBackend, NewPoint, VectorSpace, open_or_create_store, open_store
from retriever.evaluation.baselines import query_vectors, token_offsets
from retriever.evaluation.benchmark import Benchmark, BenchQuery, Hit, load_benchmark, score
from retriever.evaluation.evaluate import run_chunkless
from retriever.methods import MethodFactory, ThresholdMethod, ThresholdOptions
from retriever.methods.threshold import ThresholdMode
from retriever.search import Retriever
from schemas.layout import StorageLayout, parse_layout
from schemas.models import EmbeddedDocument, LoadedDocument
from schemas.settings import Settings

SWEEP = [
    "float32",
    "float16",
    "int8",
    "int4",
    "binary",
    "float16-pca192",
    "int8-pca192",
    "float16-pca128",
    "int8-pca128",
    "float16-pca64",
    "int8-pca64",
    "binary-pca256",
    "binary-pca384",
    "int8-truncate192",
    "int8-truncate128",
    "float16-pool2",
    "int8-pool2",
    "int8-pool3",
    "int8-pool4",
    "int4-pool2",
    "int4-pool3",
    "binary-pool2",
    "int8-pca128-pool2",
]
CHUNK_TOKENS = 128
SPAN_FIELDS = ["span_method", "recall_k", "sigma", "threshold", "delta"]
SPAN_FIELDS += ["min_span_size", "max_extension", "boundary", "rerank_k", "min_sentence_tokens"]
PROJECT_MODELS = [("Qwen3-Embedding-0.6B", 1024), ("Jina v4 multivector", 128)]
PROJECT_TOKENS = [1_000_000, 100_000_000, 1_000_000_000]
WRITEUP = (3_597, 1024, 2, 7_366_656)  # tokens, dims, bytes per number, bytes: the original write-up's manual


@dataclass
class Row:
    config: str
    disk_bpt: float  # all store files / model tokens
    disk_no_wal_bpt: float  # all store files but the WAL / model tokens
    vectors_bpt: float  # token-vector files / model tokens
    ram_bpt: float  # decoded span-engine cache / model tokens
    hit1: float
    hit5: float
    f1: float
    words: float
    no_span: float
    warm_ms: float


# --- corpus and queries, embedded once ------------------------------------------------------------
def _cache_key(model: str, texts: Sequence[str]) -> str:
    h = hashlib.sha256(model.encode())
    for t in texts:
        h.update(hashlib.sha256(t.encode()).digest())
    return h.hexdigest()[:16]


def embed_corpus(
    bench: Benchmark, embedder: TokenEmbedder, cache_dir: Path, settings: Settings
) -> list[EmbeddedDocument]:
    """Token matrices of every document, from an .npz cache when present."""
    # the windowing decides every token's vector, so it is part of the key
    how = f"{embedder.name}|{settings.model.window_tokens}|{settings.model.window_overlap}"
    path = cache_dir / f"corpus-{_cache_key(how, [d.text for d in bench.docs])}.npz"
    loaded = [
        LoadedDocument(
            doc_id=d.doc_id,
            source=d.doc_id,
            title=d.title,
            text=d.text,
            content_hash=hashlib.sha256(d.text.encode()).hexdigest(),
        )
        for d in bench.docs
    ]
    if not path.is_file():
        t0 = time.perf_counter()
        embs = embedder.embed_documents(loaded)
        arrays = {}
        for i, e in enumerate(embs):
            for k in ("vectors", "offsets", "pooled", "window_pooled", "window_bounds"):
                arrays[f"{k}_{i}"] = getattr(e, k)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **arrays)
        print(f"embedded {len(embs)} documents in {time.perf_counter() - t0:.0f}s -> {path}", file=sys.stderr)
    z = np.load(path)
    return [
        EmbeddedDocument(
            doc=doc,
            vectors=z[f"vectors_{i}"],
            offsets=z[f"offsets_{i}"],
            pooled=z[f"pooled_{i}"],
            window_pooled=z[f"window_pooled_{i}"],
            window_bounds=z[f"window_bounds_{i}"],
        )
        for i, doc in enumerate(loaded)
    ]


def embed_queries(queries: list[BenchQuery], embedder: TokenEmbedder, cache_dir: Path) -> dict[str, np.ndarray]:
    """Query vectors by query text, from an .npy cache when present."""
    path = cache_dir / f"queries-{_cache_key(embedder.name, [q.query for q in queries])}.npy"
    if not path.is_file():
        np.save(path, query_vectors(embedder, [q.query for q in queries]))
    return dict(zip((q.query for q in queries), np.load(path), strict=True))


class PrecomputedQueries(DelegatingEmbedder):
    """The real embedder, with query vectors served from a table: every layout sees identical queries."""

    def __init__(self, embedder: TokenEmbedder, vectors: dict[str, np.ndarray]) -> None:
        super().__init__(embedder)
        self.vectors = vectors

    def embed_query(self, query: str) -> np.ndarray:
        return self.vectors[query]

    def embed_queries(self, queries: Sequence[str]) -> np.ndarray:
        return np.stack([self.vectors[q] for q in queries]) if queries else np.zeros((0, self.dim), np.float32)

    def encode_queries(self, queries: Sequence[str]) -> list[EncodedQuery]:
        # the table's pooled vectors; no token vectors, so search embeds them only where it needs them
        return [EncodedQuery(self.vectors[q], None) for q in queries]


# --- measuring ------------------------------------------------------------------------------------
def file_bytes(folder: Path) -> dict[str, int]:
    """Allocated bytes of a store's files: all, the write-ahead log, the token-vector storage."""
    out = {"all": 0, "wal": 0, "tokens": 0}
    for f in folder.rglob("*"):
        if not f.is_file():
            continue
        b = f.stat().st_blocks * 512  # allocated, not st_size: mmap files are sparse
        out["all"] += b
        parts = f.relative_to(folder).parts
        out["wal"] += b * ("wal" in parts)
        out["tokens"] += b * ("vector_storage-tokens" in parts)
    return out


def timed_hits(r: Retriever, queries: list[BenchQuery], latency_n: int) -> tuple[list[list[Hit]], float]:
    """Hits per query through the eval harness (fills the cache), then warm ms/query over the first `latency_n`."""
    results, _ = run_chunkless(r, queries)
    t0 = time.perf_counter()
    for q in queries[:latency_n]:
        r.search(q.query, top=5)
    return results, 1e3 * (time.perf_counter() - t0) / max(1, min(latency_n, len(queries)))


def run_layout(
    layout: StorageLayout,
    docs: list[EmbeddedDocument],
    queries: list[BenchQuery],
    embedder: PrecomputedQueries,
    base: Settings,
    work: Path,
    latency_n: int,
    span_method: MethodFactory | None = None,
) -> Row:
    """Write the corpus in this layout into a fresh Edge store, measure its files, evaluate it (with the
    `span_method` factory when given, else the one `base` names)."""
    settings = base.updated(
        store_path=work / layout.name,
        storage_dtype=layout.dtype,
        storage_reduce=layout.reduce,
        storage_dim=layout.dim,
        storage_pool=layout.pool,  # the Retriever rescales span lengths to rows itself
    )
    tokens = sum(d.n_tokens for d in docs)
    e = embedder
    store = open_or_create_store(
        settings.store, e.name, e.dim, e.pooling, e.backend, e.vector_kind, settings.spans.boundary
    )
    if layout.needs_fit:  # fit on rows from every document, not just the first one written
        store.fit_codec(np.concatenate([pool_document(d, layout.pool).vectors for d in docs]))
    for d in docs:
        store.write_document(d)
    store.close()  # flushed and closed: what a finished ingest leaves on disk
    fb = file_bytes(settings.store.collection_path)
    with Retriever(settings, embedder=embedder, store=open_store(settings.store), span_method=span_method) as r:
        results, warm_ms = timed_hits(r, queries, latency_n)
        cached, cached_tokens = decoded_bytes(r, layout.pool)
    shutil.rmtree(settings.store.store_path, ignore_errors=True)
    s = score(queries, results)
    return Row(
        layout.name,
        fb["all"] / tokens,
        (fb["all"] - fb["wal"]) / tokens,
        fb["tokens"] / tokens,
        cached / max(cached_tokens, 1),
        s.hit1,
        s.hit5,
        s.f1,
        s.words,
        s.no_span,
        warm_ms,
    )


def decoded_bytes(r: Retriever, pool: int) -> tuple[int, int]:
    """What the span engine holds per document once decoded: (bytes, model tokens), over the whole collection.

    Counted as the fetch cache counts a segment: rows on the scoring device, the text, 24 bytes of offsets
    and flags per row.
    """
    docs = r.fetcher.fetch(r.store.headers())
    nbytes = sum(sum(p.numel() * p.element_size() for p in d.parts) + len(d.text) + 24 * d.n for d in docs)
    return nbytes, pool * sum(d.n for d in docs)


def chunk_baseline(
    bench: Benchmark, embedder: TokenEmbedder, queries: list[BenchQuery], qvec: dict[str, np.ndarray], work: Path
) -> tuple[Row, int]:
    """128-token chunks embedded alone, one pooled vector each, in a real Edge store; top-5 chunks are the spans."""
    chunks: list[tuple[str, int, int]] = []
    tokens = 0
    for d in bench.docs:
        off = token_offsets(embedder, d.text)
        tokens += len(off)
        for i in range(0, len(off), CHUNK_TOKENS):
            chunks.append((d.doc_id, int(off[i, 0]), int(off[min(i + CHUNK_TOKENS, len(off)) - 1, 1])))
    texts = {d.doc_id: d.text for d in bench.docs}
    vecs = embedder.embed_texts([texts[c][s:e] for c, s, e in chunks])
    backend = EdgeBackend(work / "chunks" / "c")
    space = VectorSpace(size=embedder.dim, multivector=False, datatype="float32", distance="cosine", hnsw=True)
    backend.create({"pooled": space}, {"chunkless": {}, "spaces": {"pooled": vars(space)}}, ["doc_id"])
    points = [
        NewPoint(
            str(uuid.uuid5(POINT_NAMESPACE, f"chunk{i}")),
            {"pooled": v},
            {"doc_id": c, "start": s, "end": e, "text": texts[c][s:e]},
        )
        for i, ((c, s, e), v) in enumerate(zip(chunks, vecs, strict=True))
    ]
    for i in range(0, len(points), 256):
        backend.upsert(points[i : i + 256])

    def search(q: BenchQuery) -> list[Hit]:
        recs = backend.query("pooled", qvec[q.query], 5, None, True)
        return [
            Hit(p.payload["doc_id"], p.payload["start"], p.payload["end"], p.payload["text"], p.score) for p in recs
        ]

    results = [search(q) for q in queries]
    t0 = time.perf_counter()
    for q in queries:
        search(q)
    warm_ms = 1e3 * (time.perf_counter() - t0) / max(1, len(queries))
    backend.close()
    fb = file_bytes(work / "chunks")
    shutil.rmtree(work / "chunks", ignore_errors=True)
    s = score(queries, results)
    name = f"chunks-{CHUNK_TOKENS} (reference)"
    row = Row(
        name,
        fb["all"] / tokens,
        (fb["all"] - fb["wal"]) / tokens,
        embedder.dim * 4 / CHUNK_TOKENS,
        embedder.dim * 4 / CHUNK_TOKENS,
        s.hit1,
        s.hit5,
        s.f1,
        s.words,
        s.no_span,
        warm_ms,
    )
    return row, len(chunks)


def writeup_check(work: Path) -> tuple[int, int, int]:
    """A 3,597-token 1024-d document at float16 in a real store: (vector data file, all token-vector files, paper)."""
    tokens, dim, _, paper = WRITEUP
    rng = np.random.default_rng(0)
    v = rng.standard_normal((tokens, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    text = " ".join(["w"] * tokens)
    off = np.stack([np.arange(tokens) * 2, np.arange(tokens) * 2 + 1], axis=1).astype(np.int64)
    doc = LoadedDocument(doc_id="manual", source="manual", title="manual", text=text, content_hash="0" * 64)
    emb = EmbeddedDocument(
        doc=doc, vectors=v, offsets=off, pooled=v[0], window_pooled=v[:1], window_bounds=np.array([[0, tokens]])
    )
    settings = Settings(store_path=work / "writeup", storage_dtype="float16", device="cpu")
    store = open_or_create_store(settings.store, "synthetic-1024", dim, "last")
    store.write_document(emb)
    store.close()
    measured = file_bytes(settings.store.collection_path)["tokens"]
    vectors = settings.store.collection_path.rglob("vector_storage-tokens/vectors/*")
    data = max(f.stat().st_blocks * 512 for f in vectors)
    shutil.rmtree(work / "writeup", ignore_errors=True)
    return data, measured, paper


# --- reporting ------------------------------------------------------------------------------------
def pareto(rows: list[Row], x: str) -> set[str]:
    """Configs no other config beats on both fewer bytes (`x`) and higher hit@1."""
    front = set()
    for a in rows:
        xa = getattr(a, x)
        if not any(getattr(b, x) <= xa and b.hit1 >= a.hit1 and (getattr(b, x) < xa or b.hit1 > a.hit1) for b in rows):
            front.add(a.config)
    return front


def table(rows: list[Row], front: set[str]) -> str:
    head = (
        "| config | disk B/token | disk B/token excl. WAL | token vectors B/token | RAM B/token (decoded cache) "
        "| hit@1 | hit@5 | evidence F1 | words | no span | warm ms/query | Pareto |\n" + "|---" * 12 + "|"
    )
    lines = [
        f"| {r.config} | {r.disk_bpt:.0f} | {r.disk_no_wal_bpt:.0f} | {r.vectors_bpt:.1f} | {r.ram_bpt:.0f} "
        f"| {r.hit1:.3f} | {r.hit5:.3f} | {r.f1:.3f} | {r.words:.0f} | {r.no_span:.0%} | {r.warm_ms:.1f} "
        f"| {'*' if r.config in front else ''} |"
        for r in rows
    ]
    return "\n".join([head, *lines])


def projection(rows: list[Row], winners: list[str]) -> str:
    """Disk (store files excl. WAL) and RAM (token vectors held in memory) at 1M/100M/1B tokens.

    Vector bytes follow the layout at the target dimension; the measured non-vector overhead per
    token (offsets, text, int8 scales, indexes) is carried over, since it does not depend on the model.
    """
    by = {r.config: r for r in rows}
    lines = [
        "| model (dim) | config | vector B/token | disk B/token | disk @1M | disk @100M | disk @1B "
        "| RAM @1M | RAM @100M | RAM @1B |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, dim in PROJECT_MODELS:
        for name in winners:
            layout = StorageLayout.parse(name)
            if layout.dim is not None and layout.dim >= dim:
                continue  # no reduction left at this dimension
            r = by[name]
            vec = layout.vector_bytes_per_token(dim)
            disk = vec + (r.disk_no_wal_bpt - r.vectors_bpt)
            cells = [_human(disk * n) for n in PROJECT_TOKENS] + [_human(vec * n) for n in PROJECT_TOKENS]
            lines.append(f"| {model} ({dim}) | {name} | {vec:.0f} | {disk:.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _human(b: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if b < 1000:
            return f"{b:.1f} {unit}"
        b /= 1000
    return f"{b:.1f} PB"


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5), sharey=True)
    for ax, x, label in (
        (axes[0], "vectors_bpt", "token-vector bytes per token (store files, log)"),
        (axes[1], "disk_no_wal_bpt", "bytes per token on disk, all store files but the WAL (log)"),
    ):
        front = pareto([r for r in rows if "chunks" not in r.config], x)
        for r in rows:
            ref = "chunks" in r.config
            ax.scatter(
                getattr(r, x),
                r.hit1,
                marker="*" if ref else "o",
                s=140 if ref else 36,
                color="tab:gray" if ref else ("tab:red" if r.config in front else "tab:blue"),
                zorder=3,
            )
            ax.annotate(r.config, (getattr(r, x), r.hit1), fontsize=7, xytext=(3, 3), textcoords="offset points")
        pts = sorted((getattr(r, x), r.hit1) for r in rows if r.config in front)
        ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", color="tab:red", label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right")
    axes[0].set_ylabel("hit@1")
    fig.suptitle("Span quality against storage cost (Qdrant Edge store)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- the report -----------------------------------------------------------------------------------
def storage_report(
    bench_dir: Path,
    *,
    out: Path,
    configs: Sequence[str],
    sample: int,
    seed: int,
    model: str | None,
    device: str,
    span_method: str,
    rerank_k: int,
    threshold_mode: ThresholdMode,
    latency_queries: int,
    cache_dir: Path,
    chunks: bool,
) -> None:
    """Run the experiment; writes table.md (with the projection), results.csv and quality_vs_bytes.png to `out`.

    What `chunkless storage-report` runs; its flags (and their defaults) are declared with the command.

    Args:
        bench_dir: benchmark folder (corpus.jsonl + queries.jsonl).
        out: folder for the table, CSV and plot (made if missing).
        configs: storage layout names, e.g. ``["int8", "binary-pool2"]`` (`SWEEP` is every one measured).
        sample: answerable questions evaluated, drawn with `seed` (0: all).
        seed: seed of the sample.
        model: embedding model (None: CHUNKLESS_MODEL or the default).
        device, span_method, rerank_k, threshold_mode: the settings of every layout's run, identical for
            all so that the differences come from storage.
        latency_queries: questions re-run warm to time.
        cache_dir: where the corpus and query vectors are cached between runs.
        chunks: also measure the 128-token chunk reference row.

    Raises:
        InputError: the benchmark folder is missing a file or holds a bad line.
        SettingsError: a layout in `configs` (named as --configs) or another setting is invalid.
    """
    over = {
        "device": device,
        "span_method": span_method,
        "rerank_k": rerank_k,
        **({"model": model} if model else {}),
    }
    base = Settings(**over)  # the same span settings for every layout: differences come from storage
    options = ThresholdOptions(mode=threshold_mode)  # an experiment's option, not a setting
    method = ThresholdMethod.with_options(options) if span_method == "threshold" else None
    bench = load_benchmark(bench_dir)
    queries = bench.answerable(sample, seed)
    layouts = [parse_layout(c.strip(), "--configs") for c in configs if c.strip()]
    out.mkdir(parents=True, exist_ok=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    embedder = load_embedder(base)
    docs = embed_corpus(bench, embedder, cache_dir, base)
    qe = PrecomputedQueries(embedder, embed_queries(queries, embedder, cache_dir))
    tokens = sum(d.n_tokens for d in docs)
    print(f"{len(docs)} documents, {tokens} tokens, {len(queries)} questions, {embedder.dim}-d", file=sys.stderr)

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="chunkless-storage-") as tmp:
        work = Path(tmp)
        for layout in layouts:
            t0 = time.perf_counter()
            row = run_layout(layout, docs, queries, qe, base, work, latency_queries, method)
            rows.append(row)
            print(
                f"{row.config:>20}: {row.vectors_bpt:7.1f} B/token vectors, {row.disk_no_wal_bpt:7.1f} on disk, "
                f"hit@1 {row.hit1:.3f} ({time.perf_counter() - t0:.0f}s)",
                file=sys.stderr,
            )
        chunk_row, n_chunks = chunk_baseline(bench, embedder, queries, qe.vectors, work) if chunks else (None, 0)
        data, measured, paper = writeup_check(work)

    front = pareto(rows, "vectors_bpt")
    all_rows = rows + ([chunk_row] if chunk_row else [])
    ref = next((r for r in rows if r.config == "float32"), None)
    goal = [r for r in rows if ref and r.vectors_bpt <= 128 and r.hit1 >= ref.hit1 - 0.02]
    winners = sorted(
        {*front, *(r.config for r in goal)}, key=lambda c: -next(r.vectors_bpt for r in rows if r.config == c)
    )

    md = [
        f"# Storage experiment: {bench.name}, {embedder.name} ({embedder.dim}-d)",
        "",
        f"{len(docs)} documents, {tokens} model tokens, {len(queries)} answerable questions (seed {seed}); "
        "bytes are allocated blocks of the store's files per model token. RAM is the span engine's decoded "
        "cache (float32 rows at the model's dimension, offsets, text) per token; Qdrant itself memory-maps "
        "the token-vector files, so holding them in RAM costs the token-vector column. Warm ms/query excludes "
        "query embedding (precomputed, identical for every layout). Pareto: on token-vector bytes vs hit@1.",
        "",
        table(all_rows, front),
        "",
        "Span settings (identical for every layout; sigma, delta, min_span_size, max_extension and "
        "min_sentence_tokens are divided by k for poolk by the Retriever, so they keep their length in model tokens): "
        + ", ".join(f"{k}={base.flat()[k]}" for k in SPAN_FIELDS)
        + f", threshold_mode={options.mode}, relative_margin={options.relative_margin}"
        + ".",
        "",
    ]
    if chunk_row:
        md.append(f"Chunk reference: {n_chunks} chunks of {CHUNK_TOKENS} tokens; token-vector column is on paper.\n")
    if ref:
        verdict = (
            ", ".join(f"{r.config} ({r.vectors_bpt:.0f} B/token, hit@1 {r.hit1:.3f})" for r in goal) if goal else "none"
        )
        md.append(f"Goal (<= 128 token-vector B/token, hit@1 >= float32 {ref.hit1:.3f} - 0.02): {verdict}.\n")
    md += [
        f"Write-up check: {WRITEUP[0]:,} tokens x {WRITEUP[1]} dims x {WRITEUP[2]} bytes = {paper:,} B on paper; "
        f"a float16 Edge store holds that document's token vectors in a {data:,} B data file (4 KiB blocks), "
        f"{measured:,} B with Qdrant's multivector offsets and flags.",
        "",
        "## Projection (disk: store files but the WAL; RAM: token vectors held in memory)",
        "",
        projection(rows, winners),
        "",
    ]
    text = "\n".join(md)
    (out / "table.md").write_text(text)
    with (out / "results.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*asdict(all_rows[0]).keys(), "pareto"])
        w.writeheader()
        for r in all_rows:
            w.writerow({**asdict(r), "pareto": r.config in front})
    plot(all_rows, out / "quality_vs_bytes.png")
    print(text)
    print(f"wrote {out}/table.md, results.csv, quality_vs_bytes.png in {time.perf_counter() - t_start:.0f}s")
