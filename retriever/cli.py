"""The `chunkless` command: ingest, search, list, stats, delete, compact, explain, eval, storage-report, serve.

Flags that set a setting are derived from the settings field they set (`SETTING_FLAGS`): the help is the
field's description, the choices its allowed values, and a flag left unset is None, so it never overrides
the ``CHUNKLESS_*`` environment. Errors are `ChunklessError`s: one line ``chunkless: error: <message>``
on stderr and the error's exit code (see schemas/errors.py); anything else is a bug, reported in one
line with exit status 70 (the traceback only under ``CHUNKLESS_DEBUG=1``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import traceback
import typing
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from schemas.errors import EXIT_FILES_FAILED, ChunklessError, QueryError, SettingsError
from schemas.layout import StorageLayout
from schemas.settings import FIELD_GROUP, GROUPS, Settings, env_name

if TYPE_CHECKING:
    from indexer.store import CompactReport
    from schemas.models import SearchResponse

EXIT_BUG = 70  # EX_SOFTWARE: an error chunkless did not expect
DEBUG_ENV = "CHUNKLESS_DEBUG"
SET = "set__"  # argparse dest prefix of the flags that set a settings field

# flag -> settings field, per group of commands
STORE_FLAGS = {"--store": "store_path", "--collection": "collection", "--url": "url"}
MODEL_FLAGS = {"--model": "model", "--device": "device", "--dtype": "dtype"}
SPAN_FLAGS = {"--top": "top", "--span-method": "span_method", "--recall-k": "recall_k"}
LAYOUT_FLAGS = {"--storage-dtype": "storage_dtype"}
SETTING_FLAGS = STORE_FLAGS | MODEL_FLAGS | SPAN_FLAGS | LAYOUT_FLAGS

# escape sequences (CSI, OSC, other ESC-introduced) and control characters a terminal would act on
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?")
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def terminal_safe(text: str) -> str:
    """`text` without escape sequences and control characters (tab and newline kept), for a terminal.

    Document text and file names are printed through this: a document must not be able to recolour,
    retitle or rewrite the user's terminal. JSON output needs no such step: json.dumps escapes them.
    """
    return _CONTROLS.sub("", _ESCAPES.sub("", text))


def one_line(text: str, limit: int) -> str:
    """Terminal-safe text on one line, whitespace runs collapsed, cut at `limit` characters."""
    return " ".join(terminal_safe(text).split())[:limit]


# --- flags from settings --------------------------------------------------------------------------
def _flag_type(annotation: Any) -> tuple[Any, list[str] | None]:
    """argparse type and choices for a settings field's annotation."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return str, [str(a) for a in args]
    if args:  # X | None
        return _flag_type(args[0])
    if annotation in (int, float, Path):
        return annotation, None
    return str, None


def add_setting_flags(p: argparse.ArgumentParser, flags: dict[str, str]) -> None:
    """One flag per settings field: help from the field's description, default None (the environment decides)."""
    for flag, field in flags.items():
        info = GROUPS[FIELD_GROUP[field]].model_fields[field]
        kind, choices = _flag_type(info.annotation)
        default = info.default if info.default is not None and not callable(info.default) else "none"
        desc = (info.description or "").rstrip(".")
        p.add_argument(
            flag,
            dest=SET + field,
            type=kind,
            choices=choices,
            default=None,
            metavar=None if choices else field.upper(),
            help=f"{desc}{'; ' if desc else ''}default: {env_name(field)} or {default}".replace("%", "%%"),
        )


def parse_layout(name: str, where: str = "--storage") -> StorageLayout:
    """A layout name (e.g. int8-pca128-pool2) given to flag `where`.

    Raises:
        SettingsError: names the flag, the field, the value and the allowed range.
    """
    try:
        return StorageLayout.parse(name)
    except ValidationError as e:
        parts = []
        for err in e.errors():
            field = f"storage_{err['loc'][0]}" if err["loc"] else "storage"
            parts.append(f"{field} ({env_name(field)})={err.get('input')!r}: {err['msg']}")
        raise SettingsError(f"{where} {name}: invalid setting " + "; ".join(parts)) from None
    except ValueError as e:
        raise SettingsError(f"{where}: {e}") from None


