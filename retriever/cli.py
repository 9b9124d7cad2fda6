"""The `chunkless` command: ingest, search, stats, delete, compact, eval, explain."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from schemas.errors import ChunklessError
from schemas.settings import Settings

if TYPE_CHECKING:
    from indexer.store import CompactReport


def _settings(args: argparse.Namespace) -> Settings:
    """Settings from the environment, with the flags given on the command line on top."""
    flags = {
        "store": "store_path",
        "model": "model",
        "collection": "collection",
        "dtype": "storage_dtype",
        "url": "url",
    }
    over = {field: getattr(args, flag) for flag, field in flags.items() if getattr(args, flag, None) is not None}
    if getattr(args, "storage", None):  # a whole storage layout by name, e.g. binary or int8-pca128-pool2
        from schemas.layout import StorageLayout

        lay = StorageLayout.parse(args.storage)
        over |= {"storage_dtype": lay.dtype, "storage_reduce": lay.reduce, "storage_dim": lay.dim}
        over["storage_pool"] = lay.pool
    return Settings(**over)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store", type=Path, help="embedded store folder (default: CHUNKLESS_STORE_PATH or ./chunkless_store)"
    )
    p.add_argument("--model", help="embedding model name or path (default: CHUNKLESS_MODEL)")
    p.add_argument("--collection", help="collection name (default: chunkless)")
    p.add_argument("--url", help="Qdrant server URL instead of the embedded store")


def cmd_ingest(args: argparse.Namespace) -> int:
    from indexer.pipeline import ingest

    settings = _settings(args)
    bar = not args.quiet and sys.stderr.isatty()  # a bar in a log file is noise: plain lines there instead
    if not bar:
        logging.getLogger("indexer.pipeline").setLevel(logging.INFO)
    report = ingest(args.paths, settings, progress=bar)
    msg = (
        f"ingested {report.documents} documents ({report.tokens} tokens, {report.replaced} replaced, "
        f"{report.skipped_unchanged} unchanged, {report.bytes_stored / 1e6:.1f} MB of vectors) in "
        f"{report.seconds:.1f}s, {report.tokens_per_second:.0f} tokens/s; {len(report.failures)} failed"
    )
    print(msg, file=sys.stderr)
    for f in report.failures:
        print(f"  failed: {f.path}: {f.reason}", file=sys.stderr)
    if args.report:
        Path(args.report).write_text(json.dumps(report.to_json_dict(), indent=2))
    return 1 if report.failures else 0


def cmd_search(args: argparse.Namespace) -> int:
    from retriever.search import Retriever

    settings = _settings(args)
    with Retriever(settings) as r:
        resp = r.search(args.query, top=args.top)
    if args.json:
        print(json.dumps({"query": resp.query, "spans": [s.model_dump() for s in resp.spans]}, ensure_ascii=False))
        return 0
    if not resp.spans:
        print("no span passed the threshold; try another wording or a lower --threshold", file=sys.stderr)
    for i, s in enumerate(resp.spans, 1):
        pages = ",".join(map(str, s.pages))
        print(f"[{i}] {s.score:.3f}  {s.doc_id}  chars {s.start}-{s.end}  page {pages}")
        print("    " + " ".join(s.text.split())[:600])
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from indexer.store import open_store

    store = open_store(_settings(args).store, read_only=True)
    try:
        st = store.stats()
    finally:
        store.close()
    print(json.dumps(st, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in st.items()))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from indexer.store import COMPACT_AFTER_FRACTION, open_store

    settings = _settings(args)
    store = open_store(settings.store)
    try:
        target = args.target
        heads = store.headers()
        ids = [target] if target in heads else [d for d, h in heads.items() if h.source == str(Path(target).resolve())]
        if not ids:
            print(
                f"chunkless: error: no document '{target}' (doc_id or path) in the collection; see 'chunkless stats'",
                file=sys.stderr,
            )
            return 2
        for d in ids:
            store.delete_document(d)
            print(f"deleted {d}", file=sys.stderr)
        # a server vacuums by itself; the embedded store only when asked, at a cost that follows its size
        total = sum(h.n_tokens for h in heads.values())
        if settings.store.url is None and sum(heads[d].n_tokens for d in ids) >= COMPACT_AFTER_FRACTION * total:
            _print_compact(store.compact())
    finally:
        store.close()
    return 0


def _print_compact(rep: CompactReport) -> None:
    """One line on stderr: bytes on disk before and after a compaction, or that the server does it."""
    if rep.bytes_before is None or rep.bytes_after is None:
        msg = f"asked the server to vacuum deleted points ({rep.seconds:.1f}s); a server reports no disk bytes"
        print(msg, file=sys.stderr)
        return
    print(
        f"compacted: {rep.bytes_before / 1e6:.1f} MB -> {rep.bytes_after / 1e6:.1f} MB on disk "
        f"({(rep.bytes_before - rep.bytes_after) / 1e6:.1f} MB reclaimed) in {rep.seconds:.1f}s",
        file=sys.stderr,
    )


def cmd_compact(args: argparse.Namespace) -> int:
    """Reclaim the disk space of deleted documents; prints bytes before/after (or JSON with --json)."""
    from indexer.store import open_store

    store = open_store(_settings(args).store)
    try:
        rep = store.compact()
    finally:
        store.close()
    if args.json:
        print(json.dumps({"bytes_before": rep.bytes_before, "bytes_after": rep.bytes_after, "seconds": rep.seconds}))
    else:
        _print_compact(rep)
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """Per-token relevance of one document for one query: a picture (--out) and/or the arrays (--json)."""
    from retriever.search import Retriever

    settings = _settings(args)
    with Retriever(settings) as r:
        ex = r.explain(args.query, args.doc_id)
    if args.out:
        from retriever.plots import plot_explanation

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
        print(f"{ex.doc_id}: {len(ex.raw)} tokens, threshold {ex.threshold:.3f}, {len(ex.spans)} span(s)")
        for s in ex.spans:
            print(f"  {s.score:.3f} chars {s.start}-{s.end}: " + " ".join(s.text.split())[:200])
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from retriever.benchmark import load_benchmark
    from retriever.evaluate import evaluate

    settings = _settings(args)
    from retriever.evaluation.pdf_manuals import evaluate_pdf_manuals, is_pdf_benchmark

    if is_pdf_benchmark(args.bench_dir):  # docs/*.pdf + queries.jsonl with gold text and pages
        pdf = evaluate_pdf_manuals(
            args.bench_dir,
            settings,
            store_dir=args.store,
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
        store_dir=args.store,
        sample=args.sample,
        baselines=not args.no_baselines,
        log=lambda m: print(m, file=sys.stderr),
    )
    print(report.table())
    if args.results:
        report.write_results(Path(args.results))
    return 0


def cmd_storage_report(args: argparse.Namespace) -> int:
    import importlib.util

    # the experiment is a script (scripts/storage_experiment.py), run from the checkout it was installed from
    path = Path(__file__).resolve().parent.parent / "scripts" / "storage_experiment.py"
    if not path.is_file():
        print(f"chunkless: error: {path} not found; storage-report runs from a source checkout", file=sys.stderr)
        return 2
    spec = importlib.util.spec_from_file_location("storage_experiment", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return int(mod.main(args.rest))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chunkless", description="Token-level retrieval of exact answer spans.")
    sub = p.add_subparsers(dest="command", required=True)

    ing = sub.add_parser("ingest", help="ingest PDF, Markdown and text files or folders")
    ing.add_argument("paths", nargs="+", type=Path)
    ing.add_argument(
        "--dtype",
        choices=["float32", "float16", "int8", "int4", "binary"],
        help="token storage dtype of a new collection",
    )
    ing.add_argument("--storage", help="storage layout of a new collection, e.g. binary, int8-pca128, int8-pool2")
    ing.add_argument("--report", help="write a JSON report of the run here")
    ing.add_argument("--quiet", action="store_true", help="plain log lines, no progress bar")
    _common(ing)
    ing.set_defaults(func=cmd_ingest)

    se = sub.add_parser("search", help="search for answer spans")
    se.add_argument("query")
    se.add_argument("--top", type=int, default=5)
    se.add_argument("--json", action="store_true", help="one JSON object on stdout")
    _common(se)
    se.set_defaults(func=cmd_search)

    st = sub.add_parser("stats", help="documents, segments, tokens and bytes per token")
    st.add_argument("--json", action="store_true")
    _common(st)
    st.set_defaults(func=cmd_stats)

    ev = sub.add_parser("eval", help="measure chunkless and chunk/sentence baselines on a span-QA benchmark")
    ev.add_argument("bench_dir", type=Path, help="folder with corpus.jsonl and queries.jsonl")
    ev.add_argument("--results", help="write one JSON line per query (chunkless' spans, best first) here")
    ev.add_argument("--sample", type=int, help="measure a random sample of this many answerable questions")
    ev.add_argument("--no-baselines", action="store_true", help="chunkless only")
    _common(ev)  # --store names a store to (re)use; without it the corpus is indexed into a temporary one
    ev.set_defaults(func=cmd_eval)

    ex = sub.add_parser("explain", help="raw and smoothed relevance of one document for a query, as a plot")
    ex.add_argument("query")
    ex.add_argument("doc_id")
    ex.add_argument("--out", help="write the plot here (.png, .svg, .pdf)")
    ex.add_argument("--json", action="store_true", help="per-token raw/smoothed arrays as one JSON object")
    _common(ex)
    ex.set_defaults(func=cmd_explain)

    sr = sub.add_parser(
        "storage-report",
        help="bytes per token in the store against span quality, per storage layout (scripts/storage_experiment.py)",
        add_help=False,
        prefix_chars="+",  # every flag, --help included, belongs to the script's own parser
    )
    sr.add_argument("rest", nargs="*", help="BENCH_DIR [--model M] [--out DIR] [--sample N] ...")
    sr.set_defaults(func=cmd_storage_report)

    de = sub.add_parser("delete", help="remove a document by doc_id or path")
    de.add_argument("target")
    _common(de)
    de.set_defaults(func=cmd_delete)

    co = sub.add_parser("compact", help="reclaim the disk space of deleted documents (bytes before/after)")
    co.add_argument("--json", action="store_true", help="one JSON object on stdout")
    _common(co)
    co.set_defaults(func=cmd_compact)

    from retriever.serve.cli import install  # `serve`, and --server on search/ingest/stats/delete

    install(sub, _settings)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args))
    except ChunklessError as e:
        print(f"chunkless: error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # pydantic validation of settings / flags
        print(f"chunkless: error: invalid setting: {e}".splitlines()[0], file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
