"""The limit algorithms as Redis runs them (store/lua/limits.lua), against a real Redis.

Time is passed explicitly (the scripts take `now` from Redis TIME in production), so every
boundary is exact: a window edge, a token's emission time, the restart after a Redis loss.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worcr_node.embedded import RedisServer
from worcr_node.limits.compiled import CompiledLimits
from worcr_node.limits.model import parse_limit
from worcr_node.store.redis_index import LimitCheck, RedisIndex

T0 = 1_800_000_000_000.0  # ms


@pytest.fixture
async def index(redis_server: RedisServer) -> AsyncIterator[RedisIndex]:
    idx = RedisIndex(redis_server.url, f"ls{uuid.uuid4().hex[:8]}")
    await idx.epoch_init("e")
    yield idx
    await idx.close()


def check(index: RedisIndex, body: dict[str, object], key: str = "k") -> LimitCheck:
    lim = parse_limit({"name": "l", **body})
    return CompiledLimits([lim], index.limit_keys).check(lim, key)


async def fill(index: RedisIndex, lane: str, n: int) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(n)]
    await index.push_ready({lane: [(i, uuid.UUID(x)) for i, x in enumerate(ids)]}, fresh={lane})
    return ids


async def claim(index: RedisIndex, lane: str, n: int, c: LimitCheck, now: float) -> list[str]:
    res = await index.claim_limited(lane, n, int(now) + 30_000, [c], now_ms=repr(now))
    return res.ids


async def test_concurrency_admits_n_then_waits_for_a_release(index: RedisIndex) -> None:
    c = check(index, {"type": "concurrency", "limit": 3})
    await fill(index, "a", 10)
    res = await index.claim_limited("a", 10, int(T0) + 30_000, [c], now_ms=repr(T0))
    assert len(res.ids) == 3
    assert res.exhausted == [(0, -1)]  # used up: the dispatcher parks the key until a release
    blocked = await index.claim_limited("a", 10, int(T0) + 30_000, [c], now_ms=repr(T0))
    assert blocked.ids == []
    assert blocked.blocker == 0
    assert blocked.retry_ms == -1
    assert blocked.left == 7  # nothing was taken from the window
    freed = await index.lease_release(res.ids[:1])
    assert freed == [c.state_key]
    assert len(await claim(index, "a", 10, c, T0)) == 1


async def test_an_expired_lease_frees_its_units_once_requeued(index: RedisIndex) -> None:
    c = check(index, {"type": "concurrency", "limit": 2})
    await fill(index, "a", 5)
    res = await index.claim_limited("a", 5, int(T0) + 1000, [c], now_ms=repr(T0))
    assert len(res.ids) == 2
    assert await claim(index, "a", 5, c, T0) == []
    taken = await index.lease_take_expired(int(T0) + 1001, 100, 30_000)
    assert sorted(taken) == sorted(res.ids)
    assert await index.lease_take_expired(int(T0) + 1001, 100, 30_000) == []  # taken once
    assert await claim(index, "a", 5, c, T0) == []  # held until the taker has requeued them
    await index.lease_release(taken)
    assert len(await claim(index, "a", 5, c, T0)) == 2


async def test_token_bucket_bursts_then_paces(index: RedisIndex) -> None:
    c = check(index, {"type": "token_bucket", "limit": 10, "period": 1, "burst": 4})
    await fill(index, "a", 100)
    assert len(await claim(index, "a", 100, c, T0)) == 4  # the burst
    blocked = await index.claim_limited("a", 100, int(T0), [c], now_ms=repr(T0))
    assert blocked.blocker == 0
    assert blocked.retry_ms == 100
    assert await claim(index, "a", 100, c, T0 + 99) == []
    assert len(await claim(index, "a", 100, c, T0 + 100)) == 1
    assert len(await claim(index, "a", 100, c, T0 + 350)) == 2
    assert len(await claim(index, "a", 100, c, T0 + 10_000)) == 4  # never more than the burst


async def test_fixed_window_resets_on_the_boundary(index: RedisIndex) -> None:
    c = check(index, {"type": "fixed_window", "limit": 3, "period": 1})
    await fill(index, "a", 100)
    start = 1_800_000_000_000.0  # a window boundary (a multiple of 1000 ms)
    assert len(await claim(index, "a", 2, c, start + 10)) == 2
    assert len(await claim(index, "a", 5, c, start + 900)) == 1
    blocked = await index.claim_limited("a", 5, 0, [c], now_ms=repr(start + 950))
    assert blocked.blocker == 0
    assert blocked.retry_ms == 50
    assert len(await claim(index, "a", 5, c, start + 1000)) == 3


async def test_sliding_window_counts_the_last_period_exactly(index: RedisIndex) -> None:
    c = check(index, {"type": "sliding_window", "limit": 3, "period": 1})
    await fill(index, "a", 100)
    assert len(await claim(index, "a", 2, c, T0)) == 2
    assert len(await claim(index, "a", 5, c, T0 + 500)) == 1
    blocked = await index.claim_limited("a", 5, 0, [c], now_ms=repr(T0 + 999))
    assert blocked.blocker == 0
    assert blocked.retry_ms == 1
    assert len(await claim(index, "a", 5, c, T0 + 1000)) == 2  # the two at T0 left the window
    assert await claim(index, "a", 5, c, T0 + 1499) == []
    assert len(await claim(index, "a", 5, c, T0 + 1500)) == 1


async def test_two_limits_admit_the_smaller_allowance(index: RedisIndex) -> None:
    conc = check(index, {"type": "concurrency", "limit": 5}, "c")
    rate = check(index, {"type": "fixed_window", "limit": 2, "period": 60})
    await fill(index, "a", 10)
    res = await index.claim_limited("a", 10, int(T0) + 30_000, [conc, rate], now_ms=repr(T0))
    assert len(res.ids) == 2
    assert (1, res.exhausted[0][1]) in res.exhausted  # the window is used up, not concurrency
    blocked = await index.claim_limited("a", 10, 0, [conc, rate], now_ms=repr(T0))
    assert blocked.blocker == 1


async def test_limits_wait_while_redis_has_not_been_rebuilt(index: RedisIndex) -> None:
    c = check(index, {"type": "concurrency", "limit": 5})
    await fill(index, "a", 3)
    await index.redis.delete(index.epoch_key)  # what a Redis restart without data looks like
    res = await index.claim_limited("a", 3, 0, [c], now_ms=repr(T0))
    assert res.ids == []
    assert res.blocker == -1
    assert (await index.acquire(str(uuid.uuid4()), c, 1, now_ms=repr(T0))).status == -3


@pytest.mark.parametrize(
    ("body", "blocked_until"),
    [
        ({"type": "token_bucket", "limit": 10, "period": 1, "burst": 10}, 100),  # refills from 0
        ({"type": "fixed_window", "limit": 10, "period": 1}, 1000),  # rest of the window
        ({"type": "sliding_window", "limit": 10, "period": 1}, 1000),  # one full period
    ],
)
async def test_after_a_redis_loss_rate_limits_restart_full(
    index: RedisIndex, body: dict[str, object], blocked_until: int
) -> None:
    """State lost within a period of the recovery counts as a full allowance already used, so
    a window can never admit twice its limit across the loss."""
    c = check(index, body)
    await fill(index, "a", 100)
    start = 1_800_000_000_000.0
    await index.redis.set(index.recovered_key, repr(start))
    assert await claim(index, "a", 100, c, start) == []
    assert await claim(index, "a", 100, c, start + blocked_until - 1) == []
    first = len(await claim(index, "a", 100, c, start + blocked_until))
    assert first >= 1
    if body["type"] == "token_bucket":  # refills from empty: one token per 100 ms, no burst
        assert first == 1
        assert await claim(index, "a", 100, c, start + blocked_until + 1) == []
        assert len(await claim(index, "a", 100, c, start + 500)) == 4


async def test_acquire_holds_concurrency_units_until_the_lease_ends(index: RedisIndex) -> None:
    c = check(index, {"type": "concurrency", "limit": 3})
    job, other = str(uuid.uuid4()), str(uuid.uuid4())
    assert (await index.acquire(job, c, 1)).status == -1  # no lease: not a running job
    await index.redis.zadd(index.leases_key, {job: T0, other: T0})
    assert (await index.acquire(job, c, 2)).status == 1
    assert (await index.acquire(other, c, 2)).status == 0
    assert (await index.acquire(other, c, 4)).status == -2  # can never be granted
    given_back = await index.acquire(job, c, 1, give=True)
    assert given_back.status == 1
    assert given_back.value == 1
    assert (await index.acquire(other, c, 2)).status == 1
    assert await index.lease_release([job, other]) == [c.state_key, c.state_key]
    assert (await index.limit_usage([c]))[0][0] == (0, 3, 0)


async def test_adopt_tops_holds_up_and_never_doubles_them(index: RedisIndex) -> None:
    c = check(index, {"type": "concurrency", "limit": 10})
    job = str(uuid.uuid4())
    made = await index.lease_adopt({job: int(T0)}, {job: [(c, 2)]}, int(T0))
    assert made == [job]
    assert await index.lease_adopt({job: int(T0)}, {job: [(c, 2)]}, int(T0)) == []
    assert (await index.limit_usage([c]))[0][0][0] == 2
    await index.lease_release([job])
    assert (await index.limit_usage([c]))[0][0][0] == 0


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    limit=st.integers(1, 6),
    period=st.integers(5, 400),
    steps=st.lists(st.tuples(st.integers(0, 120), st.integers(1, 3)), min_size=1, max_size=60),
)
async def test_sliding_window_is_exact(
    index: RedisIndex, limit: int, period: int, steps: list[tuple[int, int]]
) -> None:
    """Against a model: a request is granted iff the units granted in (now - period, now] plus
    its own fit the limit. So no interval of one period ever holds more than the limit, and no
    request is refused that would have fit."""
    body = {"type": "sliding_window", "limit": limit, "period": period / 1000}
    lim = parse_limit({"name": f"s{uuid.uuid4().hex[:6]}", "scope": "rate", **body})
    c = CompiledLimits([lim], index.limit_keys).check(lim, "k")
    job = str(uuid.uuid4())
    await index.redis.zadd(index.leases_key, {job: 1e15})
    granted: list[tuple[float, int]] = []
    now = T0
    for gap, units in steps:
        now += gap
        recent = sum(u for t, u in granted if t > now - period)
        res = await index.acquire(job, c, units, now_ms=repr(now))
        if units > limit:
            assert res.status == -2
            continue
        fits = recent + units <= limit
        assert (res.status == 1) == fits, (now, recent, units)
        if fits:
            granted.append((now, units))
        else:
            assert res.value >= 1
