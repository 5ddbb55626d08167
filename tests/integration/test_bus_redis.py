"""The bus over a real Redis: two nodes' buses (two indexes, one Redis); each handler hears each
message once, its own node's at once and the other node's over pub/sub; the ready lanes the
store publishes inside its push pipeline arrive as `LanesReady` too; a bus keeps listening
across a Redis restart (its own Redis, killed and started again on the same port)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.waiting import wait_until
from worcr_node.bus import Bus
from worcr_node.embedded import RedisServer
from worcr_node.messages import LanesReady, Message, StopAttempts
from worcr_node.store.redis_index import RedisIndex


class Node:
    def __init__(self, url: str, prefix: str) -> None:
        self.index = RedisIndex(url, prefix)
        self.bus = Bus(self.index, self.index.sender)
        self.heard: list[Message] = []
        self.bus.subscribe(StopAttempts, self.heard.append)
        self.bus.subscribe(LanesReady, self.heard.append)

    async def subscribed(self, n: int = 1) -> None:
        """Until Redis counts this node's listener on the channels (publishing before that
        would reach nobody)."""

        async def counted() -> bool:
            channel = self.index.channel(StopAttempts.topic)
            subs = await self.index.redis.pubsub_numsub(channel)
            return bool(subs and subs[0][1] >= n)

        await wait_until(counted, timeout=10, every=0.01)


@pytest.fixture
async def pair(redis_server: RedisServer) -> AsyncIterator[tuple[Node, Node]]:
    prefix = f"bus{uuid.uuid4().hex[:8]}"
    a, b = Node(redis_server.url, prefix), Node(redis_server.url, prefix)
    await a.bus.start()
    await b.bus.start()
    await a.subscribed(2)
    yield a, b
    for n in (a, b):
        await n.bus.stop()
        await n.index.close()


async def test_a_message_reaches_every_node_once(pair: tuple[Node, Node]) -> None:
    a, b = pair
    stop = StopAttempts((("job-1", 3),), "cancelled")
    await a.bus.publish(stop)
    assert a.heard == [stop]  # at once, before any network

    async def b_heard() -> bool:
        return len(b.heard) == 1

    await wait_until(b_heard, timeout=10, every=0.01)
    assert b.heard == [stop]
    await b.bus.publish(StopAttempts((("job-2", 1),), "cancelled"))
    await wait_until(lambda: _count(a, 2), timeout=10, every=0.01)
    assert len(b.heard) == 2  # its own, once
    assert len(a.heard) == 2  # a's echo of its first message was dropped


async def _count(node: Node, n: int) -> bool:
    return len(node.heard) >= n


async def test_ready_lanes_pushed_by_the_store_arrive_as_messages(pair: tuple[Node, Node]) -> None:
    a, b = pair
    await a.index.push_ready({"lane-x": [(7, uuid.uuid4()), (5, uuid.uuid4())]}, {"lane-x"})
    await wait_until(lambda: _count(b, 1), timeout=10, every=0.01)
    assert b.heard == [LanesReady({"lane-x": 5})]
    assert a.heard == []  # the pusher tells its own dispatcher itself


async def test_a_bus_listens_again_after_redis_restarts(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    await server.astart()
    try:
        prefix = f"bus{uuid.uuid4().hex[:8]}"
        a, b = Node(server.url, prefix), Node(server.url, prefix)
        await a.bus.start()
        await b.bus.start()
        await a.subscribed(2)
        await asyncio.to_thread(server.restart)  # same port, empty
        await a.subscribed(2)  # both listeners came back
        await a.bus.publish(StopAttempts((("job-3", 1),), "cancelled"))
        await wait_until(lambda: _count(b, 1), timeout=10, every=0.01)
        for n in (a, b):
            await n.bus.stop()
            await n.index.close()
    finally:
        await asyncio.to_thread(server.stop)
