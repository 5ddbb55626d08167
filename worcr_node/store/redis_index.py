"""The Redis index: lane windows, the ready-lane set, leases, and the epoch sentinel.

Redis holds only what must be fast and can be rebuilt from PostgreSQL: a bounded window of job ids
per lane (the backlog stays in PostgreSQL), one lease deadline per running job, and the set of
lanes that may have ready work. Multi-key changes are Lua scripts (store/lua/*.lua) loaded once.
All keys share the hash tag `{prefix}` so every script touches one slot (Redis Cluster safe).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Collection, Iterable, Sequence
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["ClaimResult", "IndexUnavailable", "RedisIndex"]

log = logging.getLogger(__name__)


class IndexUnavailable(Exception):
    """Redis cannot be reached; PostgreSQL still holds the truth."""


def _script(name: str) -> str:
    return (resources.files("worcr_node.store") / "lua" / f"{name}.lua").read_text()


class ClaimResult:
    __slots__ = ("complete", "head", "ids", "left")

    def __init__(self, ids: list[str], left: int, complete: bool, head: int) -> None:
        self.ids = ids
        self.left = left
        self.complete = complete
        self.head = head  # seq of the window's new head (or of the last id taken; -1: unknown)


class RedisIndex:
    def __init__(self, url: str, prefix: str = "worcr", window: int = 500) -> None:
        self.redis: aioredis.Redis = aioredis.Redis.from_url(
            url, decode_responses=True, socket_timeout=10, socket_connect_timeout=5,
            health_check_interval=0,
        )  # fmt: skip
        self.window = window
        self.p = "{" + prefix + "}"
        self.ready_key = f"{self.p}:ready"
        self.leases_key = f"{self.p}:leases"
        self.epoch_key = f"{self.p}:epoch"
        self.ready_channel = f"{self.p}:ready-lanes"
        self.cancel_channel = f"{self.p}:cancel"
        self.policy_channel = f"{self.p}:policy"
        self.workers_key = f"{self.p}:workers"
        self._push = self.redis.register_script(_script("push"))
        self._claim = self.redis.register_script(_script("claim"))
        self._refill = self.redis.register_script(_script("refill"))
        self._expire = self.redis.register_script(_script("expire"))
        self._adopt = self.redis.register_script(_script("adopt"))

    def _window(self, lane: str) -> str:
        return f"{self.p}:w:{lane}"

    def _meta(self, lane: str) -> str:
        return f"{self.p}:m:{lane}"

    async def close(self) -> None:
        await self.redis.aclose()

    # -- lanes -------------------------------------------------------------------------------------

    async def push_ready(
        self, by_lane: dict[str, list[tuple[int, uuid.UUID]]], fresh: Collection[str] = ()
    ) -> None:
        """Jobs committed as ready: add them to their windows (or mark for refill), wake nodes.

        The wake-up message is `lane:oldest-seq ...`, so other nodes learn each lane's head."""
        if not by_lane:
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for lane, items in by_lane.items():
                    for start in range(0, len(items), 1000):
                        argv: list[Any] = [self.window, lane, "1" if lane in fresh else "0"]
                        for seq, jid in items[start : start + 1000]:
                            argv.append(seq)
                            argv.append(str(jid))
                        await self._push(
                            keys=[self._window(lane), self._meta(lane), self.ready_key],
                            args=argv,
                            client=pipe,
                        )
                heads = (f"{lane}:{min(s for s, _ in items)}" for lane, items in by_lane.items())
                pipe.publish(self.ready_channel, " ".join(heads))
                await pipe.execute()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise IndexUnavailable(str(exc)) from exc

    async def claim(self, lane: str, n: int, deadline_ms: int) -> ClaimResult:
        res = await self._call(
            self._claim,
            [self._window(lane), self.leases_key, self._meta(lane), self.ready_key],
            [n, deadline_ms, lane],
        )
        return ClaimResult(list(res[0]), int(res[1]), res[2] == "1", int(res[3]))

    async def lane_version(self, lane: str) -> str:
        try:
            v = await self.redis.hget(self._meta(lane), "v")
        except RedisError as exc:
            raise IndexUnavailable(str(exc)) from exc
        return str(v) if v is not None else "0"

    async def refill(
        self, lane: str, version: str, whole: bool, items: Sequence[tuple[uuid.UUID, int]]
    ) -> int:
        argv: list[Any] = [version, "1" if whole else "0", lane]
        for jid, seq in items:
            argv.append(seq)
            argv.append(str(jid))
        keys = [self._window(lane), self._meta(lane), self.leases_key, self.ready_key]
        return int(await self._call(self._refill, keys, argv))

    async def ready_lanes(self) -> set[str]:
        try:
            return {str(m) for m in await self.redis.smembers(self.ready_key)}
        except RedisError as exc:
            raise IndexUnavailable(str(exc)) from exc

    async def mark_ready(self, lanes: Iterable[str]) -> None:
        """Lanes found with ready work in PostgreSQL: refill them from scratch."""
        lanes = list(lanes)
        if not lanes:
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for lane in lanes:
                    pipe.hset(self._meta(lane), "c", "0")
                pipe.sadd(self.ready_key, *lanes)
                pipe.publish(self.ready_channel, " ".join(lanes))
                await pipe.execute()
        except RedisError as exc:
            raise IndexUnavailable(str(exc)) from exc

    # -- leases ------------------------------------------------------------------------------------

    async def lease_extend(self, deadlines: dict[str, int]) -> None:
        """Push deadlines later for leases that still exist (never create or shorten one)."""
        if deadlines:
            mapping: dict[str, float] = {k: float(v) for k, v in deadlines.items()}
            await self._redis_op(self.redis.zadd(self.leases_key, mapping, xx=True, gt=True))

    async def lease_set(self, deadlines: dict[str, int]) -> None:
        """Set the exact deadlines of existing leases (after a claim learns each reserve_for)."""
        if deadlines:
            mapping: dict[str, float] = {k: float(v) for k, v in deadlines.items()}
            await self._redis_op(self.redis.zadd(self.leases_key, mapping, xx=True))

    async def lease_release(self, ids: Sequence[str]) -> None:
        if ids:
            await self._redis_op(self.redis.zrem(self.leases_key, *ids))

    async def lease_take_expired(self, now_ms: int, limit: int) -> list[str]:
        return list(await self._call(self._expire, [self.leases_key], [now_ms, limit]))

    async def lease_adopt(self, deadlines: dict[str, int]) -> int:
        """Create leases for running jobs that have none; return how many were created."""
        argv: list[Any] = []
        for jid, deadline in deadlines.items():
            argv.append(deadline)
            argv.append(jid)
        if not argv:
            return 0
        return int(await self._call(self._adopt, [self.leases_key], argv))

    # -- epoch (data-loss detection) ---------------------------------------------------------------

    async def epoch(self) -> str | None:
        v = await self._redis_op(self.redis.get(self.epoch_key))
        return None if v is None else str(v)

    async def epoch_init(self, value: str) -> str:
        """Set the epoch if absent; return the epoch in force."""
        await self._redis_op(self.redis.set(self.epoch_key, value, nx=True))
        current = await self.epoch()
        return current or value

    async def listen(
        self, channel: str, handle: Callable[[str], None], stopping: Callable[[], bool]
    ) -> None:
        """Call `handle` with each message on `channel` until `stopping()`; resubscribe after a
        Redis failure (restart, failover), so a listener never dies with the connection."""
        while not stopping():
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(channel)
                async for msg in pubsub.listen():
                    if msg.get("type") == "message":
                        handle(str(msg["data"]))
            except Exception as exc:  # Redis down or restarted
                log.debug("listener on %s: %s", channel, exc)
                await asyncio.sleep(0.5)
            finally:
                try:
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                except Exception:
                    pass

    # -- worker registry (explain, UI): worker id -> JSON description, refreshed by its node -------

    async def workers_put(self, entries: dict[str, str]) -> None:
        if entries:
            mapping: dict[Any, Any] = dict(entries)
            await self._redis_op(self.redis.hset(self.workers_key, mapping=mapping))

    async def workers_forget(self, worker_ids: Sequence[str]) -> None:
        if worker_ids:
            await self._redis_op(self.redis.hdel(self.workers_key, *worker_ids))

    async def worker_get(self, worker_id: str) -> str | None:
        v = await self._redis_op(self.redis.hget(self.workers_key, worker_id))
        return None if v is None else str(v)

    async def publish_policy(self) -> None:
        await self._redis_op(self.redis.publish(self.policy_channel, "changed"))

    async def publish_cancel(self, job_ids: Sequence[str]) -> None:
        if job_ids:
            await self._redis_op(self.redis.publish(self.cancel_channel, " ".join(job_ids)))

    async def _redis_op(self, coro: Any) -> Any:
        try:
            return await coro
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise IndexUnavailable(str(exc)) from exc

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return await script(keys=keys, args=args)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise IndexUnavailable(str(exc)) from exc
