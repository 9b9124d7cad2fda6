"""Structure-aware spans: answers, not headings, on documents that carry a `DocStructure`.

Every span method runs its candidates through `answer_range` (one helper, shared), which with a
structure (schemas.structure, stored in the header) makes:

- a candidate made only of table-of-contents/index entries or running headers/footers: nothing
  (the sentence method also keeps their sentences out of its top-k: `token_masks`);
- a candidate made only of headings (and navigation): the answering part of the (last) heading's
  section, its first body sentences up to `SECTION_WORDS` words (a paragraph, its list items or
  table rows, across sub-headings only when the section has no text of its own); a further
  sentence that would pass `SECTION_MAX_WORDS` is left out once the answer has `ANSWER_MIN_WORDS`;
- a candidate that starts or ends inside a table row: extended to the whole row (a row is an
  answer unit like a sentence; its cells may hold sentence ends of their own);
- any other candidate: itself (squad-like text has no headings or rows: nothing changes).

A heading or a table row may compete in the sentence method even when shorter than
`min_sentence_tokens` (a heading is what a heading-like query matches best; "Port; 8080" is a whole
answer). Every span gets its section path and the printed page labels of its pages.

Documents without a structure (benchmark text, old headers) are untouched.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from indexer.boundaries import sentence_ranges
from indexer.store import DocHeader
from retriever.fetch import DocTokens
from schemas.structure import NON_ANSWER_KINDS, DocStructure

SECTION_WORDS = 20  # a heading's answer: its section's first sentences until this many words ...
SECTION_MAX_WORDS = 40  # ... but a further sentence that would pass this many is left out
ANSWER_MIN_WORDS = 12  # (unless the answer is still shorter than this)
ANSWER_KINDS = frozenset({"paragraph", "list_item", "table_row", "code", "footnote"})
SHORT_KINDS = frozenset({"heading", "table_row"})  # compete in the sentence method however short


@dataclass
class Layout:
    """One document version's structure, with arrays for per-token lookups."""

    structure: DocStructure
    starts: np.ndarray  # (B,) block starts
    ends: np.ndarray  # (B,)
    skip: np.ndarray  # (B,) bool: block never answers
    short_ok: np.ndarray  # (B,) bool: block competes however short (headings, table rows)

    @classmethod
    def of(cls, s: DocStructure) -> Layout:
        kinds = [b.kind for b in s.blocks]
        return cls(
            s,
            np.array([b.start for b in s.blocks], dtype=np.int64),
            np.array([b.end for b in s.blocks], dtype=np.int64),
            np.array([k in NON_ANSWER_KINDS for k in kinds], dtype=bool),
            np.array([k in SHORT_KINDS for k in kinds], dtype=bool),
        )

    def blocks_of(self, chars: np.ndarray) -> np.ndarray:
        """(n,) block index of each character position, -1 between blocks."""
        i = np.searchsorted(self.starts, chars, side="right") - 1
        inside = (i >= 0) & (chars < self.ends[np.maximum(i, 0)])
        return np.where(inside, i, -1)

    def overlapping(self, c0: int, c1: int) -> range:
        """Indices of the blocks that characters [c0, c1) touch, in order."""
        first = int(np.searchsorted(self.ends, c0, side="right"))  # the first block ending after c0
        last = int(np.searchsorted(self.starts, max(c1, c0 + 1), side="left"))  # blocks starting before c1
        return range(first, max(first, last))

    def token_masks(self, token_starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(skip, short_ok) bool masks of tokens by the block their first character is in."""
        if not len(self.starts):
            z = np.zeros(len(token_starts), dtype=bool)
            return z, z
        b = self.blocks_of(np.asarray(token_starts, dtype=np.int64))
        ok = b >= 0
        bb = np.maximum(b, 0)
        return ok & self.skip[bb], ok & self.short_ok[bb]


class Layouts:
    """Parsed structures by (doc_id, version), bounded; header payload parsing is done once per version."""

    def __init__(self, max_docs: int = 1024) -> None:
        self._items: OrderedDict[tuple[str, str], Layout | None] = OrderedDict()
        self._lock = threading.Lock()
        self.max_docs = max_docs

    def get(self, doc_id: str, header: DocHeader) -> Layout | None:
        key = (doc_id, header.version)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        s = DocStructure.from_payload(header.structure)
        layout = Layout.of(s) if s is not None and s.blocks else None
        with self._lock:
            self._items[key] = layout
            while len(self._items) > self.max_docs:
                self._items.popitem(last=False)
        return layout


LAYOUTS = Layouts()  # shared by the span methods: a structure is parsed once per document version


def structure_masks(docs: list[DocTokens]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(skip, short_ok) flat token masks (N,) of a query's documents; None when none has a structure.

    Args:
        docs: the query's candidate documents, laid end to end as the span methods lay them.

    Returns:
        Host bool tensors: tokens in TOC/header/footer blocks; tokens in headings and table rows
        (they compete however short); or None.
    """
    layouts = [LAYOUTS.get(d.doc_id, d.header) for d in docs]
    if all(lay is None for lay in layouts):
        return None
    skips, shorts = [], []
    for d, lay in zip(docs, layouts, strict=True):
        if lay is None:
            skips.append(np.zeros(d.n, dtype=bool))
            shorts.append(np.zeros(d.n, dtype=bool))
        else:
            sk, so = lay.token_masks(d.starts)
            skips.append(sk)
            shorts.append(so)
    return torch.from_numpy(np.concatenate(skips)), torch.from_numpy(np.concatenate(shorts))


def answer_range(
    layout: Layout, c0: int, c1: int, text: str, base: int, words: int = SECTION_WORDS
) -> tuple[int, int] | None:
    """The span to return for candidate [c0, c1) of any span method (see the module docstring).

    Args:
        layout: the document's structure.
        c0: the candidate's first character (absolute).
        c1: its end (exclusive).
        text: document characters [base, base + len(text)) (the fetched run); a section answer is cut
            inside it and rows are extended only inside it.
        base: where `text` starts in the document.
        words: a section answer's length in words.

    Returns:
        The candidate itself, its section's answer (headings only), the candidate widened to whole
        table rows, or None: navigation only, or a heading whose section has no text within reach.
    """
    blocks = layout.structure.blocks
    touched = layout.overlapping(c0, c1)
    if not touched:
        return c0, c1
    kinds = [blocks[i].kind for i in touched]
    if all(k in NON_ANSWER_KINDS for k in kinds):
        return None
    if all(k in NON_ANSWER_KINDS or k == "heading" for k in kinds):
        return _section_answer(layout, max(i for i in touched if blocks[i].kind == "heading"), text, base, words)
    first, last = blocks[touched[0]], blocks[touched[-1]]
    end_of_text = base + len(text)
    if base <= c0 and c1 <= end_of_text:  # a candidate finished from neighbour segments stays as it is
        if first.kind == "table_row" and first.start < c0:
            c0 = max(first.start, base)
        if last.kind == "table_row" and last.end > c1:
            c1 = min(last.end, end_of_text)
    return c0, c1


def _section_answer(layout: Layout, i: int, text: str, base: int, words: int) -> tuple[int, int] | None:
    """The first body sentences of heading `i`'s section inside the fetched `text`; None when it has none."""
    blocks = layout.structure.blocks
    level = blocks[i].level or 1
    end_of_text = base + len(text)
    first: int | None = None
    last = 0
    count = 0
    for b in blocks[i + 1 :]:
        if b.kind == "heading":
            if (b.level or 1) <= level or first is not None:
                break  # the next section (or a sub-section after this one's own text)
            continue
        if b.kind not in ANSWER_KINDS or b.start < base:
            continue
        if b.start >= end_of_text:
            break
        stop = min(b.end, end_of_text)
        for s0, s1 in sentence_ranges(text[b.start - base : stop - base]):
            n = len(text[b.start - base + s0 : b.start - base + s1].split())
            if first is not None and count >= ANSWER_MIN_WORDS and count + n > max(SECTION_MAX_WORDS, words):
                count = words  # the next sentence would make the answer too long: stop before it
                break
            if first is None:
                first = b.start + s0
            last = b.start + s1
            count += n
            if count >= words:
                break
        if count >= words:
            break
    if first is None:
        return None
    return first, last
