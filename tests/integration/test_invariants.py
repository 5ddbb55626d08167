"""Tests that try to break the invariants: leases, fencing tokens, Redis loss, PostgreSQL loss,
bad frames. Workers here are raw wire clients so each step is explicit."""

from __future__ import annotations

import asyncio
import struct
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis.asyncio as aioredis

from tests.conftest import NodeFactory, create_database
from tests.rawclient import RawClient
from tests.waiting import wait_until
from worcr import wire
from worcr_node.embedded import PostgresServer, RedisServer
from worcr_node.node import Node


class RawWorker:
    """Acks every job it gets; records overlaps (a job delivered while it is still running)."""

    def __init__(self, client: RawClient, hold: float = 0.0) -> None:
        self.client = client
        self.hold = hold
        self.running: set[str] = set()
        self.done: Counter[str] = Counter()
        self.overlaps: list[str] = []
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            batch = await self.client.next_notification("jobs", timeout=3600)
            for job in batch["jobs"]:
                asyncio.get_running_loop().create_task(self._one(job))

    async def _one(self, job: dict[str, Any]) -> None:
        if job["id"] in self.running:
            self.overlaps.append(job["id"])
        self.running.add(job["id"])
        await asyncio.sleep(self.hold)
        while True:
            try:
                res = await self.client.call(
                    "ack", {"jobs": [{"id": job["id"], "token": job["token"]}]}
                )
                break
            except wire.RemoteError as exc:
                if not exc.retryable:
                    raise
                await asyncio.sleep(0.2)  # storage down: retry like a real worker
        self.running.discard(job["id"])
        if res["results"][0] is None:
            self.done[job["id"]] += 1

    async def stop(self) -> None:
        self.task.cancel()
        await self.client.close()


async def enqueue(client: RawClient, n: int, **spec: Any) -> list[str]:
    ids: list[str] = []
    for start in range(0, n, 500):
        jobs = [{"kind": "k", "args": [i], **spec} for i in range(start, min(n, start + 500))]
        res = await client.call("enqueue", {"jobs": jobs})
        ids.extend(j["id"] for j in res["jobs"])
    return ids


async def states(node: Node, ids: list[str]) -> Counter[str]:
    out: Counter[str] = Counter()
    for i in ids:
        row = await node.store.job_get(uuid.UUID(i))
        assert row is not None
        out[row["state"]] += 1
    return out


async def completed_attempts(node: Node, job_id: str) -> int:
    rows = await node.store.attempts_of_job(uuid.UUID(job_id))
    return sum(1 for r in rows if r["outcome"] == "completed")


async def test_lost_worker_job_runs_again_after_lease_and_late_ack_is_stale(node: Node) -> None:
    producer = await RawClient.connect(node.worker_address)
    await producer.hello()
    [job_id] = await enqueue(producer, 1, reserve_for=1.0)

    first = await RawClient.connect(node.worker_address)
    await first.hello(worker_id="first", capacity=1)
    [job] = await first.jobs(1)
    # The first worker goes silent (no heartbeats). A second worker gets the job after the lease.
    second = await RawClient.connect(node.worker_address)
    await second.hello(worker_id="second", capacity=1)
    [again] = await second.jobs(1, timeout=10)
    assert again["id"] == job_id
    assert again["token"] > job["token"]
    assert again["attempt"] == 2

    late = await first.call("ack", {"jobs": [{"id": job_id, "token": job["token"]}]})
    assert late["results"][0]["code"] == "STALE_TOKEN"
    ok = await second.call("ack", {"jobs": [{"id": job_id, "token": again["token"]}]})
    assert ok["results"] == [None]
    assert await completed_attempts(node, job_id) == 1
    outcomes = [a["outcome"] for a in await node.store.attempts_of_job(uuid.UUID(job_id))]
    assert outcomes == ["lease_expired", "completed"]
    for c in (producer, first, second):
        await c.close()


async def test_heartbeats_keep_a_long_job_leased(node: Node) -> None:
    producer = await RawClient.connect(node.worker_address)
    await producer.hello()
    [job_id] = await enqueue(producer, 1, reserve_for=0.6)
    w = await RawClient.connect(node.worker_address)
    await w.hello(capacity=1)
    [job] = await w.jobs(1)
    other = await RawClient.connect(node.worker_address)
    await other.hello(capacity=1)
    for _ in range(12):  # 2.4 s, four times the lease
        w.notify("heartbeat", {})
        await asyncio.sleep(0.2)
    assert other.notifications.empty()
    ok = await w.call("ack", {"jobs": [{"id": job_id, "token": job["token"]}]})
    assert ok["results"] == [None]
    for c in (producer, w, other):
        await c.close()


