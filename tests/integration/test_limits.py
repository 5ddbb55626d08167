"""Limits against real nodes, PostgreSQL and Redis: tests that try to break them.

What is asserted is reconstructed from PostgreSQL (attempt start and finish times, the Redis time
each attempt was admitted at), not taken from what the node believes: observed concurrency never
exceeds the limit, no window admits more than its limit, a tenant at its limit does not hold up
another tenant, a killed worker's units come back when its lease expires, and a Redis loss does
not hand out a second allowance.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import worcr
from tests.conftest import NodeFactory
from tests.rawclient import RawClient
from tests.waiting import wait_until
from tests.workers import SpawnWorker
from worcr_node.embedded import RedisServer
from worcr_node.limits.model import Limit, parse_limit
from worcr_node.limits.store import LimitStore
from worcr_node.node import Node
from worcr_node.store.redis_index import IndexUnavailable

# -- helpers -----------------------------------------------------------------------------------


async def add_limit(nodes: Sequence[Node], body: dict[str, Any]) -> Limit:
    """Create a limit and wait until every node dispatches under it."""
    lim = await LimitStore(nodes[0].policy_store).create(parse_limit(body))

    async def everywhere() -> bool:
        return all(lim.name in n.dispatcher.limits.by_name for n in nodes)

    await wait_until(everywhere, timeout=10)
    return lim


async def enqueue(node: Node, specs: list[dict[str, Any]]) -> list[str]:
    ids: list[str] = []
    for i in range(0, len(specs), 1000):
        ids += [str(r.id) for r in await node.manager.enqueue(specs[i : i + 1000])]
    return ids


@dataclass
class Worker:
    """A raw wire worker: acks each job after `delay()` seconds, or holds it while `hold(job)`."""

    client: RawClient
    delay: Any = lambda: 0.0
    hold: Any = lambda job: False
    got: list[dict[str, Any]] = field(default_factory=list)
    done: set[str] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def serve(self) -> None:
        while True:
            batch = await self.client.next_notification("jobs", timeout=3600)
            for job in batch["jobs"]:
                self.got.append(job)
                if not self.hold(job):
                    t = asyncio.get_running_loop().create_task(self._ack(job))
                    self.tasks.add(t)
                    t.add_done_callback(self.tasks.discard)

    async def _ack(self, job: dict[str, Any]) -> None:
        await asyncio.sleep(self.delay())
        res = await self.client.call("ack", {"jobs": [{"id": job["id"], "token": job["token"]}]})
        if res["results"][0] is None:
            self.done.add(job["id"])


@contextlib.asynccontextmanager
async def workers(
    nodes: Sequence[Node], per_node: int, capacity: int, **behaviour: Any
) -> AsyncIterator[list[Worker]]:
    out: list[Worker] = []
    for node in nodes:
        for _ in range(per_node):
            c = await RawClient.connect(node.worker_address)
            await c.hello(capacity=capacity)
            out.append(Worker(c, **behaviour))
    tasks = [asyncio.create_task(w.serve()) for w in out]
    try:
        yield out
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.wait(tasks, timeout=5)
        for w in out:
            for t in list(w.tasks):
                t.cancel()
            await w.client.close()


async def attempts(node: Node, kind: str) -> list[asyncpg.Record]:
    sql = """SELECT j.tenant, j.args, a.started_at, a.finished_at, a.admitted_at, a.outcome
             FROM worcr_attempts a JOIN worcr_jobs j ON j.id = a.job_id WHERE j.kind = $1"""
    return await node.store.run(lambda c: c.fetch(sql, kind))


def max_overlap(intervals: list[tuple[Any, Any]]) -> int:
    """The most intervals open at once (an end at the same instant as a start closes first)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    peak = now = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


def all_done(ws: list[Worker], n: int) -> Any:
    async def check() -> bool:
        return sum(len(w.done) for w in ws) >= n

    return check


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A Redis of this test's own, to kill and restart."""
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    yield redis
    await asyncio.to_thread(redis.stop)


