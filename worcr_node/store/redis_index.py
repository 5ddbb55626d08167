"""The Redis index: lane windows, the ready-lane set, leases, limit state, the epoch sentinel.

Redis holds only what must be fast and can be rebuilt from PostgreSQL: a bounded window of job ids
per lane (the backlog stays in PostgreSQL), one lease deadline per running job, and the set of
lanes that may have ready work, and the live state of limits (counters, token buckets, window logs,
the concurrency units each running job holds). Multi-key changes are Lua scripts
(store/lua/*.lua) loaded once.
All keys share the hash tag `{prefix}`, so every script touches one slot: on a Redis Cluster all of
Worcr's keys would live on one shard (spreading them is the cluster issue's work).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worcr_node.messages import LanesReady, encode

__all__ = ["AcquireResult", "ClaimResult", "IndexUnavailable", "LimitCheck", "RedisIndex"]

log = logging.getLogger(__name__)


class IndexUnavailable(Exception):
    """Redis cannot be reached; PostgreSQL still holds the truth."""


def _script(name: str, *, limits: bool = False) -> str:
    text = (resources.files("worcr_node.store") / "lua" / f"{name}.lua").read_text()
    return _script("limits") + "\n" + text if limits else text


class ClaimResult:
    __slots__ = ("blocker", "complete", "exhausted", "head", "ids", "left", "now_ms", "retry_ms")

    def __init__(
        self,
        ids: list[str],
        left: int,
        complete: bool,
        head: int,
        now_ms: int = 0,
        blocker: int = 0,
        retry_ms: int = 0,
        exhausted: Sequence[tuple[int, int]] = (),
    ) -> None:
        self.ids = ids
        self.left = left
        self.complete = complete
        self.head = head  # seq of the window's new head (or of the last id taken; -1: unknown)
        self.now_ms = now_ms  # Redis clock at the claim (limited claims only)
        # limited claims: the 0-based index of the limit that admitted nothing (None: none;
        # -1: Redis lost its data and is not rebuilt yet), ms until it may admit again (-1: when
        # a holder releases), and (index, retry ms) of limits this claim used up
        self.blocker: int | None = None if blocker == 0 else (-1 if blocker < 0 else blocker - 1)
        self.retry_ms = retry_ms
        self.exhausted = exhausted


@dataclass(frozen=True, slots=True)
class LimitCheck:
    """One limit as a Redis script sees it, for one key."""

    algo: str  # c | b | f | s
    state_key: str
    index_key: str  # the limit's usage index (keys recently used)
    label: str  # the key as users see it
    limit: int
    period_ms: int
    burst: int
    space: str = ""  # the limit's keyspace (state key prefix)

    def argv(self) -> list[Any]:
        return [self.algo, self.state_key, self.index_key, self.label, self.limit,
                self.period_ms, self.burst]  # fmt: skip


@dataclass(frozen=True, slots=True)
class AcquireResult:
    status: int  # 1 granted, 0 not now, -1 no lease, -2 never, -3 rebuilding
    value: int  # retry ms (status 0; -1: when a holder releases) or units given back
    now_ms: int


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
        self.workers_key = f"{self.p}:workers"
        self.recovered_key = f"{self.p}:recovered"  # when Redis last lost its data (ms)
        self.watched_key = f"{self.p}:watched"  # set while some node streams events to a client
        self.hold_prefix = f"{self.p}:h:"  # + job id: concurrency units the job holds
        self.sender = uuid.uuid4().hex  # names the bus messages this index publishes itself
        self._push = self.redis.register_script(_script("push"))
        self._claim = self.redis.register_script(_script("claim"))
        self._claim_limited = self.redis.register_script(_script("claim_limited", limits=True))
        self._refill = self.redis.register_script(_script("refill"))
        self._expire = self.redis.register_script(_script("expire"))
        self._adopt = self.redis.register_script(_script("adopt"))
        self._release = self.redis.register_script(_script("release", limits=True))
        self._acquire = self.redis.register_script(_script("acquire", limits=True))
        self._usage = self.redis.register_script(_script("usage", limits=True))

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

        The wake-up message (`LanesReady`, on the bus's channel, in the same pipeline) names each
        lane's oldest new seq, so other nodes learn each lane's head."""
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
                heads = {lane: min(s for s, _ in items) for lane, items in by_lane.items()}
                pipe.publish(self.channel(LanesReady.topic),
                             encode(LanesReady(heads), self.sender))  # fmt: skip
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

    async def claim_limited(
        self, lane: str, n: int, deadline_ms: int, checks: Sequence[LimitCheck], now_ms: str = ""
    ) -> ClaimResult:
        """As `claim`, taking only as many ids as the job limits admit, and charging them."""
        argv: list[Any] = [n, deadline_ms, lane, now_ms, self.hold_prefix, len(checks)]
        for c in checks:
            argv += c.argv()
        keys = [self._window(lane), self.leases_key, self._meta(lane), self.ready_key,
                self.epoch_key, self.recovered_key]  # fmt: skip
        res = await self._call(self._claim_limited, keys, argv)
        ex = [int(x) for x in res[7]]
        return ClaimResult(list(res[0]), int(res[1]), res[2] == "1", int(res[3]), int(res[4]),
                           int(res[5]), int(res[6]),
                           [(ex[i] - 1, ex[i + 1]) for i in range(0, len(ex), 2)])  # fmt: skip

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
                pipe.publish(self.channel(LanesReady.topic),
                             encode(LanesReady(dict.fromkeys(lanes)), self.sender))  # fmt: skip
                await pipe.execute()
        except RedisError as exc:
            raise IndexUnavailable(str(exc)) from exc

    async def lane_reset(self, lane: str) -> None:
        """Forget a lane's window (its jobs moved to other lanes): a refill reads it afresh."""
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(self._window(lane))
                pipe.hset(self._meta(lane), "c", "0")
                pipe.hincrby(self._meta(lane), "v", 1)
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

    async def lease_release(self, ids: Sequence[str]) -> list[str]:
        """Drop leases and the concurrency units their jobs hold; return the limit state keys
        that got units back, one entry per unit (the caller announces them: `UnitsFreed`)."""
        if not ids:
            return []
        return list(await self._call(self._release, [self.leases_key], [self.hold_prefix, *ids]))

    async def lease_take_expired(self, now_ms: int, limit: int, grace_ms: int) -> list[str]:
        """Expired leases, each taken by one caller until now + grace: requeue the jobs, then
        `lease_release` them."""
        args = [now_ms, limit, now_ms + grace_ms]
        return list(await self._call(self._expire, [self.leases_key], args))

    async def lease_adopt(
        self,
        deadlines: dict[str, int],
        holds: dict[str, list[tuple[LimitCheck, int]]] | None = None,
        now_ms: int = 0,
    ) -> list[str]:
        """Create leases for running jobs that have none, and top up the concurrency units each
        leased job holds (`holds`: job id -> (limit, units)); return the ids leased here."""
        argv: list[Any] = [self.hold_prefix, now_ms]
        for jid, deadline in deadlines.items():
            mine = (holds or {}).get(jid, [])
            argv += [deadline, jid, len(mine)]
            for check, units in mine:
                argv += [check.state_key, units, check.index_key, check.label]
        if len(argv) == 2:
            return []
        return list(await self._call(self._adopt, [self.leases_key], argv))

    # -- limits ------------------------------------------------------------------------------------

    def limit_keys(self, limit_id: str, shape: str) -> tuple[str, str]:
        """(state key prefix, usage index key) of one limit's keyspace."""
        return f"{self.p}:L:{limit_id}:{shape}:", f"{self.p}:Li:{limit_id}:{shape}"

    async def acquire(
        self, job_id: str, check: LimitCheck, units: int, give: bool = False, now_ms: str = ""
    ) -> AcquireResult:
        """A running job takes units of a rate limit (or gives concurrency units back)."""
        argv: list[Any] = [now_ms, self.hold_prefix, job_id, "give" if give else "take",
                           check.algo, check.state_key, check.index_key, check.label,
                           check.limit, check.period_ms, check.burst, units]  # fmt: skip
        keys = [self.leases_key, self.epoch_key, self.recovered_key]
        res = await self._call(self._acquire, keys, argv)
        return AcquireResult(int(res[0]), int(res[1]), int(res[2]))

    async def limit_usage(
        self, checks: Sequence[LimitCheck], now_ms: str = ""
    ) -> tuple[list[tuple[int, int, int]], float]:
        """(used, available, retry ms) per key, and the Redis clock in ms."""
        argv: list[Any] = [now_ms]
        for c in checks:
            argv += [c.algo, c.state_key, c.limit, c.period_ms, c.burst]
        res = await self._call(self._usage, [self.recovered_key], argv)
        return [(int(a), int(b), int(c)) for a, b, c in res[0]], float(res[1])

    async def limit_index(
        self, index_key: str, count: int, oldest: bool = False
    ) -> list[tuple[str, float]]:
        """Keys of one limit with when they were last used (ms): the most recent first, or
        (oldest=True) the least recent first."""
        fetch = self.redis.zrange if oldest else self.redis.zrevrange
        rows = await self._redis_op(fetch(index_key, 0, count - 1, withscores=True))
        return [(str(k), float(t)) for k, t in rows]

    async def limit_index_prune(self, index_key: str, before_ms: float) -> None:
        await self._redis_op(self.redis.zremrangebyscore(index_key, "-inf", before_ms))

    async def limit_index_forget(self, index_key: str, keys: Sequence[str]) -> None:
        if keys:
            await self._redis_op(self.redis.zrem(index_key, *keys))

    async def limit_index_last_used(self, index_key: str, key: str) -> float | None:
        score = await self._redis_op(self.redis.zscore(index_key, key))
        return None if score is None else float(score)

    async def mark_recovered(self) -> None:
        """Redis lost its data: limits restart conservatively from now (see limits.lua)."""
        await self._redis_op(self.redis.eval(
            "local t = redis.call('TIME') "
            "redis.call('SET', KEYS[1], tonumber(t[1]) * 1000 + math.floor(t[2] / 1000)) "
            "return 1", 1, self.recovered_key))  # fmt: skip

    # -- epoch (data-loss detection) ---------------------------------------------------------------

    async def epoch(self) -> str | None:
        v = await self._redis_op(self.redis.get(self.epoch_key))
        return None if v is None else str(v)

    async def reset_connections(self) -> None:
        """Redis restarted: drop every pooled connection (each would fail once) now."""
        await self.redis.connection_pool.disconnect()

    async def epoch_init(self, value: str) -> str:
        """Set the epoch if absent; return the epoch in force."""
        await self._redis_op(self.redis.set(self.epoch_key, value, nx=True))
        current = await self.epoch()
        return current or value

    def channel(self, topic: str) -> str:
        """The pub/sub channel of a bus topic (worcr_node/messages.py). Named apart from the
        channels of nodes before the bus, so neither misreads the other's messages."""
        return f"{self.p}:bus:{topic}"

    async def listen_many(
        self,
        channels: list[str],
        handle: Callable[[str, str], None],
        stopping: Callable[[], bool],
    ) -> None:
        """Call `handle(channel, message)` with each message on `channels` (one connection)
        until `stopping()`; resubscribe after a Redis failure (restart, failover), so a listener
        never dies with the connection."""
        while not stopping():
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(*channels)
                async for msg in pubsub.listen():
                    if msg.get("type") == "message":
                        handle(str(msg["channel"]), str(msg["data"]))
            except Exception as exc:  # Redis down or restarted
                log.debug("listener on %s: %s", channels, exc)
                await asyncio.sleep(0.5)
            finally:
                try:
                    await pubsub.aclose()
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

    async def workers_all(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in
                (await self._redis_op(self.redis.hgetall(self.workers_key))).items()}  # fmt: skip

    async def worker_get(self, worker_id: str) -> str | None:
        v = await self._redis_op(self.redis.hget(self.workers_key, worker_id))
        return None if v is None else str(v)

    async def publish(self, channel: str, message: str) -> None:
        await self._redis_op(self.redis.publish(channel, message))

    async def watched_set(self, ttl_ms: int) -> None:
        await self._redis_op(self.redis.set(self.watched_key, "1", px=ttl_ms))

    async def watched(self) -> bool:
        return bool(await self._redis_op(self.redis.exists(self.watched_key)))

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
