"""Pictures of one document's relevance for one query, as in the method's original write-up.

Raw r = D @ q per token (thin), the Gaussian-smoothed signal (thick), the threshold line, the returned
spans shaded, and page boundaries as ticks along the top axis. Needs the `plot` extra (matplotlib).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from retriever.search import Explanation


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
    for i, (a, b) in enumerate(span_token_ranges(ex)):
        ax.axvspan(a, b, color="tab:orange", alpha=0.25, lw=0, label="returned spans" if i == 0 else None)
        ax.text((a + b) / 2, ax.get_ylim()[1], f"#{i + 1}", ha="center", va="top", fontsize=8, color="tab:orange")
    pages = page_token_starts(ex)
    if pages:
        top: Any = ax.secondary_xaxis("top")
        top.set_xticks(pages, [f"p{i + 2}" for i in range(len(pages))], fontsize=7)
        top.set_xlabel("page starts", fontsize=8)
        for p in pages:
            ax.axvline(p, color="0.85", lw=0.8, zorder=0)
    ax.set_xlim(0, max(len(x) - 1, 1))
    ax.set_xlabel("token index")
    ax.set_ylabel("cosine relevance")
    title = query if len(query) <= 90 else query[:87] + "..."
    ax.set_title(f"{ex.doc_id}: “{title}” — {len(ex.spans)} span(s)", fontsize=10)
    ax.legend(loc="upper right", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