async def lose_redis_data(node: Node, redis: RedisServer) -> None:
    """Kill Redis (it comes back empty) and wait until the node has rebuilt it."""
    await asyncio.to_thread(redis.kill)
    await asyncio.to_thread(redis.start)

    async def rebuilt() -> bool:
        try:  # a pooled connection from before the restart fails once
            return node.rebuild.rebuilds >= 1 and await node.index.epoch() is not None
        except IndexUnavailable:
            return False

    await wait_until(rebuilt, timeout=20)


# -- concurrency -------------------------------------------------------------------------------


async def test_concurrency_holds_across_three_nodes_and_many_workers(
    node_factory: NodeFactory,
) -> None:
    nodes = [await node_factory(), await node_factory(), await node_factory()]
    await add_limit(nodes, {"name": "imports", "type": "concurrency", "limit": 3,
                            "key": "{tenant}", "match": {"kinds": ["import"]}})  # fmt: skip
    specs = [{"kind": "import", "tenant": t} for t in ("a", "b", "c") for _ in range(60)]
    rnd = random.Random(4)
    for i, node in enumerate(nodes):
        await enqueue(node, specs[i :: len(nodes)])
    async with workers(nodes, 2, 5, delay=lambda: rnd.uniform(0, 0.02)) as ws:
        await wait_until(all_done(ws, len(specs)), timeout=60)
    rows = await attempts(nodes[0], "import")
    assert len(rows) == len(specs)
    peaks = {}
    for tenant in ("a", "b", "c"):
        peaks[tenant] = max_overlap(
            [(r["started_at"], r["finished_at"]) for r in rows if r["tenant"] == tenant]
        )
    assert max(peaks.values()) == 3, peaks  # the limit was reached ...
    assert all(p <= 3 for p in peaks.values()), peaks  # ... and never exceeded
    assert all(r["admitted_at"] is not None for r in rows)


async def test_a_tenant_at_its_limit_does_not_hold_up_another(node: Node) -> None:
    await add_limit([node], {"name": "one", "type": "concurrency", "limit": 1, "key": "{tenant}"})
    await enqueue(node, [{"kind": "k", "tenant": "busy"} for _ in range(300)])
    others = await enqueue(node, [{"kind": "k", "tenant": f"t{i % 5}"} for i in range(200)])
    async with workers([node], 1, 20, hold=lambda job: job["tenant"] == "busy") as ws:

        async def others_done() -> bool:
            return set(others) <= ws[0].done

        await wait_until(others_done, timeout=30)
        busy = [j for j in ws[0].got if j["tenant"] == "busy"]
    assert len(busy) == 1  # busy got its one slot, and its 299 other jobs wait, ready
    rows = await node.store.run(
        lambda c: c.fetch("SELECT state, count(*) FROM worcr_jobs WHERE tenant = 'busy' GROUP BY 1")
    )
    assert {r[0]: r[1] for r in rows} == {"running": 1, "queued": 299}


async def test_args_keys_split_lanes_so_one_customer_does_not_block_another(node: Node) -> None:
    await add_limit([node], {"name": "per-customer", "type": "concurrency", "limit": 1,
                             "key": "{args.customer}", "match": {"kinds": ["sync"]}})  # fmt: skip
    await enqueue(node, [{"kind": "sync", "args": {"customer": "big"}} for _ in range(50)])
    await enqueue(node, [{"kind": "sync", "args": {"customer": "small"}} for _ in range(3)])
    async with workers([node], 1, 10, hold=lambda job: True) as ws:

        async def both() -> bool:
            return len(ws[0].got) >= 2

        await wait_until(both, timeout=10)
        customers = Counter(j["args"]["customer"] for j in ws[0].got)
        # prove dispatch went on after that: an unlimited job still gets through
        await enqueue(node, [{"kind": "free"}])

        async def free() -> bool:
            return any(j["kind"] == "free" for j in ws[0].got)

        await wait_until(free, timeout=10)
        customers = Counter(j["args"]["customer"] for j in ws[0].got if j["kind"] == "sync")
    assert customers == {"big": 1, "small": 1}


