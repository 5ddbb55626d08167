"""Held request bodies cannot grow a node's memory (issue 14, item 8): the node runs as its own
process (tests/nodes.py) and its resident memory is read with psutil during the attack.

The attack: 60 connections each declare an 8 MiB JSON body, send all of it but the last byte, and
wait. Before the edge (worcr_node/http/edge.py) the node read all 60 into memory and held them
until the clients left (313 -> 993 MiB). Now large bodies hold at most the node's budget (64 MiB
by default) at once, the rest are answered 503 at once, and a body that does not arrive within
the body timeout is answered 408 and dropped; a second round of the attack after the first was
answered must not add to what the first one took.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import psutil
import pytest

from tests.nodes import NodeProcess
from worcr_node.embedded import RedisServer

CONNECTIONS = 60
BODY = 8 << 20  # the largest body a node takes
CHUNK = 256 << 10
GROWTH_BOUND = 200 << 20  # bytes; the old code grew by over 480 MiB (60 held 8 MiB bodies)
TIMEOUT = 3  # WORCR_HTTP_BODY_TIMEOUT for these nodes, seconds


@pytest.fixture
async def node_process(
    database_url: str, redis_server: RedisServer, redis_prefix: str, tmp_path: Path
) -> AsyncIterator[NodeProcess]:
    env = {"WORCR_HTTP_BODY_TIMEOUT": str(TIMEOUT)}
    node = await NodeProcess.start(
        database_url, redis_server.url, redis_prefix, "edge", tmp_path / "edge.log", env
    )
    try:
        await _wait_http(node)
        yield node
    finally:
        await node.close()


async def _wait_http(node: NodeProcess, timeout: float = 30.0) -> None:
    """The HTTP API opens after the worker port `NodeProcess.start` waits for."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    async with aiohttp.ClientSession(node.http_address) as http:
        while True:
            try:
                async with http.get("/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            if loop.time() > end:
                raise AssertionError(f"HTTP API not up; node log:\n{node.log()}")
            await asyncio.sleep(0.05)  # no event to await: the port opens when it is ready


async def _held_body(address: str, chunked: bool) -> int | None:
    """Send all but the last byte of an 8 MiB JSON body and wait for an answer: its status, or
    None if the node closed the connection without one."""
    host, port = address.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {BODY}"
    writer.write(
        f"POST /api/v1/jobs HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\n{framing}\r\n\r\n".encode()
    )
    payload = memoryview(b"[" + b" " * (BODY - 2))  # BODY - 1 bytes
    try:
        with contextlib.suppress(ConnectionError):
            for start in range(0, len(payload), CHUNK):
                piece = payload[start : start + CHUNK]
                writer.write(b"%x\r\n%b\r\n" % (len(piece), piece) if chunked else piece)
                await writer.drain()
        try:
            status_line = await reader.readline()
        except ConnectionError:
            return None
        return int(status_line.split()[1]) if status_line else None
    finally:
        writer.close()


async def _attack(node: NodeProcess, chunked: bool, deadline: float) -> tuple[int, Counter[int]]:
    """One round: the peak growth of the node's resident memory, and the answers."""
    proc = psutil.Process(node.proc.pid)
    before = proc.memory_info().rss
    peak = before
    attack = asyncio.gather(
        *(_held_body(node.http_address, chunked) for _ in range(CONNECTIONS)),
        return_exceptions=True,
    )
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not attack.done() and loop.time() < end:
        peak = max(peak, proc.memory_info().rss)
        await asyncio.wait([attack], timeout=0.02)  # a sampling period, not a synchronisation
    peak = max(peak, proc.memory_info().rss)
    if not attack.done():
        attack.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await attack
        return peak - before, Counter()
    answers = Counter(a if isinstance(a, int) else -1 for a in attack.result())
    return peak - before, answers


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_held_bodies_leave_memory_flat(node_process: NodeProcess, chunked: bool) -> None:
    baseline = psutil.Process(node_process.proc.pid).memory_info().rss
    for round_ in (1, 2):
        growth, answers = await _attack(node_process, chunked, deadline=TIMEOUT + 60)
        assert growth < GROWTH_BOUND, (round_, growth >> 20, answers)
        # a few bodies fit the 64 MiB budget and wait out the timeout (408), the rest get 503
        assert answers[503] >= CONNECTIONS - 8, (round_, answers)
        assert answers[408] + answers[503] == CONNECTIONS, (round_, answers)
    total = psutil.Process(node_process.proc.pid).memory_info().rss - baseline
    assert total < GROWTH_BOUND, total >> 20  # the first round's bodies were freed, not kept
