"""Structure-aware spans: answers, not headings, on documents that carry a `DocStructure`.

The sentence method ranks sentences; with a structure (schemas.structure, stored in the header):

- sentences in table-of-contents/index entries and running headers/footers never compete
  (`token_masks` marks their tokens; their candidates are dropped before the top-k);
- a heading may compete even when shorter than `min_sentence_tokens` (headings are what a
  heading-like query matches best), but it is never returned: `answer_range` turns it into the
  answering part of its section, the section's first body sentences up to `SECTION_WORDS` words
  (a paragraph, its list items or table rows, across sub-headings only when the section has no
  text of its own); a further sentence that would pass `SECTION_MAX_WORDS` is left out once the
  answer has `ANSWER_MIN_WORDS`;
- a body sentence stays the sentence it is (squad-like text has no headings: nothing changes);
- every span gets its section path and the printed page labels of its pages.

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


@dataclass
class Layout:
    """One document version's structure, with arrays for per-token lookups."""

    structure: DocStructure
    starts: np.ndarray  # (B,) block starts
    ends: np.ndarray  # (B,)
    skip: np.ndarray  # (B,) bool: block never answers
    heading: np.ndarray  # (B,) bool

    @classmethod
    def of(cls, s: DocStructure) -> Layout:
        kinds = [b.kind for b in s.blocks]
        return cls(
            s,
            np.array([b.start for b in s.blocks], dtype=np.int64),
            np.array([b.end for b in s.blocks], dtype=np.int64),
            np.array([k in NON_ANSWER_KINDS for k in kinds], dtype=bool),
            np.array([k == "heading" for k in kinds], dtype=bool),
        )

    def blocks_of(self, chars: np.ndarray) -> np.ndarray:
        """(n,) block index of each character position, -1 between blocks."""
        i = np.searchsorted(self.starts, chars, side="right") - 1
        inside = (i >= 0) & (chars < self.ends[np.maximum(i, 0)])
        return np.where(inside, i, -1)

    def token_masks(self, token_starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(skip, heading) bool masks of tokens by the block their first character is in."""
        if not len(self.starts):
            z = np.zeros(len(token_starts), dtype=bool)
            return z, z
        b = self.blocks_of(np.asarray(token_starts, dtype=np.int64))
        ok = b >= 0
        bb = np.maximum(b, 0)
        return ok & self.skip[bb], ok & self.heading[bb]


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
    """(skip, heading) flat token masks (N,) of a query's documents; None when none has a structure.

    Args:
        docs: the query's candidate documents, laid end to end as the span methods lay them.

    Returns:
        Host bool tensors: tokens in TOC/header/footer blocks, tokens in headings; or None.
    """
    layouts = [LAYOUTS.get(d.doc_id, d.header) for d in docs]
    if all(lay is None for lay in layouts):
        return None
    skips, heads = [], []
    for d, lay in zip(docs, layouts, strict=True):
        if lay is None:
            skips.append(np.zeros(d.n, dtype=bool))
            heads.append(np.zeros(d.n, dtype=bool))
        else:
            sk, hd = lay.token_masks(d.starts)
            skips.append(sk)
            heads.append(hd)
    return torch.from_numpy(np.concatenate(skips)), torch.from_numpy(np.concatenate(heads))


def answer_range(
    layout: Layout, c0: int, c1: int, text: str, base: int, words: int = SECTION_WORDS
) -> tuple[int, int] | None:
    """The span to return for candidate [c0, c1): itself, its section's answer (a heading), or None.

    `text` holds document characters [base, base + len(text)) (the fetched run); a section answer
    is cut inside it. None: the candidate is navigation (TOC, header/footer) or a heading whose
    section has no text within reach.
    """
    blocks = layout.structure.blocks
    i = int(layout.blocks_of(np.array([c0]))[0])
    if i < 0:
        return c0, c1
    kind = blocks[i].kind
    if kind in NON_ANSWER_KINDS:
        return None
    if kind != "heading":
        return c0, c1
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
