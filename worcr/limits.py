"""Rate limits from inside a job: `await ctx.acquire("partner-api", key=..., units=1)`.

The node holds every limit (cluster-wide); the worker only asks. `NodeLink` is the worker's
current connection to a node as jobs see it (it survives reconnections: a request made while no
node is connected waits for the next session). `Grant` is the node's answer.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from worcr.errors import ConnectionClosed, RemoteError, WorcrError
from worcr.wire import ErrorCode

__all__ = ["Grant", "LimitTimeout", "NodeLink"]

MAX_WAIT = 30.0  # seconds one acquire request may wait on the node (the node allows 60)


@dataclass(frozen=True, slots=True)
class Grant:
    """The node's answer to an acquire: `granted`, else `retry_after` seconds; `key` is the
    limit key used (given, or computed from the job by the limit's template)."""

    granted: bool
    retry_after: float
    key: str
    at: float  # when the node decided, Unix seconds on the node's Redis clock

    @classmethod
    def from_wire(cls, answer: Any) -> Grant:
        if not isinstance(answer, dict):
            raise WorcrError(f"unexpected acquire answer {answer!r}")
        return cls(
            bool(answer.get("granted")),
            float(answer.get("retry_after") or 0.0),
            str(answer.get("key", "")),
            float(answer.get("at") or 0.0),
        )


class LimitTimeout(WorcrError, TimeoutError):
    """`ctx.acquire(..., wait=...)` ran out of time before the limit granted the units."""


class NodeLink:
    """The connection jobs send their requests on; None between sessions."""

    def __init__(self) -> None:
        self.conn: Any = None
        self._ready = asyncio.Event()

    def attach(self, conn: Any) -> None:
        self.conn = conn
        if conn is None:
            self._ready.clear()
        else:
            self._ready.set()

    async def request(self, method: str, params: dict[str, Any], resend: bool = True) -> Any:
        """Send a request on the current session. If the session is lost before the answer,
        send it again on the next one (`resend`: an acquire repeated takes units twice, which
        errs on the safe side), or raise ConnectionClosed (a release repeated could give back
        units the job still uses)."""
        while True:
            await self._ready.wait()
            conn = self.conn
            try:
                return await conn.request(method, params)
            except RemoteError as exc:
                if exc.code != ErrorCode.SHUTTING_DOWN:
                    raise
                # The stopping node did not apply it: always safe to send on the next session.
                if self.conn is conn:
                    self.attach(None)
            except ConnectionClosed:
                if self.conn is conn:
                    self.attach(None)
                if not resend:
                    raise


async def acquire(
    link: NodeLink,
    job: dict[str, Any],
    limit: str,
    key: str | None,
    units: int,
    wait: float | None,
) -> Grant:
    loop = asyncio.get_running_loop()
    deadline = None if wait is None else loop.time() + wait
    while True:
        left = MAX_WAIT if deadline is None else max(0.0, deadline - loop.time())
        params = dict(job, limit=limit, units=units, wait=min(left, MAX_WAIT))
        if key is not None:
            params["key"] = key
        grant = Grant.from_wire(await link.request("acquire", params))
        if grant.granted:
            return grant
        if deadline is not None and loop.time() >= deadline:
            raise LimitTimeout(f"limit {limit!r} (key {grant.key!r}) did not grant {units} "
                               f"unit(s) within {wait} s")  # fmt: skip
        if grant.retry_after > 0 and params["wait"] == 0:
            await asyncio.sleep(min(grant.retry_after, left))
