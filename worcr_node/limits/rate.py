"""Rate limits acquired by running jobs: the node side of the protocol's `acquire` / `release`.

A worker, while it runs a job, asks for units of a named rate limit (before calling a partner
API, say). The answer is granted, or not now with how long to wait. Concurrency-type units are
held by the job: they are released with its lease (ack, fail, yield, expiry) or earlier with
`release`, and are also written to PostgreSQL so a Redis loss can count them again. An acquire
may wait on the node (`wait` seconds): a concurrency waiter is woken when any node releases
units of that key, a rate waiter sleeps until the time the script said.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import msgpack

from worcr_node.bus import Bus
from worcr_node.dispatch.rules import TagSet
from worcr_node.limits.compiled import CompiledLimits
from worcr_node.limits.model import MAX_KEY_LEN, Limit, LimitType, Scope
from worcr_node.messages import UnitsFreed
from worcr_node.store.pg import PgStore
from worcr_node.store.redis_index import AcquireResult, LimitCheck, RedisIndex

__all__ = ["Grant", "RateLimitError", "RateLimiter"]

CONCURRENCY_POLL = 0.1  # seconds: the retry hint for a full concurrency limit (no fixed time)
REBUILD_RETRY = 0.25
MAX_WAIT = 60.0


class RateLimitError(Exception):
    """The request cannot succeed as asked: `code` is a wire error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Grant:
    granted: bool
    retry_after: float  # seconds; 0 when granted
    key: str
    at_ms: int  # Redis clock when decided

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"granted": self.granted, "key": self.key, "at": self.at_ms / 1000}
        if not self.granted:
            out["retry_after"] = self.retry_after
        return out


class RateLimiter:
    def __init__(
        self,
        index: RedisIndex,
        store: PgStore,
        limits: Callable[[], CompiledLimits],
        bus: Bus,
    ) -> None:
        self.index = index
        self.bus = bus  # UnitsFreed when units are given back
        self.store = store
        self.limits = limits
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}

    async def _give(self, job_id: uuid.UUID, check: LimitCheck, units: int) -> AcquireResult:
        res = await self.index.acquire(str(job_id), check, units, give=True)
        if res.value > 0:
            await self.bus.publish(UnitsFreed((check.state_key,)))
        return res

    def freed(self, keys: Iterable[str]) -> None:
        """Units of these state keys were released (any node): wake their waiters."""
        for key in keys:
            for fut in self._waiters.pop(key, ()):
                if not fut.done():
                    fut.set_result(None)

    def limit(self, name: str) -> Limit:
        lim = self.limits().by_name.get(name)
        if lim is None or not lim.enabled:
            raise RateLimitError("NOT_FOUND", f"limit {name!r}: no such (enabled) limit")
        if lim.scope != Scope.RATE:
            raise RateLimitError("BAD_REQUEST", f"limit {name!r} is a job limit: the node applies "
                                 "it before dispatch; only rate limits are acquired")  # fmt: skip
        return lim

    async def key_for(self, lim: Limit, key: str | None, job_id: uuid.UUID, row: Any = None) -> str:
        """The given key, else the limit's template over the job (`row`, or read from
        PostgreSQL)."""
        if key is not None:
            if len(key) > MAX_KEY_LEN or not key.isprintable():
                raise RateLimitError("BAD_REQUEST", f"key: at most {MAX_KEY_LEN} printable "
                                     "characters")  # fmt: skip
            return key
        if not lim.key.parts:
            return ""
        if row is None:
            row = await self.store.job_get(job_id)
        if row is None:
            raise RateLimitError("STALE_TOKEN", f"job {job_id}: not found")
        args = msgpack.unpackb(row["args"], raw=False, strict_map_key=False)
        return lim.key.render(row["kind"], row["tenant"], TagSet(row["tags"]), args)

    async def acquire(
        self,
        job_id: uuid.UUID,
        token: int,
        name: str,
        key: str | None,
        units: int,
        wait: float,
        row: Any = None,
    ) -> Grant:
        lim = self.limit(name)
        cap = lim.burst if lim.type == LimitType.TOKEN_BUCKET else lim.limit
        if units > cap:
            raise RateLimitError("BAD_REQUEST", f"units: {units} is more than limit {name!r} can "
                                 f"ever grant at once ({cap})")  # fmt: skip
        k = await self.key_for(lim, key, job_id, row)
        check = self.limits().check(lim, k)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(max(wait, 0.0), MAX_WAIT)
        while True:
            fut: asyncio.Future[None] = loop.create_future()
            if lim.type == LimitType.CONCURRENCY:  # register before asking: no lost wake-up
                self._waiters.setdefault(check.state_key, set()).add(fut)
            try:
                res = await self.index.acquire(str(job_id), check, units)
                grant = self._answer(res, k)
                if grant.granted and lim.type == LimitType.CONCURRENCY:
                    await self._record(job_id, token, lim, check, k, units)
                left = deadline - loop.time()
                if grant.granted or left <= 0:
                    return grant
                if lim.type == LimitType.CONCURRENCY:
                    try:
                        async with asyncio.timeout(min(left, 1.0)):
                            await fut
                    except TimeoutError:
                        pass
                else:
                    await asyncio.sleep(min(left, grant.retry_after))
            finally:
                waiting = self._waiters.get(check.state_key)
                if waiting is not None:
                    waiting.discard(fut)
                    if not waiting:
                        del self._waiters[check.state_key]

    def _answer(self, res: AcquireResult, key: str) -> Grant:
        if res.status == 1:
            return Grant(True, 0.0, key, res.now_ms)
        if res.status == -1:
            raise RateLimitError("STALE_TOKEN", "this attempt holds no lease (it ended, expired or "
                                 "was cancelled)")  # fmt: skip
        if res.status == -2:
            raise RateLimitError("BAD_REQUEST", "units: more than the limit can ever grant")
        if res.status == -3:
            return Grant(False, REBUILD_RETRY, key, res.now_ms)
        retry = CONCURRENCY_POLL if res.value < 0 else max(0.001, res.value / 1000)
        return Grant(False, math.ceil(retry * 1000) / 1000, key, res.now_ms)

    async def _record(
        self, job_id: uuid.UUID, token: int, lim: Limit, check: LimitCheck, key: str, units: int
    ) -> None:
        """Write the hold to PostgreSQL (for a recount after a Redis loss); if that fails, give
        the units back and fail the request: an unrecorded hold could be lost."""
        try:
            await self.store.hold_add(job_id, token, lim.id, key, units)
        except BaseException:
            await self._give(job_id, check, units)
            raise

    async def release(
        self,
        job_id: uuid.UUID,
        token: int,
        name: str,
        key: str | None,
        units: int,
        row: Any = None,
    ) -> int:
        """Give concurrency units back before the job ends; returns how many were held."""
        lim = self.limit(name)
        k = await self.key_for(lim, key, job_id, row)
        if lim.type != LimitType.CONCURRENCY:
            return 0  # rate units are spent, not held
        check = self.limits().check(lim, k)
        res = await self._give(job_id, check, units)
        if res.status == -1:
            raise RateLimitError("STALE_TOKEN", "this attempt holds no lease")
        if res.value:
            await self.store.hold_give(job_id, token, lim.id, k, res.value)
        return res.value
