"""The commands that work on a local store or benchmark: ingest, search, list, stats, delete, compact,
explain, eval, storage-report.

Each takes the parsed arguments and returns the exit status. Heavy modules (torch, the search engine,
the ingest pipeline) are imported inside the command that needs them, so `chunkless --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path

from retriever.cli.flags import SET, settings_of
from retriever.cli.printing import one_line, print_compact, print_documents, print_search, print_stats, terminal_safe
from schemas.errors import EXIT_FILES_FAILED, QueryError, SettingsError
from schemas.query import check_query


def cmd_ingest(args: argparse.Namespace) -> int:
    from indexer.ingest import ingest
    from retriever.serve.holder import ReadEndpoint

    settings = settings_of(args)
    bar = not args.quiet and sys.stderr.isatty()  # a bar in a log file is noise: plain lines there instead
    if not bar:
        logging.getLogger("indexer.ingest").setLevel(logging.INFO)
    if args.engine == "ray":
        from indexer.distributed import RayOptions, ray_ingest

        if args.actors is not None and args.actors < 1:
            raise SettingsError(f"--actors {args.actors}: give 1 or more embedding actors")
        options = RayOptions(address=args.ray_address, actors=args.actors)
        report = ray_ingest(args.paths, settings, options, progress=bar, id_from=args.id_from, doc_id=args.doc_id)
    elif args.ray_address is not None or args.actors is not None:
        raise SettingsError("--ray-address and --actors need --engine ray")
    else:
        # searches, lists and stats of this store from other processes are answered while the run holds it
        reads = ReadEndpoint(settings, role="ingest")
        report = ingest(args.paths, settings, progress=bar, id_from=args.id_from, doc_id=args.doc_id, reads=reads)
    msg = (
        f"ingested {report.documents} documents ({report.tokens} tokens, {report.replaced} replaced, "
        f"{report.skipped_unchanged} unchanged, {report.bytes_stored / 1e6:.1f} MB of vectors) in "
        f"{report.seconds:.1f}s, {report.tokens_per_second:.0f} tokens/s; {len(report.failures)} failed"
    )
    print(msg, file=sys.stderr)
    for f in report.failures:
        print(f"  failed: {terminal_safe(str(f.path))}: {terminal_safe(f.reason)}", file=sys.stderr)
    if args.report:
        Path(args.report).write_text(json.dumps(report.to_json_dict(), indent=2))
    return EXIT_FILES_FAILED if report.failures else 0


def cmd_search(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    check_query(args.query, settings.serve.max_query_chars)  # before the model loads
    from retriever.search import Retriever

    with Retriever(settings) as r:
        resp = r.search(args.query, top=settings.spans.top)
    print_search(resp, args.json)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """Every document of the collection: doc_id, source, tokens, when it was ingested."""
    from indexer.store import open_store

    store = open_store(settings_of(args).store, read_only=True)  # a read-only or full disk still lists
    try:
        heads = store.headers()
    finally:
        store.close()
    rows = [
        {
            "doc_id": h.doc_id,
            "source": h.source,
            "title": h.title,
            "n_tokens": h.n_tokens,
            # 0: a header written before ingest times were recorded
            "ingested_at": datetime.fromtimestamp(h.ingested_at, UTC).isoformat(timespec="seconds")
            if h.ingested_at
            else None,
        }
        for _, h in sorted(heads.items())
    ]
    print_documents(rows, args.json)
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from indexer.store import open_store

    store = open_store(settings_of(args).store, read_only=True)
    try:
        st = store.stats()
    finally:
        store.close()
    print_stats(st, args.json)
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from indexer.store import COMPACT_AFTER_FRACTION, open_store

    settings = settings_of(args)
    store = open_store(settings.store)
    try:
        target = args.target
        heads = store.headers()
        ids = [target] if target in heads else [d for d, h in heads.items() if h.source == str(Path(target).resolve())]
        if not ids:
            raise QueryError(
                f"no document '{target}' (doc_id or path) in the collection; see the doc_ids with 'chunkless list'"
            )
        for d in ids:
            store.delete_document(d)
            print(f"deleted {terminal_safe(d)}", file=sys.stderr)
        # a server vacuums by itself; the embedded store only when asked, at a cost that follows its size
        total = sum(h.n_tokens for h in heads.values())
        if settings.store.url is None and sum(heads[d].n_tokens for d in ids) >= COMPACT_AFTER_FRACTION * total:
            print_compact(store.compact())
    finally:
        store.close()
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    """Reclaim the disk space of deleted documents; prints bytes before/after (or JSON with --json)."""
    from indexer.store import open_store

    store = open_store(settings_of(args).store)
    try:
        rep = store.compact()
    finally:
        store.close()
    if args.json:
        print(json.dumps({"bytes_before": rep.bytes_before, "bytes_after": rep.bytes_after, "seconds": rep.seconds}))
    else:
        print_compact(rep)
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """Per-token relevance of one document for one query: a picture (--out) and/or the arrays (--json)."""
    from retriever.search import Retriever

    settings = settings_of(args)
    with Retriever(settings) as r:
        ex = r.explain(args.query, args.doc_id)
    if args.out:
        from retriever.cli.plots import plot_explanation

        print(f"wrote {plot_explanation(ex, args.query, Path(args.out))}", file=sys.stderr)
    if args.json:
        body = {
            "query": args.query,
            "doc_id": ex.doc_id,
            "threshold": ex.threshold,
            "starts": ex.starts.tolist(),
            "raw": ex.raw.tolist(),
            "smoothed": ex.smoothed.tolist(),
            "page_starts": ex.page_starts,
            "spans": [s.model_dump() for s in ex.spans],
        }
        print(json.dumps(body, ensure_ascii=False))
    elif not args.out:
        print(
            f"{one_line(ex.doc_id, 300)}: {len(ex.raw)} tokens, threshold {ex.threshold:.3f}, {len(ex.spans)} span(s)"
        )
        for s in ex.spans:
            print(f"  {s.score:.3f} chars {s.start}-{s.end}: " + one_line(s.text, 200))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from retriever.evaluation import evaluate, load_benchmark

    settings = settings_of(args)
    from retriever.evaluation.pdf_manuals import evaluate_pdf_manuals, is_pdf_benchmark

    if is_pdf_benchmark(args.bench_dir):  # docs/*.pdf + queries.jsonl with gold text and pages
        pdf = evaluate_pdf_manuals(
            args.bench_dir,
            settings,
            store_dir=getattr(args, SET + "store_path"),  # only a store named on the command line is reused
            sample=args.sample,
            baselines=not args.no_baselines,
            log=lambda m: print(m, file=sys.stderr),
        )
        print(pdf.table())
        if args.results:
            pdf.write_results(Path(args.results))
        return 0
    bench = load_benchmark(args.bench_dir)
    report = evaluate(
        bench,
        settings,
        store_dir=getattr(args, SET + "store_path"),  # only a store named on the command line is reused
        sample=args.sample,
        baselines=not args.no_baselines,
        log=lambda m: print(m, file=sys.stderr),
    )
    print(report.table())
    if args.results:
        report.write_results(Path(args.results))
    return 0


def cmd_storage_report(args: argparse.Namespace) -> int:
    """Bytes per token in the store against span quality, per storage layout (see retriever.evaluation.storage)."""
    from retriever.evaluation.storage import SWEEP, storage_report

    storage_report(
        args.bench,
        out=args.out,
        configs=SWEEP if args.configs is None else args.configs.split(","),
        sample=args.sample,
        seed=args.seed,
        model=args.model,
        device=args.device,
        span_method=args.span_method,
        rerank_k=args.rerank_k,
        threshold_mode=args.threshold_mode,
        latency_queries=args.latency_queries,
        cache_dir=args.cache_dir,
        chunks=not args.no_chunks,
    )
    return 0
