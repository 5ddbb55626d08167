"""What a running job tells the node about itself: checkpoints, progress and log lines.

One `JobReports` per job, made on first use (a job that reports nothing costs nothing). All state
is touched on the worker's event loop; handler threads come in through `call_soon_threadsafe`.

- A checkpoint is a request answered once the value is durable in PostgreSQL; it is sent in a
  task of its own (shielded), so a handler cancelled while waiting for it does not lose it.
- Progress is coalesced: only the latest value of each counter is sent, one request at a time and
  at most one every `PROGRESS_INTERVAL` (a progress bar needs no more), so a loop that reports
  every item costs ten requests a second, not one per item; `flush` sends the last value at once.
- Log lines are buffered and sent in batches of up to `max_log_batch` lines and about 256 KiB.
  A line is cut at `max_log_line` characters. Lines are dropped (and counted) when more than
  `MAX_PENDING_LINES` wait, once the node says the attempt reached its line cap, once the attempt
  is over (stale), or after the job's end was reported (`close`).

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

from worcr.errors import ConnectionClosed, RemoteError, WorcrError
from worcr.limits import NodeLink
from worcr.wire import Limits

__all__ = ["JobReports"]

LIMITS = Limits()  # defaults are readable on an instance only: Limits has __slots__

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 0.1  # seconds between two progress requests of one job (flush: at once)
MAX_PENDING_LINES = 10_000  # lines waiting to be sent, per job, before new ones are dropped
BATCH_CHARS = 256 << 10  # characters of text per `log` request (well under the frame limit)
_CUT = "...(truncated)"


class JobReports:
    def __init__(self, link: NodeLink, job_id: str, token: int) -> None:
        self.link = link
        self.ref = {"id": job_id, "token": token}
        self.stale = False  # the node said this attempt is over: stop sending
        self.closed = False  # the job's end was reported: nothing more is sent
        self.capped = False  # the node stores no more lines for this attempt
        self.dropped = 0  # log lines dropped (see the module's docstring)
        self._seq = 0  # numbers checkpoint writes, so a late copy cannot undo a newer one
        self._tasks: set[asyncio.Future[Any]] = set()
        self._progress: dict[str, list[Any]] = {}
        self._progress_task: asyncio.Task[None] | None = None
        self._hurry: asyncio.Event | None = None  # set by flush: send pending progress now
        self._lines: list[list[Any]] = []
        self._log_task: asyncio.Task[None] | None = None

    @property
    def busy(self) -> bool:
        return bool(self._tasks or self._progress or self._lines)

    # -- checkpoints ------------------------------------------------------------------------------

    async def checkpoint(self, values: Mapping[str, Any]) -> None:
        """Durable when it returns; raises RemoteError if refused (stale attempt, bad value)."""
        self._seq += 1
        task = asyncio.ensure_future(
            self.link.request("checkpoint", dict(self.ref, values=dict(values), seq=self._seq))
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
        if self.stale or self.closed:
            return
        self._progress[name] = [current, total]
        if self._progress_task is None and not self.stale:
            self._progress_task = asyncio.get_running_loop().create_task(self._send_progress())
            self._track(self._progress_task)

    async def _send_progress(self) -> None:
        try:
            while self._progress and not self.stale:
                counters, self._progress = self._progress, {}
                await self._send("progress", {"counters": counters})
                if self._progress and not self.stale:
                    await self._pause()
        finally:
            self._progress_task = None
            if self.stale:
                self._progress.clear()

    async def _pause(self) -> None:
        """Wait PROGRESS_INTERVAL before the next progress request, unless a flush hurries it."""
        hurry = self._hurry = self._hurry or asyncio.Event()
        try:
            async with asyncio.timeout(PROGRESS_INTERVAL):
                await hurry.wait()
        except TimeoutError:
            pass

    # -- log lines --------------------------------------------------------------------------------

    def log(self, level: str, message: str, at: float | None = None) -> None:
        if self.stale or self.closed or self.capped or len(self._lines) >= MAX_PENDING_LINES:
            self.dropped += 1
            return
        if len(message) > LIMITS.max_log_line:
            message = message[: LIMITS.max_log_line - len(_CUT)] + _CUT
        self._lines.append([time.time() if at is None else at, level, message])
        if self._log_task is None and not self.stale:
            self._log_task = asyncio.get_running_loop().create_task(self._send_lines())
            self._track(self._log_task)

    async def _send_lines(self) -> None:
        try:
            await asyncio.sleep(0)  # let a burst of lines gather into one request
            while self._lines and not (self.stale or self.capped):
                n, chars = 0, 0
                for line in self._lines[: LIMITS.max_log_batch]:
                    chars += len(line[2]) + 32
                    if n and chars > BATCH_CHARS:
                        break
                    n += 1
                batch = self._lines[:n]
                del self._lines[:n]
                answer = await self._send("log", {"lines": batch})
                if isinstance(answer, dict) and answer.get("stored", n) < n:
                    self.capped = True  # the attempt's line cap: the rest would be dropped
        finally:
            self._log_task = None
            if self.stale or self.capped:
                self.dropped += len(self._lines)
                self._lines.clear()

    async def _send(self, method: str, params: dict[str, Any]) -> Any:
        try:
            return await self.link.request(method, dict(self.ref, **params))
        except RemoteError as exc:
            if exc.code == "STALE_TOKEN":
                self.stale = True
            else:
                log.warning("job %s: %s not stored: %s", self.ref["id"], method, exc.message)
        except ConnectionClosed:
            pass
        except WorcrError as exc:  # e.g. a frame over the limit: never let a report kill a job
            log.warning("job %s: %s not sent: %s", self.ref["id"], method, exc)
        return None

    # -- end of the job ---------------------------------------------------------------------------

    async def flush(self) -> None:
        """Wait until everything reported so far is answered (bound it with a timeout)."""
        if self._hurry is None:
            self._hurry = asyncio.Event()
        self._hurry.set()
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    def close(self) -> None:
        """The job's end was reported: what it reports from now on (a task it left running, a
        late log record) is dropped, since the node would refuse it."""
        self.closed = True
        self._progress.clear()
        self.dropped += len(self._lines)
        self._lines.clear()