async def test_reconnecting_worker_keeps_its_lease(node_factory: NodeFactory) -> None:
    a = await node_factory()
    b = await node_factory()
    producer = await RawClient.connect(a.worker_address)
    await producer.hello()
    [job_id] = await enqueue(producer, 1, reserve_for=0.6)
    w = await RawClient.connect(a.worker_address)
    await w.hello(worker_id="w", capacity=1)
    [job] = await w.jobs(1)
    await w.close()
    # Same worker, other node: it says what it still runs, and keeps heartbeating.
    w2 = await RawClient.connect(b.worker_address)
    ref = {"id": job_id, "token": job["token"], "reserve_for": 0.6}
    await w2.hello(worker_id="w", capacity=1, running=[ref])
    for _ in range(10):
        w2.notify("heartbeat", {})
        await asyncio.sleep(0.2)
    ok = await w2.call("ack", {"jobs": [{"id": job_id, "token": job["token"]}]})
    assert ok["results"] == [None]
    attempts = await a.store.attempts_of_job(uuid.UUID(job_id))
    assert [r["outcome"] for r in attempts] == ["completed"]
    await w2.close()
    await producer.close()


async def test_flushall_mid_run_loses_nothing_and_runs_nothing_twice_at_once(
    node_factory: NodeFactory, redis_server: RedisServer
) -> None:
    node = await node_factory(duty_periods={"epoch": 0.1, "reconcile": 0.5})
    producer = await RawClient.connect(node.worker_address)
    await producer.hello()
    ids = await enqueue(producer, 3000, reserve_for=5.0)
    workers = []
    for i in range(2):
        c = await RawClient.connect(node.worker_address)
        await c.hello(worker_id=f"w{i}", capacity=20)
        workers.append(RawWorker(c, hold=0.002))

    async def some_done() -> bool:
        return sum(sum(w.done.values()) for w in workers) >= 500

    await wait_until(some_done, timeout=30)
    r = aioredis.Redis.from_url(redis_server.url)
    await r.flushall()
    await r.aclose()
    more = await enqueue(producer, 500, reserve_for=5.0)  # enqueues keep working

    async def all_done() -> bool:
        return sum(sum(w.done.values()) for w in workers) >= len(ids) + len(more)

    await wait_until(all_done, timeout=60)
    assert node.rebuild.rebuilds >= 1
    done: Counter[str] = Counter()
    for w in workers:
        done.update(w.done)
        assert w.overlaps == []
    assert set(done) == set(ids + more)
    assert max(done.values()) == 1
    assert await states(node, ids[:200] + more[:200]) == Counter({"completed": 400})
    for w in workers:
        await w.stop()
    await producer.close()


async def test_postgres_down_gives_retryable_error_then_everything_completes(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    pg = PostgresServer(tmp_path / "pg", fsync=False)
    pg.start()
    try:
        from tests.conftest import _make_template

        await _make_template(pg.dsn)
        url = await create_database(pg.dsn)
        node = await node_factory(database_url=url)
        producer = await RawClient.connect(node.worker_address)
        await producer.hello()
        ids = await enqueue(producer, 300)
        c = await RawClient.connect(node.worker_address)
        await c.hello(capacity=10)
        worker = RawWorker(c, hold=0.001)

        await asyncio.to_thread(pg.stop)
        msg = await producer.call_raw("enqueue", {"jobs": [{"kind": "k"}]})
        assert msg[2]["code"] == "UNAVAILABLE"
        assert msg[2]["retryable"] is True
        await asyncio.to_thread(pg.start)
        more = await enqueue(producer, 100)

        async def all_done() -> bool:
            return sum(worker.done.values()) >= len(ids) + len(more)

        await wait_until(all_done, timeout=60)
        assert worker.overlaps == []
        assert max(worker.done.values()) == 1
        assert set(worker.done) == set(ids + more)
        await worker.stop()
        await producer.close()
    finally:
        await asyncio.to_thread(pg.stop)


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (struct.pack(">I", 5) + b"\xc1\xc1\xc1\xc1\xc1", "BAD_FRAME"),  # not msgpack
        (struct.pack(">I", 0xFFFFFFF0), "FRAME_TOO_LARGE"),
        (wire.encode([0, "not-an-id", "hello", {}]), "BAD_FRAME"),
        (wire.encode([7, 1, 2]), "BAD_FRAME"),
        (wire.encode({"a": 1}), "BAD_FRAME"),  # type: ignore[arg-type]
        (struct.pack(">I", 3) + msgpack.packb("abc"), "BAD_FRAME"),
    ],
)
async def test_bad_frames_close_only_that_connection(node: Node, frame: bytes, code: str) -> None:
    bad = await RawClient.connect(node.worker_address)
    bad.send_raw(frame)
    err = await bad.next_notification("error")
    assert err["code"] == code
    await asyncio.wait_for(bad.closed.wait(), 5)
    await bad.close()
    good = await RawClient.connect(node.worker_address)
    await good.hello()
    res = await good.call("enqueue", {"jobs": [{"kind": "ok"}]})
    assert res["jobs"][0]["state"] == "queued"
    await good.close()