def settings_of(args: argparse.Namespace) -> Settings:
    """Settings from the environment, with the flags given on the command line on top.

    Raises:
        SettingsError: a flag's or variable's value is invalid (names the field, value and range).
    """
    over = {k[len(SET) :]: v for k, v in vars(args).items() if k.startswith(SET) and v is not None}
    storage = getattr(args, "storage", None)
    if storage:  # a whole storage layout by name, e.g. binary or int8-pca128-pool2
        lay = parse_layout(storage)
        over |= {"storage_dtype": lay.dtype, "storage_reduce": lay.reduce, "storage_dim": lay.dim}
        over["storage_pool"] = lay.pool
    try:
        return Settings(**over)
    except SettingsError as e:  # name the flag too when the value came from one
        msg = str(e)
        for flag, field in SETTING_FLAGS.items():
            if field in over:
                msg = msg.replace(
                    f"setting {field} ({env_name(field)})", f"setting {field} ({flag}, {env_name(field)})"
                )
        raise SettingsError(msg) from None


# --- commands -------------------------------------------------------------------------------------
def cmd_ingest(args: argparse.Namespace) -> int:
    from indexer.pipeline import ingest

    settings = settings_of(args)
    bar = not args.quiet and sys.stderr.isatty()  # a bar in a log file is noise: plain lines there instead
    if not bar:
        logging.getLogger("indexer.pipeline").setLevel(logging.INFO)
    report = ingest(args.paths, settings, progress=bar, id_from=args.id_from, doc_id=args.doc_id)
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
    from retriever.search import Retriever

    settings = settings_of(args)
    with Retriever(settings) as r:
        resp = r.search(args.query, top=settings.spans.top)
    print_search(resp, args.json)
    return 0


def print_search(resp: SearchResponse, as_json: bool) -> None:
    """What `chunkless search` prints, local or through a service: one JSON object, or numbered spans."""
    if as_json:
        body: dict[str, Any] = {"query": resp.query, "confidence": resp.confidence, "abstained": resp.abstained}
        body |= {"threshold": resp.threshold, "spans": [s.model_dump() for s in resp.spans]}
        print(json.dumps(body, ensure_ascii=False))
        return
    if resp.abstained:  # spans were found, but none is likely enough to answer: say so, not "nothing found"
        best = f"{resp.confidence:.2f}" if resp.confidence is not None else "none"
        print(f"no answer above confidence {resp.threshold:.2f} (the best span's: {best})", file=sys.stderr)
    elif not resp.spans:
        print(
            "no span found; try another wording, or see which documents the collection holds with 'chunkless list'",
            file=sys.stderr,
        )
    for i, s in enumerate(resp.spans, 1):
        pages = ",".join(map(str, s.pages))
        print(f"[{i}] {s.score:.3f}  {one_line(s.doc_id, 300)}  chars {s.start}-{s.end}  page {pages}")
        if s.lead is not None:  # the header row / lead-in the span's rows / items are read with
            print("    " + one_line(s.lead.text, 300) + " …")
        print("    " + one_line(s.text, 600))


