"""What the commands print, shared by the local commands and their `--server` twins.

Document text and file names go through `terminal_safe`; JSON output needs no such step.
"""

from __future__ import annotations

import json
import re
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from indexer.store import CompactReport
    from schemas.models import SearchResponse

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


SPAN_CHARS = 600  # span text the terminal shows; --json prints it whole


def print_search(resp: SearchResponse, as_json: bool) -> None:
    """What `chunkless search` prints, local or through a service: one JSON object, or numbered spans.

    A span's text is shown on one line, cut at `SPAN_CHARS` characters; a cut line says so, with the
    span's length, and that `--json` prints it whole.
    """
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
        text = one_line(s.text, len(s.text))
        if len(text) <= SPAN_CHARS:
            print("    " + text)
        else:
            print(f"    {text[:SPAN_CHARS]}… [cut at {SPAN_CHARS} of {len(text)} characters; --json prints it whole]")


def print_documents(rows: list[dict[str, Any]], as_json: bool) -> None:
    """What `chunkless list` prints, local or through a service: JSON, or one tab-separated line a document.

    Args:
        rows: per document: doc_id, source, title, n_tokens, ingested_at (ISO 8601 or None).
        as_json: one JSON object ``{"documents": rows}``.
    """
    if as_json:
        print(json.dumps({"documents": rows}, ensure_ascii=False))
        return
    if not rows:
        print("the collection holds no documents; add some with 'chunkless ingest PATH'", file=sys.stderr)
    for r in rows:
        print(
            f"{one_line(str(r['doc_id']), 200)}\t{r['n_tokens']} tokens\t{r['ingested_at'] or '-'}\t"
            f"{one_line(str(r['source']), 300)}"
        )


def print_stats(stats: dict[str, Any], as_json: bool) -> None:
    """What `chunkless stats` prints, local or through a service: indented JSON, or one `key: value` a line."""
    print(json.dumps(stats, indent=2) if as_json else "\n".join(f"{k}: {v}" for k, v in stats.items()))


def print_compact(rep: CompactReport) -> None:
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
