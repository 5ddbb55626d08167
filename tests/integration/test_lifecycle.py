"""Job lifecycle through a real node over the wire protocol: enqueue, dispatch, ack, fail, retry."""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import NodeFactory
from tests.rawclient import RawClient
from worcr import wire
from worcr_node.node import Node


async def test_enqueue_dispatch_ack(node: Node) -> None:
    producer = await RawClient.connect(node.worker_address)
    await producer.hello()
    res = await producer.call("enqueue", {"jobs": [{"kind": "echo", "args": [1, "two"]}]})
    job_id = res["jobs"][0]["id"]
    assert res["jobs"][0]["state"] == "queued"

    worker = await RawClient.connect(node.worker_address)
    hello = await worker.hello(worker_id="w1", capacity=4, kinds=["echo"])
    assert hello["heartbeat_ms"] == 200
    [job] = await worker.jobs(1)
    assert job["id"] == job_id
    assert job["args"] == [1, "two"]
    assert job["attempt"] == 1
    out = await worker.call("ack", {"jobs": [{"id": job_id, "token": job["token"], "result": 3}]})
    assert out["results"] == [None]
    row = await node.store.job_get(uuid.UUID(job_id))
    assert row is not None
    assert row["state"] == "completed"
    attempts = await node.store.attempts_of_job(uuid.UUID(job_id))
    assert [a["outcome"] for a in attempts] == ["completed"]
    # a second ack of the same attempt (its answer was lost) is answered as done, recorded once
    again = await worker.call("ack", {"jobs": [{"id": job_id, "token": job["token"]}]})
    assert again["results"] == [None]
    attempts = await node.store.attempts_of_job(uuid.UUID(job_id))
    assert [a["outcome"] for a in attempts] == ["completed"]
    await worker.close()
    await producer.close()


async def test_fail_retries_then_dead(node_factory: NodeFactory) -> None:
    node = await node_factory(duty_periods={"promote": 0.05})
    c = await RawClient.connect(node.worker_address)
    await c.hello(capacity=1)
    spec = {"kind": "boom", "max_attempts": 2, "backoff": {"base": 0.01, "jitter": 0}}
    job_id = (await c.call("enqueue", {"jobs": [spec]}))["jobs"][0]["id"]
    for attempt in (1, 2):
        [job] = await c.jobs(1)
        assert job["attempt"] == attempt
        r = await c.call("fail", {"jobs": [{"id": job_id, "token": job["token"], "error": "E"}]})
        assert r["results"] == [None]
    row = await node.store.job_get(uuid.UUID(job_id))
    assert row is not None
    assert row["state"] == "dead"
    outcomes = [a["outcome"] for a in await node.store.attempts_of_job(uuid.UUID(job_id))]
    assert outcomes == ["failed", "failed"]
    await c.close()


@pytest.mark.parametrize("retryable", [False])
async def test_permanent_failure_is_dead_at_once(node: Node, retryable: bool) -> None:
    c = await RawClient.connect(node.worker_address)
    await c.hello(capacity=1)
    job_id = (await c.call("enqueue", {"jobs": [{"kind": "x"}]}))["jobs"][0]["id"]
    [job] = await c.jobs(1)
    ref = {"id": job_id, "token": job["token"], "error": "bad", "retryable": retryable}
    await c.call("fail", {"jobs": [ref]})
    row = await node.store.job_get(uuid.UUID(job_id))
    assert row is not None
    assert row["state"] == "dead"
    await c.close()


async def test_pushes_stay_under_the_frame_limit_with_large_args(node: Node) -> None:
    c = await RawClient.connect(node.worker_address)
    c.decoder = wire.FrameDecoder(wire.Limits().max_frame)  # as strict as any client may be
    await c.hello(capacity=0)
    big = "x" * 200_000
    for _ in range(5):  # two per request: a request frame is limited too
        await c.call("enqueue", {"jobs": [{"kind": "big", "args": [big]} for _ in range(2)]})
    await c.call("capacity", {"capacity": 20})  # all ten ready at once: one claim of 2 MB
    jobs = await c.jobs(10)
    assert all(j["args"] == [big] for j in jobs)
    assert not c.closed.is_set()
    await c.close()