def cmd_list(args: argparse.Namespace) -> int:
    """Every document of the collection: doc_id, source, tokens, when it was ingested."""
    from indexer.store import open_store

    store = open_store(settings_of(args).store)
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
    if args.json:
        print(json.dumps({"documents": rows}, ensure_ascii=False))
        return 0
    if not rows:
        print("the collection holds no documents; add some with 'chunkless ingest PATH'", file=sys.stderr)
    for r in rows:
        print(
            f"{one_line(str(r['doc_id']), 200)}\t{r['n_tokens']} tokens\t{r['ingested_at'] or '-'}\t"
            f"{one_line(str(r['source']), 300)}"
        )
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from indexer.store import open_store

    store = open_store(settings_of(args).store, read_only=True)
    try:
        st = store.stats()
    finally:
        store.close()
    print(json.dumps(st, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in st.items()))
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

    store = open_store(settings_of(args).store)
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

    settings = settings_of(args)
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
    from retriever.evaluation.storage import main as storage_main

    return storage_main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; setting flags come from SETTING_FLAGS."""
    p = argparse.ArgumentParser(prog="chunkless", description="Token-level retrieval of exact answer spans.")
    sub = p.add_subparsers(dest="command", required=True)

    ing = sub.add_parser("ingest", help="ingest PDF, Markdown and text files or folders")
    ing.add_argument("paths", nargs="+", type=Path)
    ing.add_argument(
        "--storage",
        metavar="LAYOUT",
        help="storage layout of a new collection, e.g. binary, int8-pca128, int8-pool2 "
        "(DTYPE[-pcaN|-truncateN][-poolK]; sets the storage_* settings)",
    )
    ing.add_argument("--report", help="write a JSON report of the run here")
    ing.add_argument("--quiet", action="store_true", help="plain log lines, no progress bar")
    ing.add_argument("--id-from", type=Path, metavar="ROOT", help="doc_ids relative to ROOT (default: absolute paths)")
    ing.add_argument("--doc-id", metavar="ID", help="store the one file named under this doc_id")
    add_setting_flags(ing, STORE_FLAGS | MODEL_FLAGS | LAYOUT_FLAGS)
    ing.set_defaults(func=cmd_ingest)

    se = sub.add_parser("search", help="search for answer spans")
    se.add_argument("query")
    se.add_argument("--json", action="store_true", help="one JSON object on stdout")
    add_setting_flags(se, STORE_FLAGS | MODEL_FLAGS | SPAN_FLAGS)
    se.set_defaults(func=cmd_search)

    ls = sub.add_parser("list", help="the collection's documents: doc_id, tokens, ingested at, source")
    ls.add_argument("--json", action="store_true", help="one JSON object on stdout")
    add_setting_flags(ls, STORE_FLAGS)
    ls.set_defaults(func=cmd_list)

    st = sub.add_parser("stats", help="documents, segments, tokens and bytes per token")
    st.add_argument("--json", action="store_true")
    add_setting_flags(st, STORE_FLAGS)
    st.set_defaults(func=cmd_stats)

    de = sub.add_parser("delete", help="remove a document by doc_id or path")
    de.add_argument("target")
    add_setting_flags(de, STORE_FLAGS)
    de.set_defaults(func=cmd_delete)

    co = sub.add_parser("compact", help="reclaim the disk space of deleted documents (bytes before/after)")
    co.add_argument("--json", action="store_true", help="one JSON object on stdout")
    add_setting_flags(co, STORE_FLAGS)
    co.set_defaults(func=cmd_compact)

    ex = sub.add_parser("explain", help="raw and smoothed relevance of one document for a query, as a plot")
    ex.add_argument("query")
    ex.add_argument("doc_id")
    ex.add_argument("--out", help="write the plot here (.png, .svg, .pdf)")
    ex.add_argument("--json", action="store_true", help="per-token raw/smoothed arrays as one JSON object")
    add_setting_flags(ex, STORE_FLAGS | MODEL_FLAGS)
    ex.set_defaults(func=cmd_explain)

    ev = sub.add_parser("eval", help="measure chunkless and chunk/sentence baselines on a span-QA benchmark")
    ev.add_argument("bench_dir", type=Path, help="folder with corpus.jsonl and queries.jsonl")
    ev.add_argument("--results", help="write one JSON line per query (chunkless' spans, best first) here")
    ev.add_argument("--sample", type=int, help="measure a random sample of this many answerable questions")
    ev.add_argument("--no-baselines", action="store_true", help="chunkless only")
    # --store names a store to (re)use; without it the corpus is indexed into a temporary one
    add_setting_flags(ev, STORE_FLAGS | MODEL_FLAGS)
    ev.set_defaults(func=cmd_eval)

    sr = sub.add_parser(
        "storage-report",
        help="bytes per token in the store against span quality, per storage layout",
        add_help=False,
        prefix_chars="+",  # every flag, --help included, belongs to the experiment's own parser
    )
    sr.add_argument("rest", nargs="*", help="BENCH_DIR [--model M] [--out DIR] [--sample N] ...")
    sr.set_defaults(func=cmd_storage_report)

    from retriever.serve.cli import install  # `serve`, and --server on search/ingest/stats/delete

    install(sub, settings_of)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit status (see schemas/errors.py)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args))
    except ChunklessError as e:
        print(f"chunkless: error: {terminal_safe(str(e))}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("chunkless: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        first = (terminal_safe(str(e)).splitlines() or [""])[0]
        print(
            f"chunkless: error: unexpected {type(e).__name__}: {first}"
            f"; this is a bug, please report it (rerun with {DEBUG_ENV}=1 for the traceback)",
            file=sys.stderr,
        )
        if os.environ.get(DEBUG_ENV) == "1":
            traceback.print_exc()
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
