"""An ingest run's tally: its report, the failures as they happen, and its progress (files done, a big
file counted in fractions as its tokens are embedded, tokens/s and ETA) as a terminal bar or as log
lines with a heartbeat."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from schemas.models import IngestFailure, IngestReport

if TYPE_CHECKING:
    from indexer.store import Written

# the run's own lines (stored documents, heartbeats, skipped files) share one logger, which
# `chunkless ingest` turns up to INFO when it draws no bar
log = logging.getLogger("indexer.ingest")

HEARTBEAT_S = 5.0  # longest silence of a non-terminal run: a pipe reader (CI, a supervisor) sees it is alive


class Progress:
    """Files done (a big file counted in fractions as its tokens are embedded), tokens/s and ETA.

    On a terminal a tqdm bar; otherwise one log line per stored document, plus a heartbeat line
    whenever nothing was logged for `every_s` seconds, so output to a pipe or a log file is never
    silent for long (parsing a big PDF, loading the model, embedding one huge file).

    Args:
        total_files: files the run will go through (the bar's total).
        bar: draw a tqdm bar (terminal) instead of log lines.
        clock: seconds, monotonic; tests pass a fake one.
        every_s: longest silence between log lines in a non-terminal run.
    """

    def __init__(
        self,
        total_files: int,
        bar: bool,
        clock: Callable[[], float] = time.monotonic,
        every_s: float = HEARTBEAT_S,
    ) -> None:
        self.total = total_files
        self.done = 0
        self.tokens = 0  # tokens of finished files
        self._partial: dict[str, tuple[int, int]] = {}  # doc_id -> (tokens embedded, tokens in the file)
        self._clock = clock
        self.every_s = every_s
        self.t0 = clock()
        self._last_line = self.t0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._bar: Any = None
        if bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total_files, unit="file", dynamic_ncols=True, smoothing=0.1)

    @property
    def files(self) -> float:
        """Files done, counting each file being embedded by the share of its tokens already embedded."""
        return self.done + sum(d / t for d, t in self._partial.values() if t > 0)

    @property
    def tokens_seen(self) -> int:
        """Tokens embedded so far, in finished and unfinished files."""
        return self.tokens + sum(d for d, _ in self._partial.values())

    def rate(self) -> float:
        return self.tokens_seen / max(self._clock() - self.t0, 1e-9)

    def line(self) -> str:
        """Where the run stands: files (fractional), tokens, tokens/s and ETA."""
        files = self.files
        elapsed = self._clock() - self.t0
        eta = f"ETA {elapsed / files * (self.total - files):.0f}s" if files > 0 else "ETA ?"
        return f"[{files:.1f}/{self.total} files, {self.tokens_seen:,} tokens, {self.rate():,.0f} tokens/s, {eta}]"

    def working(self, doc_id: str, tokens_done: int, tokens_total: int) -> None:
        """Part of a file is embedded: `tokens_done` of its `tokens_total` tokens."""
        with self._lock:
            self._partial[doc_id] = (tokens_done, tokens_total)
        self._refresh_bar()

    def advance(self, what: str, doc_id: str, tokens: int = 0) -> None:
        """One file finished (stored, unchanged or failed)."""
        with self._lock:
            self._partial.pop(doc_id, None)
            self.done += 1
            self.tokens += tokens
        if self._bar is not None:
            self._refresh_bar()
            return
        # one line per stored document; skips and failures are logged where they happen
        if what == "stored":
            log.info("stored %s (%d tokens) %s", doc_id, tokens, self.line())
            self._last_line = self._clock()

    def _refresh_bar(self) -> None:
        if self._bar is None:
            return
        with self._lock:
            self._bar.n = round(self.files, 2)
            self._bar.set_postfix_str(f"{self.rate():,.0f} tok/s", refresh=False)
            self._bar.refresh()

    def tick(self) -> bool:
        """Log a progress line if nothing was logged for `every_s` seconds; True if it did."""
        if self._bar is not None or self._clock() - self._last_line < self.every_s:
            return False
        with self._lock:
            working = ", ".join(sorted(self._partial)) or "-"
            msg = f"progress {self.line()}; working on {working}"
        log.info(msg)
        self._last_line = self._clock()
        return True

    def start(self) -> None:
        """Start the heartbeat thread (non-terminal runs only)."""
        if self._bar is not None or self._beat is not None:
            return

        def beat() -> None:
            while not self._stop.wait(min(1.0, self.every_s / 4)):
                self.tick()

        self._beat = threading.Thread(target=beat, name="chunkless-progress", daemon=True)
        self._beat.start()

    def close(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=2.0)
        if self._bar is not None:
            self._bar.close()


class Tally:
    """What a run did so far: its report, its progress and the failure callback, under one lock.

    All three stages of a run (loader, embedding, writer) report here, each file once: failed,
    unchanged or stored.

    Args:
        total_files: files the run will go through (the progress bar's total).
        bar: draw a tqdm bar (terminal) instead of log lines.
        on_failure: called with each failure as it happens.
    """

    def __init__(self, total_files: int, bar: bool, on_failure: Callable[[IngestFailure], None] | None = None) -> None:
        self.report = IngestReport()
        self.progress = Progress(total_files, bar)
        self._on_failure = on_failure
        self._lock = threading.Lock()

    def failed(self, path: str, reason: str, doc_id: str = "") -> None:
        """A file is skipped for `reason` (logged as a warning, and passed to the failure callback)."""
        f = IngestFailure(path=path, reason=reason)
        with self._lock:
            self.report.failures.append(f)
        self.progress.advance("failed", doc_id or path)
        log.warning("skipped %s: %s", path, reason)
        if self._on_failure:
            self._on_failure(f)

    def unchanged(self, doc_id: str) -> None:
        """A file's content is stored already under its doc_id."""
        with self._lock:
            self.report.skipped_unchanged += 1
        self.progress.advance("unchanged", doc_id)

    def stored(self, doc_id: str, written: Written, n_tokens: int, replaced: bool) -> None:
        """A document's header is committed: `written` bytes and segments, `n_tokens` model tokens."""
        with self._lock:
            self.report.bytes_stored += written.bytes
            self.report.replaced += int(replaced)
            self.report.documents += 1
            self.report.tokens += n_tokens
            self.report.segments += written.segments
        self.progress.advance("stored", doc_id, n_tokens)