async def test_jobs_enqueued_before_an_args_keyed_limit_are_split_then_limited(
    node: Node,
) -> None:
    big = await enqueue(node, [{"kind": "sync", "args": {"customer": "big"}} for _ in range(50)])
    small = await enqueue(node, [{"kind": "sync", "args": {"customer": "small"}} for _ in range(3)])
    later = await enqueue(node, [{"kind": "sync", "args": {"customer": "later"}, "run_in": 0.5}])
    await add_limit([node], {"name": "per-customer", "type": "concurrency", "limit": 1,
                             "key": "{args.customer}", "match": {"kinds": ["sync"]}})  # fmt: skip
    async with workers([node], 1, 10, hold=lambda job: True) as ws:

        async def three() -> bool:
            return len(ws[0].got) >= 3

        await wait_until(three, timeout=20)
        await enqueue(node, [{"kind": "free"}])

        async def free() -> bool:
            return any(j["kind"] == "free" for j in ws[0].got)

        await wait_until(free, timeout=10)
        customers = Counter(j["args"]["customer"] for j in ws[0].got if j["kind"] == "sync")
    assert customers == {"big": 1, "small": 1, "later": 1}
    rows = await node.store.run(lambda c: c.fetch(
        "SELECT j.id, l.partition FROM worcr_jobs j JOIN worcr_lanes l ON l.lane = j.lane"
        " WHERE j.kind = 'sync'"))  # fmt: skip
    parts = {str(r["id"]): r["partition"] for r in rows}
    assert all('"big"' in parts[i] for i in big)
    assert all('"small"' in parts[i] for i in small)
    assert '"later"' in parts[later[0]]


async def test_a_killed_worker_frees_its_units_when_its_lease_expires(
    node: Node, spawn_worker: SpawnWorker
) -> None:
    await add_limit([node], {"name": "blocks", "type": "concurrency", "limit": 2,
                             "match": {"kinds": ["sample.block"]}})  # fmt: skip
    await enqueue(node, [{"kind": "sample.block", "reserve_for": 1.0} for _ in range(4)])
    first = await spawn_worker(node, "--concurrency", "4")
    lost = {(await first.started())[0], (await first.started())[0]}
    first.proc.kill()  # SIGKILL: no yield, no goodbye; its two units are held until the lease ends
    await first.proc.wait()
    second = await spawn_worker(node, "--concurrency", "4")
    again = {(await second.started(timeout=30))[0], (await second.started(timeout=30))[0]}
    rows = await node.store.run(lambda c: c.fetch(
        "SELECT job_id, started_at, finished_at, outcome FROM worcr_attempts"))  # fmt: skip
    expired = [r for r in rows if r["outcome"] == "lease_expired"]
    assert {str(r["job_id"]) for r in expired} == lost
    running = await node.store.run(lambda c: c.fetch(
        "SELECT id, started_at FROM worcr_jobs WHERE state = 'running'"))  # fmt: skip
    assert {str(r["id"]) for r in running} == again  # two, not four: the limit held
    spans = [(r["started_at"], r["finished_at"]) for r in expired]
    spans += [(r["started_at"], datetime.max.replace(tzinfo=UTC)) for r in running]
    assert max_overlap(spans) == 2  # as PostgreSQL saw it, too


