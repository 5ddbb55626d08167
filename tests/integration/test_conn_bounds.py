"""Connections to the worker port are bounded: attacks that used to exhaust a node's memory.

Issue 14, item 7: before any hello, 300 connections each holding most of a 1 MiB frame, or one
connection that never reads while sending 1 MiB method names that the error echoed, grew a node
by 300 MiB. Those attacks run here against a node process, and its resident memory (psutil) must
stay flat. The other bounds (hello deadline, the small frame limit before hello, connection caps,
back-pressure, short error quotes) run against in-process nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import psutil

from tests.conftest import NodeFactory
from tests.nodes import NodeProcess, SpawnNode
from tests.rawclient import RawClient
from tests.waiting import wait_until
from worcr import wire
from worcr.wire import Limits
from worcr_node.embedded import RedisServer
from worcr_node.node import Node

MIB = 1 << 20
ATTACKERS = 300
GROWTH_BOUND = 40 * MIB  # the attacks below grew the node by about 300 MiB before the fix


def _rss(node: NodeProcess) -> int:
    return int(psutil.Process(node.proc.pid).memory_info().rss)


async def _round_trips(address: str, n: int = 20) -> None:
    """A fresh client says hello and makes n calls: the node's loop has gone round many times,
    so bytes sent to it earlier have been read by now."""
    c = await RawClient.connect(address)
    try:
        await c.hello()
        for _ in range(n):
            await c.call("capacity", {"capacity": 0})
    finally:
        await c.close()


async def _closed_by_node(reader: asyncio.StreamReader) -> bool:
    """Read until the node closes the connection (EOF or reset)."""
    try:
        while await reader.read(65536):
            pass
    except (ConnectionError, OSError):
        pass
    return True


async def _read_messages(reader: asyncio.StreamReader, n: int) -> list[list[Any]]:
    decoder = wire.FrameDecoder(16 * MIB)
    out: list[list[Any]] = []
    while len(out) < n:
        data = await reader.read(1 << 18)
        assert data, f"connection closed after {len(out)} of {n} messages"
        out.extend(decoder.feed(data))
    return out


async def _connect(address: str, local_ip: str = "127.0.0.1") -> RawClient:
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port), local_addr=(local_ip, 0))
    return RawClient(reader, writer)


# -- memory under attack (node process) -----------------------------------------------------------


async def _hold_a_partial_frame(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Send a 1 MiB length prefix and all but the last byte of the body, then keep waiting."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    chunk = b"\0" * (64 << 10)
    try:
        writer.write(wire.HEADER.pack(MIB))
        left = MIB - 1
        while left:
            writer.write(chunk[: min(left, len(chunk))])
            left -= min(left, len(chunk))
            await writer.drain()
    except (ConnectionError, OSError):
        pass  # refused: the node closed the connection
    return reader, writer


async def test_partial_frames_on_many_connections_before_hello_keep_memory_flat(
    database_url: str, redis_server: RedisServer, redis_prefix: str, tmp_path: Any
) -> None:
    node = await NodeProcess.start(
        database_url, redis_server.url, redis_prefix, "flood", tmp_path / "flood.log",
        extra_env={"WORCR_MAX_CONNECTIONS_PER_IP": "1000"},  # let all in: the frame limit holds
    )  # fmt: skip
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        await _round_trips(node.worker_address)
        before = _rss(node)
        conns = list(
            await asyncio.gather(
                *(_hold_a_partial_frame(node.worker_address) for _ in range(ATTACKERS))
            )
        )
        await _round_trips(node.worker_address)
        growth = _rss(node) - before
        assert growth < GROWTH_BOUND, f"node grew by {growth >> 20} MiB under the attack"
        # each attacker was refused at its length prefix, long before its hello deadline
        closed = [asyncio.wait_for(_closed_by_node(r), 5) for r, _ in conns]
        assert all(await asyncio.gather(*closed))
        await _round_trips(node.worker_address)  # and the node serves others as before
    finally:
        for _, w in conns:
            w.close()
        await node.close()


async def test_long_method_names_from_a_client_that_never_reads_keep_memory_flat(
    spawn_node: SpawnNode,
) -> None:
    node = await spawn_node("echo")
    host, port = node.worker_address.rsplit(":", 1)
    await _round_trips(node.worker_address)
    before = _rss(node)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(wire.request(0, "hello", {"protocol": 1}))
        [hello] = await _read_messages(reader, 1)
        assert hello[2] is None
        name = "m" * (MIB - 64)
        for i in range(1, ATTACKERS + 1):  # and read nothing meanwhile
            writer.write(wire.request(i, name, {}))
            await writer.drain()
        await _round_trips(node.worker_address)
        growth = _rss(node) - before
        assert growth < GROWTH_BOUND, f"node grew by {growth >> 20} MiB under the attack"
        answers = await asyncio.wait_for(_read_messages(reader, ATTACKERS), 30)
        assert [a[1] for a in answers] == list(range(1, ATTACKERS + 1))
        for a in answers:
            assert a[2]["code"] == "UNKNOWN_METHOD"
            assert "m" * 64 in a[2]["message"]
            assert "m" * 65 not in a[2]["message"]
    finally:
        writer.close()


# -- the bounds one by one (in-process node) -----------------------------------------------------


async def test_a_connection_without_hello_is_closed_at_the_deadline(
    node_factory: NodeFactory,
) -> None:
    node = await node_factory(limits=Limits(hello_timeout=1))
    worker = await RawClient.connect(node.worker_address)
    await worker.hello()
    idle = await RawClient.connect(node.worker_address)
    error = await idle.next_notification("error", timeout=10)
    assert error["code"] == "NOT_AUTHENTICATED"
    await asyncio.wait_for(idle.closed.wait(), 10)
    # the deadline passed for the worker too: it said hello, so it stays
    assert (await worker.call("enqueue", {"jobs": [{"kind": "k"}]}))["jobs"][0]["state"]
    assert not worker.closed.is_set()
    await worker.close()
    await idle.close()


async def test_frames_before_hello_are_small_and_full_size_after(node: Node) -> None:
    limit = node.config.limits.max_hello_frame
    big = "x" * (limit + 1000)
    c = await RawClient.connect(node.worker_address)
    c.send_raw(wire.request(1, "hello", {"protocol": 1, "name": big}))
    error = await c.next_notification("error")
    assert error["code"] == "FRAME_TOO_LARGE"
    assert str(limit) in error["message"]
    await asyncio.wait_for(c.closed.wait(), 10)
    await c.close()

    c = await RawClient.connect(node.worker_address)
    await c.hello(name="y" * (limit - 1000))  # a large hello under the limit is fine
    jobs = [{"kind": "big", "args": ["z" * 200_000]} for _ in range(2)]  # a 400 kB frame
    answer = await c.call("enqueue", {"jobs": jobs})
    assert [j["state"] for j in answer["jobs"]] == ["queued", "queued"]
    await c.close()


async def test_per_address_cap_refuses_the_extra_connection_only(
    node_factory: NodeFactory,
) -> None:
    node = await node_factory(limits=Limits(max_connections_per_ip=2))
    first = [await _connect(node.worker_address) for _ in range(2)]
    for c in first:
        await c.hello()
    extra = await _connect(node.worker_address)
    error = await extra.next_notification("error")
    assert error["code"] == "TOO_MANY_CONNECTIONS"
    await asyncio.wait_for(extra.closed.wait(), 10)
    other = await _connect(node.worker_address, "127.0.0.2")  # another address is let in
    await other.hello()
    for c in [*first, other]:
        assert (await c.call("capacity", {"capacity": 0})) == {}
    await first[0].close()
    await wait_until(_connections_from(node, "127.0.0.1", 1))
    again = await _connect(node.worker_address)  # a closed connection frees its place
    await again.hello()
    for c in [first[1], other, extra, again]:
        await c.close()


async def test_total_cap_refuses_the_extra_connection_only(node_factory: NodeFactory) -> None:
    node = await node_factory(limits=Limits(max_connections=3))
    ips = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    first = [await _connect(node.worker_address, ip) for ip in ips]
    for c in first:
        await c.hello()
    extra = await _connect(node.worker_address, "127.0.0.4")
    error = await extra.next_notification("error")
    assert error["code"] == "TOO_MANY_CONNECTIONS"
    await asyncio.wait_for(extra.closed.wait(), 10)
    for c in first:
        assert (await c.call("capacity", {"capacity": 0})) == {}
    for c in [*first, extra]:
        await c.close()


def _connections_from(node: Node, ip: str, n: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return sum(c.ip == ip for c in node.tcp.connections()) == n

    return check


async def test_errors_quote_only_a_prefix_of_client_input(node: Node) -> None:
    c = await RawClient.connect(node.worker_address)
    # before hello, any method but hello is refused without being looked up
    msg = await c.call_raw("n" * 100_000, {})
    assert msg[2]["code"] == "NOT_AUTHENTICATED"
    assert "n" * 10 not in msg[2]["message"]
    msg = await c.call_raw("hello", {"protocol": "p" * 100_000})
    assert msg[2]["code"] == "UNSUPPORTED_VERSION"
    assert "p" * 64 in msg[2]["message"]
    assert "p" * 65 not in msg[2]["message"]
    await c.hello()
    msg = await c.call_raw("m" * 900_000, {})
    assert msg[2]["code"] == "UNKNOWN_METHOD"
    assert "m" * 64 in msg[2]["message"]
    assert "m" * 65 not in msg[2]["message"]
    # a job spec's error is cut too, whatever the spec parser quoted
    msg = await c.call_raw("enqueue", {"jobs": [{"kind": "k", "run_at": "t" * 900_000}]})
    assert msg[2]["code"] == "BAD_REQUEST"
    assert len(msg[2]["message"]) <= 1024
    # a fatal error's message too
    c.send_raw(wire.encode(["u" * 900_000]))
    error = await c.next_notification("error")
    assert error["code"] == "BAD_FRAME"
    assert "u" * 64 in error["message"]
    assert "u" * 65 not in error["message"]
    await c.close()


async def test_a_client_that_does_not_read_is_paused_then_resumed(
    node_factory: NodeFactory,
) -> None:
    node = await node_factory(limits=Limits(hello_timeout=3600))
    host, port = node.worker_address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    # 500000 requests of 15 bytes, each answered with some 80 bytes (NOT_AUTHENTICATED): 40 MB
    # of answers, far more than the node's 1 MiB mark and the sockets' buffers can hold.
    n, batch = 500_000, 1000

    async def flood() -> None:
        for start in range(1, n + 1, batch):
            writer.write(b"".join(wire.request(i, "x", {}) for i in range(start, start + batch)))
            await writer.drain()

    flooding = asyncio.get_running_loop().create_task(flood())
    try:

        async def paused() -> bool:
            return not node.tcp.connections()[0].reading

        await wait_until(paused, timeout=60)
        # the node stopped reading with its unsent answers near its mark: at most the answers
        # to one read (256 KiB of requests, some 1.4 MB of answers) past it
        [state] = node.tcp.connections()
        limits = node.config.limits
        assert limits.max_unsent <= state.unsent < limits.max_unsent + 2 * MIB
        # others are served meanwhile
        other = await RawClient.connect(node.worker_address)
        await other.hello()
        await other.close()
        # once the client reads, the node reads again and answers every request
        answers = await asyncio.wait_for(_read_messages(reader, n), 60)
        assert sorted(a[1] for a in answers) == list(range(1, n + 1))
        assert {a[2]["code"] for a in answers} == {"NOT_AUTHENTICATED"}
        await asyncio.wait_for(flooding, 10)
        assert node.tcp.connections()[0].reading
    finally:
        flooding.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await flooding
        writer.close()
