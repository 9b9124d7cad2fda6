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
answer; `retriever.fetch.SHORT_KINDS`). Every span gets its section path and the printed page labels of
its pages.

A document's structure reaches the methods parsed, as `DocTokens.layout` (the fetcher parses each
document version's structure once). Documents without a structure (benchmark text, old headers) are untouched.
"""

from __future__ import annotations

import numpy as np
import torch

from indexer.boundaries import sentence_ranges
from retriever.fetch import DocTokens, Layout
from schemas.structure import NON_ANSWER_KINDS

SECTION_WORDS = 20  # a heading's answer: its section's first sentences until this many words ...
SECTION_MAX_WORDS = 40  # ... but a further sentence that would pass this many is left out
ANSWER_MIN_WORDS = 12  # (unless the answer is still shorter than this)
ANSWER_KINDS = frozenset({"paragraph", "list_item", "table_row", "code", "footnote"})


def structure_masks(docs: list[DocTokens]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(skip, short_ok) flat token masks (N,) of a query's documents; None when none has a structure.

    Args:
        docs: the query's candidate documents, laid end to end as the span methods lay them.

    Returns:
        Host bool tensors: tokens in TOC/header/footer blocks; tokens in headings and table rows
        (they compete however short); or None.
    """
    if all(d.layout is None for d in docs):
        return None
    skips, shorts = [], []
    for d in docs:
        lay = d.layout
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