async def test_a_concurrency_limit_created_while_jobs_run_counts_them(node: Node) -> None:
    await enqueue(node, [{"kind": "long", "tenant": "a"} for _ in range(5)])
    async with workers([node], 1, 20, hold=lambda job: job["kind"] == "long") as ws:

        async def five() -> bool:
            return len(ws[0].got) == 5

        await wait_until(five, timeout=10)
        body = {"name": "long", "type": "concurrency", "limit": 2, "key": "{tenant}",
                "match": {"kinds": ["long"]}}  # fmt: skip
        lim = await add_limit([node], body)
        check = node.dispatcher.limits.check(lim, "a")

        async def counted() -> bool:
            return (await node.index.limit_usage([check]))[0][0][0] == 5

        await wait_until(counted, timeout=10)
        await enqueue(node, [{"kind": "long", "tenant": "a"} for _ in range(3)])
        await enqueue(node, [{"kind": "free"}])

        async def free() -> bool:
            return any(j["kind"] == "free" for j in ws[0].got)

        await wait_until(free, timeout=10)
        assert sum(1 for j in ws[0].got if j["kind"] == "long") == 5


async def test_a_new_concurrency_limit_admits_nothing_until_running_jobs_are_counted(
    node: Node,
) -> None:
    await enqueue(node, [{"kind": "long"} for _ in range(8)])
    c = await RawClient.connect(node.worker_address)
    await c.hello(capacity=5)
    got = (await c.next_notification("jobs"))["jobs"]
    while len(got) < 5:
        got += (await c.next_notification("jobs"))["jobs"]
    recounts: list[None] = []
    node.rebuild.policy_changed = lambda: recounts.append(None)  # the recount is slow today
    await add_limit([node], {"name": "two", "type": "concurrency", "limit": 2,
                             "match": {"kinds": ["long"]}})  # fmt: skip
    assert recounts  # it was asked for
    await c.call("capacity", {"capacity": 20})
    await enqueue(node, [{"kind": "free"}])
    while not any(j["kind"] == "free" for j in got):  # dispatch went on for other lanes...
        got += (await c.next_notification("jobs"))["jobs"]
    assert sum(1 for j in got if j["kind"] == "long") == 5  # ... but not past an uncounted limit
    await node.rebuild.reconcile(full=True)  # the recount: 5 running, over the limit of 2
    await c.call("ack", {"jobs": [{"id": j["id"], "token": j["token"]} for j in got[:4]]})
    while sum(1 for j in got if j["kind"] == "long") < 6:  # 1 left running: one more may go
        got += (await c.next_notification("jobs"))["jobs"]
    await c.close()


async def test_redis_loss_recounts_running_jobs_from_postgresql(
    node_factory: NodeFactory, own_redis: RedisServer
) -> None:
    node = await node_factory(redis_url=own_redis.url, duty_periods={"epoch": 0.1})
    lim = await add_limit([node], {"name": "two", "type": "concurrency", "limit": 2,
                                   "match": {"kinds": ["held"]}})  # fmt: skip
    await enqueue(node, [{"kind": "held"} for _ in range(6)])
    async with workers([node], 1, 10, hold=lambda job: job["kind"] == "held") as ws:

        async def two() -> bool:
            return len(ws[0].got) == 2

        await wait_until(two, timeout=10)
        await lose_redis_data(node, own_redis)
        check = node.dispatcher.limits.check(lim, "")
        assert (await node.index.limit_usage([check]))[0][0][0] == 2
        await enqueue(node, [{"kind": "free"}])

        async def free() -> bool:
            return any(j["kind"] == "free" for j in ws[0].got)

        await wait_until(free, timeout=20)
        assert sum(1 for j in ws[0].got if j["kind"] == "held") == 2


# -- windows and buckets -----------------------------------------------------------------------


