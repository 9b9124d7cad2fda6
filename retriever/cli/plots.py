"""Pictures of one document's relevance for one query, as in the method's original write-up.

Raw r = D @ q per token (thin), the Gaussian-smoothed signal (thick), the threshold line, the returned
spans shaded, and page boundaries as ticks along the top axis. With the document's structure: section
starts (headings) as dotted lines with their titles, TOC / running header-footer text hatched (it
never answers), and table rows as light bands (alternating shades, so neighbouring rows part). Labels
are stacked in rows so that none overlaps another. Needs the `plot` extra (matplotlib).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from retriever.search import Explanation
from schemas.structure import NON_ANSWER_KINDS


def page_token_starts(ex: Explanation) -> list[int]:
    """Index of the first token of each page after the first: where a page boundary falls on the token axis."""
    starts = np.asarray(ex.starts)
    return [int(np.searchsorted(starts, c)) for c in ex.page_starts[1:]]


def span_token_ranges(ex: Explanation) -> list[tuple[int, int]]:
    """Each returned span as a [first, last] token range (spans are reported in characters)."""
    starts, ends = np.asarray(ex.starts), np.asarray(ex.ends)
    out = []
    for s in ex.spans:
        first = int(np.searchsorted(starts, s.start, side="left"))
        last = int(np.searchsorted(ends, s.end, side="left"))  # ends are a running max: sorted
        out.append((first, min(last, len(starts) - 1)))
    return out


def label_rows(xs: list[float], widths: list[float], max_rows: int = 3) -> list[int | None]:
    """Row (0 = top) of each label centred at xs[i] with width widths[i] so that no two in a row overlap.

    Labels are placed left to right in the first row where they fit; one that fits in none of
    `max_rows` rows gets None (not drawn) rather than covering another.
    """
    row_end = [-np.inf] * max_rows
    out: list[int | None] = [None] * len(xs)
    for i in sorted(range(len(xs)), key=lambda k: xs[k]):
        left = xs[i] - widths[i] / 2
        for r in range(max_rows):
            if left > row_end[r]:
                row_end[r] = xs[i] + widths[i] / 2
                out[i] = r
                break
    return out


@dataclass
class StructureMarks:
    """What of a document's structure the plot draws, on the token axis."""

    heads: list[tuple[int, str]] = field(default_factory=list)  # (first token, title) of each heading
    nav: list[tuple[int, int]] = field(default_factory=list)  # [first, last] tokens of TOC/header/footer blocks
    rows: list[tuple[int, int]] = field(default_factory=list)  # [first, last] tokens of each table row


def structure_token_marks(ex: Explanation) -> StructureMarks:
    """Headings, navigation blocks and table rows of `ex`'s structure as token positions (empty without one)."""
    marks = StructureMarks()
    if ex.structure is None:
        return marks
    starts = np.asarray(ex.starts)
    for b in ex.structure.blocks:
        first = int(np.searchsorted(starts, b.start, side="left"))
        last = int(np.searchsorted(starts, b.end, side="left")) - 1
        if first >= len(starts) or last < first:
            continue
        if b.kind == "heading":
            marks.heads.append((first, b.title or ""))
        elif b.kind in NON_ANSWER_KINDS:
            marks.nav.append((first, last))
        elif b.kind == "table_row":
            marks.rows.append((first, last))
    return marks


def plot_explanation(ex: Explanation, query: str, out: Path) -> Path:
    """Draw `ex` to `out` (format from its suffix, PNG by default); returns the path written."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, safe in threads and on servers
    import matplotlib.pyplot as plt

    x = np.arange(len(ex.raw))
    fig, ax = plt.subplots(figsize=(12, 4.5), dpi=110)
    ax.plot(x, ex.raw, color="0.65", lw=0.6, label="raw relevance r = D·q")
    ax.plot(x, ex.smoothed, color="tab:blue", lw=1.8, label="smoothed")
    ax.axhline(ex.threshold, color="tab:red", ls="--", lw=1.2, label=f"threshold {ex.threshold:.3f}")
    sm = structure_token_marks(ex)
    heads, nav = sm.heads, sm.nav
    for i, (a, b) in enumerate(sm.rows):
        ax.axvspan(
            a,
            b + 1,
            color="tab:purple",
            alpha=0.08 if i % 2 else 0.16,
            lw=0,
            label="table rows (each answers whole)" if i == 0 else None,
        )
    for i, (a, b) in enumerate(nav):
        ax.axvspan(
            a,
            b + 1,
            facecolor="none",
            edgecolor="0.6",
            hatch="///",
            lw=0,
            label="TOC / running header-footer (never an answer)" if i == 0 else None,
        )
    n = max(len(x), 1)
    per_char = n / 190  # token-axis width of one character of 7-pt text across the 12-inch axis
    y_top = ax.get_ylim()[1]
    spans = span_token_ranges(ex)
    marks = [((a + b) / 2, f"#{i + 1}", "tab:orange") for i, (a, b) in enumerate(spans)]
    marks += [(float(t), title if len(title) <= 28 else title[:27] + "…", "tab:green") for t, title in heads]
    rows = label_rows([m[0] for m in marks], [len(m[1]) * per_char for m in marks], max_rows=4)
    for i, (a, b) in enumerate(spans):
        ax.axvspan(a, b, color="tab:orange", alpha=0.25, lw=0, label="returned spans" if i == 0 else None)
    for i, (t, _) in enumerate(heads):
        ax.axvline(t, color="tab:green", ls=":", lw=0.8, label="section starts (headings)" if i == 0 else None)
    step = (y_top - ax.get_ylim()[0]) * 0.06
    for (xm, text, color), row in zip(marks, rows, strict=True):
        if row is not None:
            ax.text(xm, y_top - row * step, text, ha="center", va="top", fontsize=7, color=color, clip_on=True)
    pages = page_token_starts(ex)
    if pages:
        top: Any = ax.secondary_xaxis("top")
        names = [f"p{i + 2}" for i in range(len(pages))]
        if ex.structure is not None and ex.structure.page_labels:  # the printed page number, as the reader sees it
            names = [f"p{i + 2} ({ex.structure.page_labels[i + 1]})" for i in range(len(pages))]
        fits = label_rows([float(p) for p in pages], [len(t) * per_char * 1.2 for t in names], max_rows=1)
        shown = [(p, t) for p, t, row in zip(pages, names, fits, strict=True) if row is not None]
        top.set_xticks([p for p, _ in shown], [t for _, t in shown], fontsize=7)
        top.set_xlabel("page starts", fontsize=8)
        for p in pages:
            ax.axvline(p, color="0.85", lw=0.8, zorder=0)
    ax.set_xlim(0, max(len(x) - 1, 1))
    ax.set_xlabel("token index")
    ax.set_ylabel("cosine relevance")
    title = query if len(query) <= 90 else query[:87] + "..."
    ax.set_title(f"{ex.doc_id}: “{title}” — {len(ex.spans)} span(s)", fontsize=10)
    ax.legend(loc="lower right", fontsize=7, framealpha=0.9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
