"""Micro-batching: concurrent searches gathered into one `Retriever.search_batch` call."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from retriever.serve.models import Filter
from schemas.errors import ChunklessError, ShuttingDownError
from schemas.models import SearchResponse

SearchBatch = Callable[[list[str], int | None, Filter | None], list[SearchResponse]]


@dataclass
class _Pending:
    query: str
    top: int | None
    filter: Filter | None
    future: asyncio.Future[SearchResponse]
    queued_at: float = field(default_factory=time.perf_counter)

    @property
    def key(self) -> str:
        """Queries batch together only when they share `top` and `filter` (search_batch takes one of each)."""
        return json.dumps([self.top, self.filter], sort_keys=True)


class MicroBatcher:
    """Gathers searches for at most `wait_ms` (or until `max_batch` arrive) and runs them as one batch.

    One batch runs at a time, in a worker thread; requests that arrive meanwhile queue and form the
    next batch, so under load batches fill without waiting and a lone query waits at most `wait_ms`.
    If a batch raises a `ChunklessError` (one query the model rejects), its queries are run one by
    one so only the bad one fails.

    Args:
        search_batch: `Retriever.search_batch`.
        wait_ms: longest wait for more queries after the first.
        max_batch: most queries in one batch.
        on_batch: called with each batch's size (metrics).
    """

    def __init__(
        self, search_batch: SearchBatch, wait_ms: float, max_batch: int, on_batch: Callable[[int], None] | None = None
    ) -> None:
        self._search_batch = search_batch
        self.wait_s = wait_ms / 1e3
        self.max_batch = max_batch
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the gathering task on the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="chunkless-batcher")

    async def stop(self) -> None:
        """Stop gathering; queries still queued are failed with a ShuttingDownError (503)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while not self._queue.empty():
            p = self._queue.get_nowait()
            if not p.future.done():
                p.future.set_exception(ShuttingDownError("the service is shutting down; retry on the next one"))

    async def search(self, query: str, top: int | None, filter: Filter | None) -> SearchResponse:
        """One query's response, answered as part of a batch.

        Returns:
            The `SearchResponse`; `timings_ms["queue"]` is the time it waited for its batch.

        Raises:
            ChunklessError: the query was rejected (e.g. too many tokens).
            ShuttingDownError: the service stopped before the query's batch ran.
        """
        fut: asyncio.Future[SearchResponse] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(query, top, filter, fut))
        return await fut

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            batch = [first]
            deadline = time.perf_counter() + self.wait_s
            while len(batch) < self.max_batch:
                left = deadline - time.perf_counter()
                try:
                    batch.append(
                        self._queue.get_nowait() if left <= 0 else await asyncio.wait_for(self._queue.get(), left)
                    )
                except (asyncio.QueueEmpty, TimeoutError):
                    break
            groups: dict[str, list[_Pending]] = {}
            for p in batch:
                groups.setdefault(p.key, []).append(p)
            for group in groups.values():
                await self._answer(group)

    async def _answer(self, group: list[_Pending]) -> None:
        started = time.perf_counter()
        if self._on_batch is not None:
            self._on_batch(len(group))
        try:
            results = await asyncio.to_thread(
                self._search_batch, [p.query for p in group], group[0].top, group[0].filter
            )
        except ChunklessError as e:
            if len(group) == 1:
                _settle(group[0], None, e)
                return
            for p in group:  # one bad query must not fail its neighbours
                await self._answer([p])
            return
        except Exception as e:  # a fault, not bad input: the route answers 500 for these queries only
            for p in group:
                _settle(p, None, e)
            return
        for p, r in zip(group, results, strict=True):
            r.timings_ms["queue"] = (started - p.queued_at) * 1e3
            _settle(p, r, None)


def _settle(p: _Pending, result: SearchResponse | None, error: BaseException | None) -> None:
    if p.future.done():  # the client went away and its request was cancelled
        return
    if error is not None:
        p.future.set_exception(error)
    else:
        assert result is not None
        p.future.set_result(result)