async def test_no_window_ever_admits_more_than_its_limit(node_factory: NodeFactory) -> None:
    nodes = [await node_factory(), await node_factory()]
    await add_limit(nodes, {"name": "fw", "type": "fixed_window", "limit": 10, "period": 0.5,
                            "match": {"kinds": ["fw"]}})  # fmt: skip
    await add_limit(nodes, {"name": "sw", "type": "sliding_window", "limit": 10, "period": 0.5,
                            "match": {"kinds": ["sw"]}})  # fmt: skip
    await add_limit(nodes, {"name": "tb", "type": "token_bucket", "limit": 20, "period": 1,
                            "burst": 5, "match": {"kinds": ["tb"]}})  # fmt: skip
    for kind in ("fw", "sw", "tb"):
        await enqueue(nodes[0], [{"kind": kind} for _ in range(25)])
        await enqueue(nodes[1], [{"kind": kind} for _ in range(25)])
    async with workers(nodes, 2, 8) as ws:
        await wait_until(all_done(ws, 150), timeout=60)
    times = {}
    for kind in ("fw", "sw", "tb"):
        rows = await attempts(nodes[0], kind)
        assert len(rows) == 50
        times[kind] = sorted(r["admitted_at"].timestamp() * 1000 for r in rows)
    windows = Counter(int(t // 500) for t in times["fw"])
    assert max(windows.values()) == 10, windows  # reached, never exceeded
    sw = times["sw"]
    assert max(sum(1 for u in sw if t <= u < t + 500) for t in sw) == 10
    tb = times["tb"]
    for i, j in itertools.combinations(range(len(tb)), 2):
        assert j - i + 1 <= 5 + 20 * (tb[j] - tb[i]) / 1000 + 1e-6, (i, j)


# -- rate limits acquired by running jobs ------------------------------------------------------


async def test_jobs_acquire_rate_limits_through_the_sdk(node: Node) -> None:
    await add_limit([node], {"name": "partner", "scope": "rate", "type": "fixed_window",
                             "limit": 4, "period": 0.5, "key": "{tenant}"})  # fmt: skip
    await add_limit([node], {"name": "slots", "scope": "rate", "type": "concurrency",
                             "limit": 2})  # fmt: skip
    grants: list[worcr.Grant] = []
    active = peak = 0
    worker = worcr.Worker(nodes=[node.worker_address], concurrency=8, shutdown_timeout=2.0)

    @worker.job("call")
    async def call(ctx: worcr.JobContext) -> None:
        grants.append(await ctx.acquire("partner"))

    @worker.job("exclusive")
    async def exclusive(ctx: worcr.JobContext) -> None:
        nonlocal active, peak
        await ctx.acquire("slots")
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.05)
        active -= 1  # the units go back with the lease, after the ack: never before this

    ids = await enqueue(node, [{"kind": "call", "tenant": "acme"} for _ in range(14)])
    ids += await enqueue(node, [{"kind": "exclusive"} for _ in range(8)])
    task = asyncio.create_task(worker.run(install_signal_handlers=False))
    try:

        async def done() -> bool:
            rows = await node.store.run(lambda c: c.fetch(
                "SELECT count(*) FROM worcr_jobs WHERE state = 'completed'"))  # fmt: skip
            return int(rows[0][0]) == len(ids)

        await wait_until(done, timeout=60)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 15)
    assert {g.key for g in grants} == {"acme"}
    windows = Counter(int(g.at * 1000 // 500) for g in grants)
    assert max(windows.values()) == 4, windows
    assert len(windows) >= 4  # 14 grants at 4 a window: the jobs waited for the next ones
    assert peak == 2


async def test_acquire_refuses_what_it_cannot_grant(node: Node) -> None:
    await add_limit([node], {"name": "job-only", "type": "concurrency", "limit": 5,
                             "match": {"kinds": ["x"]}})  # fmt: skip
    await add_limit([node], {"name": "api", "scope": "rate", "type": "token_bucket",
                             "limit": 1, "period": 60, "burst": 1})  # fmt: skip
    await enqueue(node, [{"kind": "x"}])
    c = await RawClient.connect(node.worker_address)
    await c.hello(capacity=1)
    job = (await c.next_notification("jobs"))["jobs"][0]
    ref = {"id": job["id"], "token": job["token"]}

    async def error(params: dict[str, Any]) -> str:
        msg = await c.call_raw("acquire", {**ref, **params})
        return str(msg[2]["code"]) if msg[2] else "ok"

    assert await error({"limit": "nope"}) == "NOT_FOUND"
    assert await error({"limit": "job-only"}) == "BAD_REQUEST"
    assert await error({"limit": "api", "units": 2}) == "BAD_REQUEST"  # over the burst
    assert await error({"limit": "api", "units": 0}) == "BAD_REQUEST"
    assert await error({"limit": "api", "wait": 61}) == "BAD_REQUEST"
    assert await error({"limit": "api", "token": job["token"] + 1}) == "STALE_TOKEN"
    first = await c.call("acquire", {**ref, "limit": "api"})
    assert first["granted"] is True
    second = await c.call("acquire", {**ref, "limit": "api"})
    assert second["granted"] is False
    assert 59 < second["retry_after"] <= 60
    await c.call("ack", {"jobs": [ref]})
    assert await error({"limit": "api"}) == "STALE_TOKEN"  # the attempt is over
    await c.close()


async def test_after_a_redis_loss_rate_limits_grant_no_second_allowance(
    node_factory: NodeFactory, own_redis: RedisServer
) -> None:
    node = await node_factory(redis_url=own_redis.url, duty_periods={"epoch": 0.1})
    await add_limit([node], {"name": "partner", "scope": "rate", "type": "sliding_window",
                             "limit": 3, "period": 30})  # fmt: skip
    await add_limit([node], {"name": "seat", "scope": "rate", "type": "concurrency",
                             "limit": 1})  # fmt: skip
    await enqueue(node, [{"kind": "call"}, {"kind": "call"}])
    c = await RawClient.connect(node.worker_address)
    await c.hello(capacity=2)
    jobs = (await c.next_notification("jobs"))["jobs"]
    while len(jobs) < 2:
        jobs += (await c.next_notification("jobs"))["jobs"]
    a, b = ({"id": j["id"], "token": j["token"]} for j in jobs)
    for _ in range(3):
        assert (await c.call("acquire", {**a, "limit": "partner"}))["granted"] is True
    assert (await c.call("acquire", {**a, "limit": "partner"}))["granted"] is False
    assert (await c.call("acquire", {**a, "limit": "seat"}))["granted"] is True
    await lose_redis_data(node, own_redis)  # no counter, no holder left in Redis
    again = await c.call("acquire", {**b, "limit": "partner"})
    assert again["granted"] is False  # the window restarts full, not empty
    assert 25 < again["retry_after"] <= 30
    seat = await c.call("acquire", {**b, "limit": "seat"})
    assert seat["granted"] is False  # a's seat was counted again from PostgreSQL
    await c.call("ack", {"jobs": [a]})
    seat = await c.call("acquire", {**b, "limit": "seat", "wait": 5})
    assert seat["granted"] is True  # ... and released with a's attempt
    await c.close()


async def test_the_usage_index_is_pruned_without_anyone_reading_it(node: Node) -> None:
    """A key per customer must not pile up in Redis forever: a duty forgets idle keys."""
    window = await add_limit([node], {"name": "w", "scope": "rate", "type": "fixed_window",
                                      "limit": 5, "period": 1})  # fmt: skip
    conc = await add_limit([node], {"name": "c", "scope": "rate", "type": "concurrency",
                                    "limit": 5})  # fmt: skip
    now_ms = (await node.index.limit_usage([]))[1]
    indexes = {}
    for lim in (window, conc):
        _, index_key = node.index.limit_keys(lim.id, lim.shape)
        indexes[lim.name] = index_key
        await node.index.redis.zadd(index_key, {"old": now_ms - 7_200_000, "new": now_ms})
    await node.prune_usage.run()
    for index_key in indexes.values():
        assert [k for k, _ in await node.index.limit_index(index_key, 10)] == ["new"]
