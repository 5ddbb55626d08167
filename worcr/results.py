"""Job outcomes, batched: the worker's `ack`, `fail` and `yield` reports to the node.

Outcomes are queued and sent as one request per method, Nagle-style: on the next event-loop
iteration when no report request is in flight (an idle worker adds no latency); otherwise when
the request in flight is answered, when `batch_size` are waiting, or after `delay` seconds (0.5
ms by default: the node frees a worker's credit when a report arrives, so holding acks back longer
idles the worker; measured in bench/RESULTS.md). A busy worker thus sends a few large requests
instead of one per job, and batches grow with the node's latency. A report is kept until the node
answers it: if the connection drops, or the node answers a retryable error, it is sent again
(after the worker reconnects, or after a backoff delay). The node answers each item; an item
refused with `STALE_TOKEN` (the lease was lost and the job runs elsewhere) is logged, never fatal.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, Protocol

from worcr.backoff import Backoff
from worcr.errors import ConnectionClosed, FrameTooLarge, RemoteError
from worcr.wire import ErrorCode, Limits

__all__ = ["METHODS", "Reporter", "Sender"]

LIMITS = Limits()  # defaults are readable on an instance only: Limits has __slots__

log = logging.getLogger(__name__)

METHODS = ("ack", "fail", "yield")


class Sender(Protocol):
    """What the reporter needs from a connection (`worcr.connection.Connection` is one)."""

    @property
    def closed(self) -> bool: ...

    def call(self, method: str, params: dict[str, Any]) -> asyncio.Future[Any]: ...


class Reporter:
    """Queues job outcomes and sends them in batches over the attached connection."""

    def __init__(
        self,
        *,
        batch_size: int = 64,
        delay: float = 0.0005,
        max_batch: int = LIMITS.max_batch,
        retry_backoff: Backoff | None = None,
    ) -> None:
        self.batch_size = max(1, min(batch_size, max_batch))
        self.delay = delay
        self.max_batch = max_batch
        self._backoff = retry_backoff or Backoff(base=0.2, cap=5.0)
        self._queues: dict[str, list[dict[str, Any]]] = {m: [] for m in METHODS}
        self._queued = 0
        self._in_flight = 0  # items
        self._requests = 0  # requests in flight
        self._sender: Sender | None = None
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self._retries = 0
        self._settled: asyncio.Event | None = None

    @property
    def queued(self) -> int:
        """Outcomes waiting to be sent."""
        return self._queued

    @property
    def in_flight(self) -> int:
        """Outcomes sent and not yet answered."""
        return self._in_flight

    def attach(self, sender: Sender | None) -> None:
        """Use `sender` from now on (None while disconnected); queued outcomes go out at once."""
        self._sender = sender
        if sender is not None and self._queued:
            self.flush()

    # -- outcomes -------------------------------------------------------------------------------

    def ack(self, job_id: str, token: int, result: Any = None) -> None:
        item: dict[str, Any] = {"id": job_id, "token": token}
        if result is not None:
            item["result"] = result
        self._add("ack", item)

    def fail(
        self,
        job_id: str,
        token: int,
        error: str,
        backtrace: str | None = None,
        retryable: bool = True,
    ) -> None:
        item: dict[str, Any] = {"id": job_id, "token": token, "error": error}
        if backtrace:
            item["backtrace"] = backtrace
        if not retryable:
            item["retryable"] = False
        self._add("fail", item)

    def yield_(self, job_id: str, token: int) -> None:
        self._add("yield", {"id": job_id, "token": token})

    def _add(self, method: str, item: dict[str, Any]) -> None:
        self._queues[method].append(item)
        self._queued += 1
        if self._queued >= self.batch_size:
            self.flush()
        else:
            self._schedule()

    def _schedule(self) -> None:
        if self._timer is None and self._sender is not None and not self._sender.closed:
            loop = asyncio.get_running_loop()
            if self._requests:
                self._timer = loop.call_later(self.delay, self.flush)
            else:
                self._timer = loop.call_soon(self.flush)

    # -- sending --------------------------------------------------------------------------------

    def flush(self) -> None:
        """Send everything queued now, if connected."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        sender = self._sender
        if sender is None or sender.closed or not self._queued:
            return
        for method in METHODS:
            items = self._queues[method]
            if not items:
                continue
            self._queues[method] = []
            self._queued -= len(items)
            size = self.max_batch
            for start in range(0, len(items), size):
                chunk = items if len(items) <= size else items[start : start + size]
                if not self._send(sender, method, chunk):
                    self._requeue(method, items[start + len(chunk) :])
                    break

    def _send(self, sender: Sender, method: str, chunk: list[dict[str, Any]]) -> bool:
        """Send one request (halving it while it is over the frame limit); False if the
        connection is closed, in which case the chunk is queued again."""
        try:
            fut = sender.call(method, {"jobs": chunk})
        except ConnectionClosed:
            self._requeue(method, chunk)
            return False
        except FrameTooLarge:
            if len(chunk) == 1:  # cannot happen within the limits the worker enforces
                log.error("%s of job %s is over the frame limit: dropped", method, chunk[0]["id"])
                return True
            half = len(chunk) // 2
            if not self._send(sender, method, chunk[:half]):
                self._requeue(method, chunk[half:])
                return False
            return self._send(sender, method, chunk[half:])
        self._in_flight += len(chunk)
        self._requests += 1
        fut.add_done_callback(functools.partial(self._on_answer, method, chunk))
        return True

    def _requeue(self, method: str, items: list[dict[str, Any]]) -> None:
        self._queues[method].extend(items)
        self._queued += len(items)

    def _on_answer(
        self, method: str, items: list[dict[str, Any]], fut: asyncio.Future[Any]
    ) -> None:
        self._in_flight -= len(items)
        self._requests -= 1
        exc = None if fut.cancelled() else fut.exception()
        if isinstance(exc, RemoteError) and exc.code == ErrorCode.SHUTTING_DOWN:
            # The node is stopping (a restart, not a refusal): sent again once the worker is
            # connected to the next node.
            self._requeue(method, items)
        elif fut.cancelled() or isinstance(exc, ConnectionClosed):
            self._requeue(method, items)  # sent again when the worker is connected again
            self._schedule()  # in case it already is
        elif isinstance(exc, RemoteError) and exc.retryable:
            self._requeue(method, items)
            delay = self._backoff.delay(min(self._retries, 30))
            self._retries += 1
            log.warning(
                "node refused %d %s report(s) for now (%s); retrying in %.2f s",
                len(items),
                method,
                exc,
                delay,
            )
            if self._timer is not None:
                self._timer.cancel()
            self._timer = asyncio.get_running_loop().call_later(delay, self.flush)
        elif exc is not None:
            log.error("node refused %d %s report(s) for good: %s", len(items), method, exc)
        else:
            self._retries = 0
            self._check_items(method, items, fut.result())
            if self._queued and not self._requests:
                self.flush()  # what queued up while this request was in flight
        self._check_settled()

    def _check_items(self, method: str, items: list[dict[str, Any]], answer: Any) -> None:
        results = answer.get("results") if isinstance(answer, dict) else None
        if not isinstance(results, list):
            return
        for item, error in zip(items, results, strict=False):
            if not error:
                continue
            code = error.get("code") if isinstance(error, dict) else error
            message = error.get("message", "") if isinstance(error, dict) else ""
            if code == ErrorCode.STALE_TOKEN:
                log.warning(
                    "%s of job %s refused: its lease was lost, it runs elsewhere (%s)",
                    method,
                    item["id"],
                    message,
                )
            else:
                log.warning("%s of job %s refused: %s: %s", method, item["id"], code, message)

    # -- shutdown -------------------------------------------------------------------------------

    async def drain(self) -> None:
        """Flush and wait until every outcome is answered (bound it with `asyncio.timeout`).

        Outcomes queued while disconnected wait for the next `attach`.
        """
        self.flush()
        if not self._queued and not self._in_flight:
            return
        self._settled = asyncio.Event()
        try:
            await self._settled.wait()
        finally:
            self._settled = None

    def _check_settled(self) -> None:
        if self._settled is not None and not self._queued and not self._in_flight:
            self._settled.set()
