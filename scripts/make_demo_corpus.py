"""Rebuild demo/ from the squad2-dev benchmark: three Wikipedia excerpts, one of them as a PDF.

Usage: python scripts/make_demo_corpus.py ../shared/benchmarks/squad2-dev
The output is committed; users never need to run this.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pymupdf

OUT = Path(__file__).resolve().parent.parent / "demo" / "corpus"
PICK = {"Steam_engine": ("steam_engine.pdf", 9000), "Normans": ("normans.md", 7000), "Force": ("force.txt", 7000)}


def excerpt(text: str, limit: int) -> str:
    """Whole paragraphs up to `limit` characters."""
    out: list[str] = []
    size = 0
    for para in text.split("\n\n"):
        if size + len(para) > limit and out:
            break
        out.append(para)
        size += len(para) + 2
    return "\n\n".join(out)


def write_pdf(path: Path, title: str, text: str) -> None:
    doc = pymupdf.open()
    doc.set_metadata({"title": title, "author": "Wikipedia contributors (CC BY-SA 4.0)"})
    paras = text.split("\n\n")
    rect = pymupdf.Rect(72, 72, 540, 740)
    page = None
    chunk: list[str] = []
    while paras:
        page = doc.new_page()
        chunk = []
        # fill a page paragraph by paragraph; a paragraph that does not fit starts the next page
        while paras:
            trial = "\n\n".join([*chunk, paras[0]])
            probe = pymupdf.open().new_page()
            if probe.insert_textbox(rect, trial, fontsize=11, fontname="helv") < 0 and chunk:
                break
            chunk.append(paras.pop(0))
        page.insert_textbox(rect, "\n\n".join(chunk), fontsize=11, fontname="helv")
    doc.save(path)


def main(bench: Path) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for line in (bench / "corpus.jsonl").open():
        d = json.loads(line)
        if d["doc_id"] not in PICK:
            continue
        name, limit = PICK[d["doc_id"]]
        text = excerpt(d["text"], limit)
        title = d["title"].replace("_", " ")
        if name.endswith(".pdf"):
            write_pdf(OUT / name, title, text)
        elif name.endswith(".md"):
            (OUT / name).write_text(f"# {title}\n\n{text}\n")
        else:
            (OUT / name).write_text(text + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
