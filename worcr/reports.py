"""What a running job tells the node about itself: checkpoints, progress and log lines.

One `JobReports` per job, made on first use (a job that reports nothing costs nothing). All state
is touched on the worker's event loop; handler threads come in through `call_soon_threadsafe`.

- A checkpoint is a request answered once the value is durable in PostgreSQL; it is sent in a
  task of its own (shielded), so a handler cancelled while waiting for it does not lose it.
- Progress is coalesced: only the latest value of each counter is sent, one request at a time, so
  a loop that reports every item costs a request per round trip, not per item.
- Log lines are buffered and sent in batches of up to `max_log_batch` lines.

`flush()` waits until everything reported so far is answered: the worker calls it before it sends
the job's ack, fail or yield, so the node stores the job's last checkpoint, progress and lines
before the job ends (the node refuses writes of an attempt that is over).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from worcr.errors import ConnectionClosed, RemoteError
from worcr.limits import NodeLink
from worcr.wire import Limits

__all__ = ["JobReports"]

LIMITS = Limits()  # defaults are readable on an instance only: Limits has __slots__

log = logging.getLogger(__name__)


class JobReports:
    def __init__(self, link: NodeLink, job_id: str, token: int) -> None:
        self.link = link
        self.ref = {"id": job_id, "token": token}
        self.stale = False  # the node said this attempt is over: stop sending
        self._tasks: set[asyncio.Future[Any]] = set()
        self._progress: dict[str, list[Any]] = {}
        self._progress_task: asyncio.Task[None] | None = None
        self._lines: list[list[Any]] = []
        self._log_task: asyncio.Task[None] | None = None

    @property
    def busy(self) -> bool:
        return bool(self._tasks or self._progress or self._lines)

    # -- checkpoints ------------------------------------------------------------------------------

    async def checkpoint(self, values: Mapping[str, Any]) -> None:
        """Durable when it returns; raises RemoteError if refused (stale attempt, bad value)."""
        task = asyncio.ensure_future(
            self.link.request("checkpoint", dict(self.ref, values=dict(values)))
        )
        self._track(task)
        await asyncio.shield(task)

    def _track(self, task: asyncio.Future[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if isinstance(exc, RemoteError) and exc.code == "STALE_TOKEN":
                self.stale = True

    # -- progress --------------------------------------------------------------------------------

    def progress(self, name: str, current: float, total: float | None) -> None:
        self._progress[name] = [current, total]
        if self._progress_task is None and not self.stale:
            self._progress_task = asyncio.get_running_loop().create_task(self._send_progress())
            self._track(self._progress_task)

    async def _send_progress(self) -> None:
        try:
            while self._progress and not self.stale:
                counters, self._progress = self._progress, {}
                await self._send("progress", {"counters": counters})
        finally:
            self._progress_task = None
            if self.stale:
                self._progress.clear()

    # -- log lines --------------------------------------------------------------------------------

    def log(self, level: str, message: str, at: float | None = None) -> None:
        self._lines.append([time.time() if at is None else at, level, message])
        if self._log_task is None and not self.stale:
            self._log_task = asyncio.get_running_loop().create_task(self._send_lines())
            self._track(self._log_task)

    async def _send_lines(self) -> None:
        try:
            await asyncio.sleep(0)  # let a burst of lines gather into one request
            while self._lines and not self.stale:
                batch = self._lines[: LIMITS.max_log_batch]
                del self._lines[: LIMITS.max_log_batch]
                await self._send("log", {"lines": batch})
        finally:
            self._log_task = None
            if self.stale:
                self._lines.clear()

    async def _send(self, method: str, params: dict[str, Any]) -> None:
        try:
            await self.link.request(method, dict(self.ref, **params))
        except RemoteError as exc:
            if exc.code == "STALE_TOKEN":
                self.stale = True
            else:
                log.warning("job %s: %s not stored: %s", self.ref["id"], method, exc.message)
        except ConnectionClosed:
            pass  # not resent (progress and lines are only worth their latest state)

    # -- end of the job ---------------------------------------------------------------------------

    async def flush(self) -> None:
        """Wait until everything reported so far is answered (bound it with a timeout)."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))
