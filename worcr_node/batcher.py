"""Group commit: many small requests become one storage round trip.

A Batcher collects items from any number of callers and hands them to one flush function in
batches. A flush starts as soon as one is possible (so an idle system adds no delay); while
`concurrency` flushes are in flight, new items accumulate and go together in the next one. Each
caller awaits the results for exactly its own items.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["Batcher"]

In = TypeVar("In")
Out = TypeVar("Out")

log = logging.getLogger(__name__)


class Batcher(Generic[In, Out]):
    def __init__(
        self,
        name: str,
        flush: Callable[[list[In]], Awaitable[Sequence[Out]]],
        *,
        max_batch: int = 1000,
        concurrency: int = 1,
    ) -> None:
        self.name = name
        self._flush = flush
        self._max_batch = max_batch
        self._concurrency = concurrency
        self._items: list[In] = []
        self._waiters: list[tuple[asyncio.Future[list[Out]], int, int]] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def submit(self, items: Sequence[In]) -> list[Out]:
        """Queue items for the next flush; return their results in order."""
        if self._closed:
            raise RuntimeError(f"batcher {self.name} is closed")
        if not items:
            return []
        fut: asyncio.Future[list[Out]] = asyncio.get_running_loop().create_future()
        start = len(self._items)
        self._items.extend(items)
        self._waiters.append((fut, start, len(items)))
        self._maybe_flush()
        return await fut

    @property
    def pending(self) -> int:
        return len(self._items)

    def _maybe_flush(self) -> None:
        while self._items and self._in_flight < self._concurrency:
            items, waiters = self._take()
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(
                self._run(items, waiters), name=f"batcher:{self.name}"
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self) -> tuple[list[In], list[tuple[asyncio.Future[list[Out]], int, int]]]:
        """Whole requests up to max_batch items (a single larger request goes alone)."""
        taken = 0
        count = 0
        for _fut, _start, n in self._waiters:
            if count and taken + n > self._max_batch:
                break
            taken += n
            count += 1
        items = self._items[:taken]
        waiters = [(f, s, n) for f, s, n in self._waiters[:count]]
        del self._items[:taken]
        del self._waiters[:count]
        self._waiters = [(f, s - taken, n) for f, s, n in self._waiters]
        return items, waiters

    async def _run(
        self, items: list[In], waiters: list[tuple[asyncio.Future[list[Out]], int, int]]
    ) -> None:
        try:
            results = list(await self._flush(items))
        except BaseException as exc:
            for fut, _s, _n in waiters:
                if not fut.done():
                    fut.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            for fut, start, n in waiters:
                if not fut.done():
                    fut.set_result(results[start : start + n])
        finally:
            self._in_flight -= 1
            if not self._closed:
                self._maybe_flush()

    async def close(self) -> None:
        """Finish what was submitted, then refuse new items."""
        while self._items or self._tasks:
            self._maybe_flush()
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
        self._closed = True
