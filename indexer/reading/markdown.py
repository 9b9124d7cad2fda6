"""Markdown -> reading text without markup, with headings, list items, table rows and code as blocks.

Handled: ATX headings (`#`..`######`) and setext headings (`===` / `---` underlines), bullet and
numbered list items (nesting by indent, continuation lines joined), pipe tables (one block per row,
cells joined by "; ", the `---` rule dropped), fenced and indented code, HTML comments, and inline
markup (emphasis, code ticks, links and images keep their text only). Paragraph lines are joined by
a space. The first level-1 heading is the title.
"""

from __future__ import annotations

import re
from pathlib import Path

from indexer.reading.base import Reading, TextBuilder
from indexer.reading.text import decode_utf8
from schemas.structure import BlockKind

_ATX = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+\s*)?$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)\s*$")
_ITEM = re.compile(r"^(\s*)(?:[-*+]|\d{1,9}[.)])\s+(.*)$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_REF_LINK = re.compile(r"\[([^\]]+)\]\[[^\]]*\]")
_TAG = re.compile(r"</?[a-zA-Z][^>]{0,200}>")
_EMPH = re.compile(r"(\*\*|__|\*|_|~~)(?=\S)(.+?)(?<=\S)\1")
_TICKS = re.compile(r"`+([^`]*)`+")


def inline(text: str) -> str:
    """Inline Markdown to plain text: links/images keep their text, emphasis and code ticks go."""
    t = _IMAGE.sub(r"\1", text)
    t = _LINK.sub(r"\1", t)
    t = _REF_LINK.sub(r"\1", t)
    t = _TICKS.sub(r"\1", t)
    t = _TAG.sub(" ", t)
    for _ in range(3):  # nested emphasis: ***x*** / **_x_**
        t2 = _EMPH.sub(r"\2", t)
        if t2 == t:
            break
        t = t2
    return " ".join(t.replace("\\", "").split()) if "\\" in t else " ".join(t.split())


def read_markdown(path: Path) -> Reading:
    source = _COMMENT.sub("", decode_utf8(path))
    b = TextBuilder()
    title: str | None = None
    lines = source.splitlines()
    para: list[str] = []
    para_kind: BlockKind = "paragraph"
    level: int | None = None

    def flush() -> None:
        nonlocal para, para_kind
        if para:
            b.add(para_kind, inline(" ".join(x.strip() for x in para)), level=level)
        para, para_kind = [], "paragraph"

    i = 0
    while i < len(lines):
        line = lines[i]
        if _FENCE.match(line):
            flush()
            fence = _FENCE.match(line).group(1)  # type: ignore[union-attr]
            code = []
            i += 1
            while i < len(lines) and not lines[i].lstrip().startswith(fence):
                code.append(lines[i])
                i += 1
            b.add("code", "\n".join(code))
            i += 1
            continue
        m = _ATX.match(line)
        if m:
            flush()
            heading = inline(m.group(2))
            blk = b.add("heading", heading, level=len(m.group(1)))
            if blk is not None and title is None and len(m.group(1)) == 1:
                title = heading
            i += 1
            continue
        if not line.strip():
            flush()
            i += 1
            continue
        if para and para_kind == "paragraph" and len(para) == 1 and _SETEXT.match(line):
            text = inline(para[0])
            para = []
            lvl = 1 if line.strip().startswith("=") else 2
            b.add("heading", text, level=lvl)
            if title is None and lvl == 1:
                title = text
            i += 1
            continue
        if "|" in line and ((i + 1 < len(lines) and _TABLE_RULE.match(lines[i + 1])) or para_kind == "table_row"):
            flush()
            while i < len(lines) and "|" in lines[i]:
                if not _TABLE_RULE.match(lines[i]):
                    cells = [inline(c) for c in lines[i].strip().strip("|").split("|")]
                    b.add("table_row", "; ".join(c for c in cells if c), separator="\n")
                i += 1
            continue
        item = _ITEM.match(line)
        if item:
            flush()
            para, para_kind = [item.group(2)], "list_item"
            i += 1
            continue
        if line.startswith(("    ", "\t")) and not para:
            code = []
            while i < len(lines) and (lines[i].startswith(("    ", "\t")) or not lines[i].strip()):
                code.append(lines[i][4:] if lines[i].startswith("    ") else lines[i][1:])
                i += 1
            b.add("code", "\n".join(code))
            continue
        para.append(line)
        i += 1
    flush()
    return b.finish(path, title or path.stem)