async def test_truncated_frame_then_disconnect_leaves_node_serving(node: Node) -> None:
    bad = await RawClient.connect(node.worker_address)
    frame = wire.request(1, "hello", {"protocol": 1})
    bad.send_raw(frame[: len(frame) // 2])
    await bad.close()
    good = await RawClient.connect(node.worker_address)
    assert (await good.hello())["node_id"] == node.config.node_id
    await good.close()


@pytest.mark.parametrize(
    ("method", "params", "code"),
    [
        ("enqueue", {"jobs": [{"kind": 5}]}, "BAD_REQUEST"),
        ("enqueue", {"jobs": [{"kind": "k", "args": "x" * 300_000}]}, "BAD_REQUEST"),
        ("enqueue", {"jobs": [{"kind": "k", "tags": ["a"] * 40}]}, "BAD_REQUEST"),
        ("enqueue", {"jobs": [{"kind": "k", "weight": -1}]}, "BAD_REQUEST"),
        ("enqueue", {"jobs": []}, "BAD_REQUEST"),
        ("enqueue", {"jobs": [{"kind": "k", "surprise": 1}]}, "BAD_REQUEST"),
        ("ack", {"jobs": [{"id": "nope", "token": 1}]}, "BAD_REQUEST"),
        ("ack", {"jobs": [{"id": str(uuid.uuid4()), "token": "1"}]}, "BAD_REQUEST"),
        ("fail", {"jobs": [{"id": str(uuid.uuid4()), "token": 1}]}, "BAD_REQUEST"),
        ("capacity", {"capacity": -3}, "BAD_REQUEST"),
        ("frobnicate", {}, "UNKNOWN_METHOD"),
    ],
)
async def test_wrong_types_get_clear_errors(
    node: Node, method: str, params: dict[str, Any], code: str
) -> None:
    c = await RawClient.connect(node.worker_address)
    await c.hello()
    msg = await c.call_raw(method, params)
    assert msg[2]["code"] == code
    assert msg[2]["message"]
    # the connection stays usable after a request-level error
    assert (await c.call("enqueue", {"jobs": [{"kind": "fine"}]}))["jobs"][0]["state"] == "queued"
    await c.close()


async def test_requests_before_hello_and_bad_version(node: Node) -> None:
    c = await RawClient.connect(node.worker_address)
    msg = await c.call_raw("enqueue", {"jobs": [{"kind": "k"}]})
    assert msg[2]["code"] == "NOT_AUTHENTICATED"
    msg = await c.call_raw("hello", {"protocol": 99})
    assert msg[2]["code"] == "UNSUPPORTED_VERSION"
    await c.close()


async def test_redis_killed_and_restarted_mid_run_loses_nothing(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    try:
        node = await node_factory(redis_url=redis.url, duty_periods={"epoch": 0.1})
        producer = await RawClient.connect(node.worker_address)
        await producer.hello()
        ids = await enqueue(producer, 1500, reserve_for=5.0)
        c = await RawClient.connect(node.worker_address)
        await c.hello(capacity=20)
        worker = RawWorker(c, hold=0.002)

        async def some_done() -> bool:
            return sum(worker.done.values()) >= 300

        await wait_until(some_done, timeout=30)
        await asyncio.to_thread(redis.kill)  # SIGKILL: no persistence, comes back empty
        more = await enqueue(producer, 200, reserve_for=5.0)  # PostgreSQL still takes enqueues
        await asyncio.to_thread(redis.start)

        async def all_done() -> bool:
            return sum(worker.done.values()) >= len(ids) + len(more)

        await wait_until(all_done, timeout=60)
        assert node.rebuild.rebuilds >= 1
        assert worker.overlaps == []
        assert max(worker.done.values()) == 1
        assert set(worker.done) == set(ids + more)
        await worker.stop()
        await producer.close()
    finally:
        await asyncio.to_thread(redis.stop)
