"""Where sentences end, per token: the stops a span may be extended to, and THE sentence cutter.

Two rules: "separators" (the original method: any "\n", "\t" or ".") and "sentences" (a period,
question or exclamation mark followed by space and a capital/digit/quote, or a newline; abbreviations
and decimals do not end a sentence). `sentence_rows` cuts a document's rows into sentences from
their sentence-end flags; ingest (the sentence vectors it stores) and search (its sentence tables)
both cut with it, so both see the same sentences.
"""

from __future__ import annotations

import re

import numpy as np

from schemas.settings import Boundary

_SEPARATORS = re.compile(r"[\n\t.]")
# a stop, optional closing quotes/brackets, then whitespace and something that can open a sentence
_SENTENCE_END = re.compile(r"[.!?][\"'”’)\]]*(?=\s+[\"'“‘(\[]?[A-Z0-9À-Þ]|\s*$)|\n")
_ABBREV = re.compile(
    r"(?:\b(?:Mr|Mrs|Ms|Dr|Prof|Sr|Jr|St|Mt|vs|etc|e\.g|i\.e|cf|approx|No|Vol|Fig|Inc|Ltd|Co|Corp|Jan|Feb|Mar|Apr"
    r"|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)|\b[A-Z](?:\.[A-Z])*)\.$"
)


def boundary_chars(text: str, rule: Boundary) -> np.ndarray:
    """(len(text),) bool: True at each character that ends a sentence under `rule`."""
    mask = np.zeros(len(text) + 1, dtype=bool)
    if rule == "separators":
        idx = [m.start() for m in _SEPARATORS.finditer(text)]
    else:
        idx = []
        for m in _SENTENCE_END.finditer(text):
            p = m.start()
            if text[p] == "." and _ABBREV.search(text, max(0, p - 12), p + 1):
                continue  # "Dr." / "U.S." / "e.g." end a word, not a sentence
            idx.append(p)
    mask[idx] = True
    return mask[: len(text)]


def token_ends_sentence(text: str, starts: np.ndarray, rule: Boundary) -> np.ndarray:
    """(n,) bool: token i ends a sentence if a boundary lies in its text or the gap after it."""
    chars = boundary_chars(text, rule)
    csum = np.concatenate([[0], np.cumsum(chars, dtype=np.int64)])  # csum[c] = boundaries before char c
    n = len(starts)
    if n == 0:
        return np.zeros(0, dtype=bool)
    nxt = np.empty(n, dtype=np.int64)
    nxt[:-1] = starts[1:]
    nxt[-1] = len(text)
    lo = np.minimum(starts, len(text))
    hi = np.maximum(np.minimum(nxt, len(text)), lo)
    return np.asarray(csum[hi] - csum[lo] > 0)


def sentence_ranges(text: str, rule: Boundary = "sentences") -> list[tuple[int, int]]:
    """Character ranges [start, end) of the sentences of `text`, whitespace trimmed, empty ones dropped."""
    ends = np.flatnonzero(boundary_chars(text, rule)) + 1
    out = []
    for a, b in zip(np.concatenate([[0], ends]), np.concatenate([ends, [len(text)]]), strict=True):
        piece = text[a:b]
        lead = len(piece) - len(piece.lstrip())
        trail = len(piece) - len(piece.rstrip())
        if b - a - lead - trail > 0:
            out.append((int(a + lead), int(b - trail)))
    return out


def sentence_rows(ends_sentence: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut rows into sentences at their sentence-end flags; the last row always ends one.

    A sentence runs from the row after one ending row to the next ending row, which belongs to it.

    Args:
        ends_sentence: (n,) bool, n >= 1: whether each row ends a sentence.

    Returns:
        (first, last, sid): (S,) int64 first and last (inclusive) row of each sentence, and (n,) int64
        the sentence of each row.
    """
    brk = np.array(ends_sentence, dtype=bool)  # a copy: the caller's flags stay as they are
    brk[-1] = True
    last = np.flatnonzero(brk)
    first = np.concatenate([np.zeros(1, dtype=np.int64), last[:-1] + 1])
    ends = brk.astype(np.int64)
    sid = np.cumsum(ends) - ends
    return first, last, sid
