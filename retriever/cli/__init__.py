"""The `chunkless` command: ingest, search, list, stats, delete, compact, explain, eval, storage-report, serve.

One argparse tree (`build_parser`) for every command; the commands live beside it: `commands` (on a
local store or benchmark), `remote` (the same through a service, with `--server`), `serve` (the
service). Flags that set a setting are derived from the settings field they set (`flags`). Errors are
`ChunklessError`s: one line ``chunkless: error: <message>`` on stderr and the error's exit code (see
schemas/errors.py); anything else is a bug, reported in one line with exit status 70 (the traceback only
under ``CHUNKLESS_DEBUG=1``). Nothing heavy is imported before a command runs, so `--help` is fast;
the service and evaluation packages never import this one.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import traceback
from pathlib import Path

from retriever.cli import commands, remote, serve
from retriever.cli.flags import LAYOUT_FLAGS, MODEL_FLAGS, SERVE_FLAGS, SPAN_FLAGS, STORE_FLAGS, add_setting_flags
from retriever.cli.printing import terminal_safe
from schemas.errors import ChunklessError

__all__ = ["DEBUG_ENV", "EXIT_BUG", "build_parser", "main"]

EXIT_BUG = 70  # EX_SOFTWARE: an error chunkless did not expect
DEBUG_ENV = "CHUNKLESS_DEBUG"


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, every command's flags included; setting flags come from `flags`."""
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
    ing.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: this process; ray: a Ray Data job over a Ray cluster (pip install 'chunkless[ray]')",
    )
    ing.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="the Ray cluster to join (host:port that `ray start --head` prints, or auto); "
        "default: RAY_ADDRESS, else a Ray started for this run",
    )
    ing.add_argument(
        "--actors", type=int, metavar="N", help="--engine ray: embedding actors (default: one per GPU, else per CPU)"
    )
    add_setting_flags(ing, STORE_FLAGS | MODEL_FLAGS | LAYOUT_FLAGS)
    remote.routable(ing, commands.cmd_ingest, remote.remote_ingest)

    se = sub.add_parser("search", help="search for answer spans")
    se.add_argument("query")
    se.add_argument("--json", action="store_true", help="one JSON object on stdout")
    add_setting_flags(se, STORE_FLAGS | MODEL_FLAGS | SPAN_FLAGS)
    remote.routable(se, commands.cmd_search, remote.remote_search, reads=True)

    ls = sub.add_parser("list", help="the collection's documents: doc_id, tokens, ingested at, source")
    ls.add_argument("--json", action="store_true", help="one JSON object on stdout")
    add_setting_flags(ls, STORE_FLAGS)
    remote.routable(ls, commands.cmd_list, remote.remote_list, reads=True)

    st = sub.add_parser("stats", help="documents, segments, tokens and bytes per token")
    st.add_argument("--json", action="store_true")
    add_setting_flags(st, STORE_FLAGS)
    remote.routable(st, commands.cmd_stats, remote.remote_stats, reads=True)

    de = sub.add_parser("delete", help="remove a document by doc_id or path")
    de.add_argument("target")
    add_setting_flags(de, STORE_FLAGS)
    remote.routable(de, commands.cmd_delete, remote.remote_delete)

    co = sub.add_parser("compact", help="reclaim the disk space of deleted documents (bytes before/after)")
    co.add_argument("--json", action="store_true", help="one JSON object on stdout")
    add_setting_flags(co, STORE_FLAGS)
    co.set_defaults(func=commands.cmd_compact)

    ex = sub.add_parser("explain", help="raw and smoothed relevance of one document for a query, as a plot")
    ex.add_argument("query")
    ex.add_argument("doc_id")
    ex.add_argument("--out", help="write the plot here (.png, .svg, .pdf)")
    ex.add_argument("--json", action="store_true", help="per-token raw/smoothed arrays as one JSON object")
    add_setting_flags(ex, STORE_FLAGS | MODEL_FLAGS)
    ex.set_defaults(func=commands.cmd_explain)

    ev = sub.add_parser("eval", help="measure chunkless and chunk/sentence baselines on a span-QA benchmark")
    ev.add_argument("bench_dir", type=Path, help="folder with corpus.jsonl and queries.jsonl")
    ev.add_argument("--results", help="write one JSON line per query (chunkless' spans, best first) here")
    ev.add_argument("--sample", type=int, help="measure a random sample of this many answerable questions")
    ev.add_argument("--no-baselines", action="store_true", help="chunkless only")
    # --store names a store to (re)use; without it the corpus is indexed into a temporary one
    add_setting_flags(ev, STORE_FLAGS | MODEL_FLAGS)
    ev.set_defaults(func=commands.cmd_eval)

    sr = sub.add_parser(
        "storage-report",
        help="bytes per token in the store against span quality, per storage layout",
        description="Storage-cost experiment: bytes per token measured in the store against span quality.",
    )
    sr.add_argument("bench", type=Path, help="benchmark folder (corpus.jsonl + queries.jsonl)")
    sr.add_argument("--model", default=None, help="embedding model (default: CHUNKLESS_MODEL)")
    sr.add_argument("--out", type=Path, default=Path("storage_report"), help="folder for the table, CSV and plot")
    sr.add_argument("--sample", type=int, default=300, help="answerable questions evaluated (fixed seed; 0: all)")
    sr.add_argument("--seed", type=int, default=0)
    # default None: every layout of retriever.evaluation.storage.SWEEP (not imported here: it loads torch)
    sr.add_argument("--configs", default=None, help="comma-separated layouts, e.g. int8,binary-pool2")
    sr.add_argument("--latency-queries", type=int, default=100, help="questions re-run warm to time")
    sr.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "chunkless_storage_cache")
    sr.add_argument("--no-chunks", action="store_true", help="skip the chunk reference row")
    sr.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    sr.add_argument(
        "--span-method",
        default="sentences",
        choices=["threshold", "sentences"],
        help="span method for every layout (default sentences, chunkless' default, with --rerank-k 0: sentences "
        "ranked by their stored token vectors, so spans keep one length and hit@1 compares storage alone; "
        "threshold spans grow as a layout flattens r = D @ q, which inflates hit@1)",
    )
    sr.add_argument(
        "--rerank-k",
        type=int,
        default=0,
        help="sentences method: candidates re-embedded alone from their text (default 0: none, so every score "
        "comes from the stored token vectors)",
    )
    sr.add_argument(
        "--threshold-mode",
        default="relative",
        choices=["absolute", "relative"],
        help="span threshold for every layout (default relative: scale-free, so a layout that shifts the scale "
        "of r = D @ q is not scored as losing quality; MiniLM at the absolute 0.39 finds few spans at all)",
    )
    sr.set_defaults(func=commands.cmd_storage_report)

    sv = sub.add_parser("serve", help="run the HTTP service: search while ingesting, over an authenticated API")
    add_setting_flags(sv, SERVE_FLAGS | STORE_FLAGS | MODEL_FLAGS)
    serve.add_flags(sv)
    sv.set_defaults(func=serve.cmd_serve)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit status (see schemas/errors.py)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        status = int(args.func(args))
        sys.stdout.flush()  # here, not at exit: a reader that has gone is met inside this try
        return status
    except BrokenPipeError:
        return _reader_gone()
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


def _reader_gone() -> int:
    """The reader of our output closed it (`chunkless search ... | head`): stop quietly, exit 0.

    The reader chose to stop reading; that is no failure of the command, so `set -o pipefail` scripts
    do not fail on it either. stdout goes to /dev/null so the interpreter's own flush at exit meets no
    closed pipe.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout replaced by something without a descriptor (a test's capture)
        pass
    return 0
