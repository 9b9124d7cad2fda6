"""Bytes of each document's structure payload (what a header point carries beside its other fields).

Usage: python scripts/structure_payload.py FILE_OR_FOLDER... [--json]

Reads every supported file (indexer.reading) and prints, per document: blocks, reading-text chars,
the structure payload as compact JSON in bytes (`DocStructure.to_payload`), and the rest of its header
payload (page starts and labels, ids, counts) for scale. No model, no store.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from indexer.reading import READERS, read_document
from indexer.store import DocHeader


def _bytes(obj: object) -> int:
    return len(json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode())


def measure(path: Path) -> dict[str, object]:
    """One document's figures."""
    r = read_document(path)
    payload = r.structure.to_payload()
    header = DocHeader(  # the header as ingest writes it, counts and hash made up (digits of the same width)
        doc_id=path.name,
        version="0" * 64,
        source=str(path.resolve()),
        title=r.title,
        n_tokens=10**6,
        n_rows=10**6,
        n_segments=1000,
        page_starts=r.page_starts,
        text_len=len(r.text),
        ingested_at=1.7e9,
        page_labels=r.structure.page_labels,
    )
    return {
        "doc": path.name,
        "blocks": len(r.structure.blocks),
        "text_chars": len(r.text),
        "structure_bytes": _bytes(payload),
        "header_bytes_without_structure": _bytes(header.to_payload()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", type=Path)
    ap.add_argument("--json", action="store_true", help="one JSON object per document")
    args = ap.parse_args(argv)
    files = [f for p in args.paths for f in (sorted(p.iterdir()) if p.is_dir() else [p])]
    rows = [measure(f) for f in files if f.suffix.lower() in READERS]
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    print("| document | blocks | text chars | structure bytes | rest of header bytes |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['doc']} | {row['blocks']} | {row['text_chars']} | {row['structure_bytes']} "
            f"| {row['header_bytes_without_structure']} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
