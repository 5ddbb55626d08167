"""The producer clients against the in-process fake node."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from worcr import Client, JobSpec, RemoteError, SyncClient
from worcr.backoff import Backoff
from worcr.errors import ConnectionClosed

if TYPE_CHECKING:
    from conftest import FakeNode


def quick_backoff() -> Backoff:
    return Backoff(base=0.001, cap=0.01, jitter=0)


async def test_enqueue_sends_a_spec_with_a_client_id(fake_node: FakeNode) -> None:
    async with Client(fake_node.address, token="t") as client:
        result = await client.enqueue("email.send", "bob@example.com", 3, tags=["eu"])
        kw = await client.enqueue("report", args={"year": 2024}, run_in=5)
    assert result.state == "queued"
    assert not result.duplicate
    first, second = fake_node.enqueued
    assert first["id"] == result.id
    assert first["args"] == ["bob@example.com", 3]
    assert first["tags"] == ["eu"]
    assert first["kind"] == "email.send"
    assert second == {"kind": "report", "args": {"year": 2024}, "id": kw.id, "run_in": 5}
    hello = fake_node.calls("hello")[0]
    assert hello["token"] == "t"
    assert hello["capacity"] == 0
    assert hello["protocol"] == 1


async def test_enqueue_many_splits_batches_and_keeps_order(fake_node: FakeNode) -> None:
    specs: list[JobSpec | dict[str, object]] = [JobSpec("k", [n]) for n in range(1500)]
    specs.append({"kind": "k", "args": [1500]})
    async with await Client.connect(fake_node.address) as client:
        results = await client.enqueue_many(specs)
        assert await client.enqueue_many([]) == []
    assert [len(call["jobs"]) for call in fake_node.calls("enqueue")] == [1000, 501]
    assert [job["args"][0] for job in fake_node.enqueued] == list(range(1501))
    assert [r.id for r in results] == [job["id"] for job in fake_node.enqueued]


async def test_enqueue_many_validates_everything_first(fake_node: FakeNode) -> None:
    async with Client(fake_node.address) as client:
        with pytest.raises(ValueError, match="weight"):
            await client.enqueue_many([JobSpec("ok"), JobSpec("bad", weight=-1)])
    assert fake_node.calls("enqueue") == []


async def test_retryable_errors_are_retried_with_the_same_ids(fake_node: FakeNode) -> None:
    fake_node.fail_next("enqueue", "UNAVAILABLE", retryable=True)
    fake_node.fail_next("enqueue", "UNAVAILABLE", retryable=True)
    async with Client(fake_node.address, backoff=quick_backoff()) as client:
        result = await client.enqueue("k")
    calls = fake_node.calls("enqueue")
    assert len(calls) == 3
    assert {call["jobs"][0]["id"] for call in calls} == {result.id}


async def test_final_errors_are_raised_at_once(fake_node: FakeNode) -> None:
    fake_node.fail_next("enqueue", "BAD_REQUEST", retryable=False)
    async with Client(fake_node.address, backoff=quick_backoff()) as client:
        with pytest.raises(RemoteError, match="BAD_REQUEST"):
            await client.enqueue("k")
    assert len(fake_node.calls("enqueue")) == 1


async def test_retries_stop_at_the_deadline(fake_node: FakeNode) -> None:
    for _ in range(1000):
        fake_node.fail_next("enqueue", "UNAVAILABLE", retryable=True)
    client = Client(fake_node.address, backoff=Backoff(base=0.01, jitter=0), retry_deadline=0.05)
    async with client:
        with pytest.raises(RemoteError, match="UNAVAILABLE"):
            await client.enqueue("k")


async def test_bad_token_is_not_retried(fake_node: FakeNode) -> None:
    client = Client(fake_node.address, token="bad", backoff=quick_backoff())
    with pytest.raises(RemoteError, match="UNAUTHORIZED"):
        await client.open()
    await client.close()
    assert len(fake_node.calls("hello")) == 1


async def test_reconnects_after_the_node_drops_the_connection(fake_node: FakeNode) -> None:
    async with Client(fake_node.address, backoff=quick_backoff()) as client:
        await client.enqueue("k")
        fake_node.drop_connections()
        await fake_node.wait_for(lambda: not fake_node.sessions)
        await client.enqueue("k")
    assert len(fake_node.calls("hello")) == 2
    assert len(fake_node.enqueued) == 2


async def test_unreachable_node_fails_after_the_deadline() -> None:
    client = Client("127.0.0.1:1", backoff=quick_backoff(), retry_deadline=0.05, connect_timeout=1)
    with pytest.raises(OSError, match=r"127\.0\.0\.1"):
        await client.enqueue("k")
    await client.close()


async def test_closed_client_refuses_work(fake_node: FakeNode) -> None:
    client = await Client.connect(fake_node.address)
    await client.close()
    with pytest.raises(ConnectionClosed):
        await client.enqueue("k")


async def test_sync_client_from_several_threads(fake_node: FakeNode) -> None:
    def produce() -> list[str]:
        with SyncClient(fake_node.address) as client:
            one = client.enqueue("k", 1)
            many = client.enqueue_many([{"kind": "k", "args": [n]} for n in range(3)])
            return [one.id, *(r.id for r in many)]

    ids = await asyncio.gather(*(asyncio.to_thread(produce) for _ in range(4)))
    assert sum(len(batch) for batch in ids) == 16
    assert len(fake_node.enqueued) == 16


async def test_sync_client_close_is_idempotent(fake_node: FakeNode) -> None:
    def run() -> None:
        client = SyncClient.connect(fake_node.address)
        client.close()
        client.close()
        with pytest.raises(RuntimeError, match="closed"):
            client.enqueue("k")

    await asyncio.to_thread(run)


async def test_batches_over_the_frame_limit_are_split(fake_node: FakeNode) -> None:
    blob = b"x" * (300 << 10)
    async with Client(fake_node.address) as client:
        results = await client.enqueue_many([JobSpec("big", [blob]) for _ in range(6)])
        with pytest.raises(ValueError, match="over the frame limit"):
            await client.enqueue("huge", b"x" * (2 << 20))
    assert len(results) == 6
    assert all(len(call["jobs"]) <= 3 for call in fake_node.calls("enqueue"))
    assert len(fake_node.enqueued) == 6


async def test_unencodable_args_are_a_clear_type_error(fake_node: FakeNode) -> None:
    async with Client(fake_node.address) as client:
        with pytest.raises(TypeError, match="cannot encode the 'enqueue' request as msgpack"):
            await client.enqueue("k", object())
