"""The msgpack-RPC connection: addresses, pipelined requests, notifications, closing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from worcr import wire
from worcr.connection import Connection, parse_address
from worcr.errors import ConnectionClosed, FrameTooLarge
from worcr.wire import RemoteError

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:7401", ("127.0.0.1", 7401)),
        ("tcp://node-1:9000", ("node-1", 9000)),
        ("tcp://node-1:9000/", ("node-1", 9000)),
        ("localhost", ("localhost", 7401)),
        ("[::1]:7000", ("::1", 7000)),
        ("[::1]", ("::1", 7401)),
        ("::1", ("::1", 7401)),
    ],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("ws://x:1", "unsupported scheme"),
        ("x:99999", "bad port"),
        ("x:abc", "bad port"),
        ("", "empty"),
    ],
)
def test_parse_address_errors(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_address(text)


async def read_messages(reader: asyncio.StreamReader, count: int) -> list[list[Any]]:
    decoder = wire.FrameDecoder(1 << 20)
    out: list[list[Any]] = []
    while len(out) < count:
        data = await reader.read(1 << 16)
        if not data:
            break
        out.extend(decoder.feed(data))
    return out


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Script], Awaitable[str]]]:
    servers: list[asyncio.Server] = []
    tasks: set[asyncio.Task[None]] = set()

    async def start(script: Script) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            tasks.add(task)
            try:
                await script(reader, writer)
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return f"127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_pipelined_requests_resolve_by_msgid_in_any_order(serve: Any) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests = await read_messages(reader, 3)
        for _, msgid, method, params in reversed(requests):
            if method == "boom":
                writer.write(
                    wire.response(
                        msgid, {"code": "UNAVAILABLE", "message": "later", "retryable": True}, None
                    )
                )
            else:
                writer.write(wire.response(msgid, None, {"echo": params["n"]}))
        await reader.read(1)

    conn = await Connection.open(await serve(script))
    try:
        first = asyncio.create_task(conn.request("echo", {"n": 1}))
        second = asyncio.create_task(conn.request("echo", {"n": 2}))
        failing = conn.call("boom", {})
        assert await first == {"echo": 1}
        assert await second == {"echo": 2}
        with pytest.raises(RemoteError) as info:
            await failing
        assert (info.value.code, info.value.retryable) == ("UNAVAILABLE", True)
        assert conn.in_flight == 0
    finally:
        await conn.aclose()


async def test_notifications_and_node_requests_reach_their_handlers(serve: Any) -> None:
    answered: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(wire.notification("jobs", {"jobs": [1, 2]}))
        writer.write(wire.request(5, "ping", {"x": 1}))
        writer.write(wire.request(6, "nope", {}))
        answered.set_result(await read_messages(reader, 2))
        await reader.read(1)

    got: list[tuple[str, dict[str, Any]]] = []

    async def on_request(method: str, params: dict[str, Any]) -> Any:
        if method == "ping":
            return {"pong": params["x"]}
        raise RemoteError("UNKNOWN_METHOD", method)

    conn = await Connection.open(
        await serve(script), on_notification=lambda m, p: got.append((m, p)), on_request=on_request
    )
    try:
        async with asyncio.timeout(5):
            replies = await answered
        assert got == [("jobs", {"jobs": [1, 2]})]
        assert sorted(replies, key=lambda m: m[1]) == [
            [1, 5, None, {"pong": 1}],
            [1, 6, {"code": "UNKNOWN_METHOD", "message": "nope", "retryable": False}, None],
        ]
    finally:
        await conn.aclose()


async def test_close_by_the_node_fails_pending_requests_with_its_error(serve: Any) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_messages(reader, 1)
        writer.write(wire.notification("error", {"code": "BAD_REQUEST", "message": "no"}))
        await writer.drain()

    closed: list[ConnectionClosed] = []
    conn = await Connection.open(await serve(script), on_close=closed.append)
    with pytest.raises(ConnectionClosed) as info:
        await conn.request("hello", {})
    assert info.value.code == "BAD_REQUEST"
    assert "BAD_REQUEST: no" in str(info.value)
    assert isinstance(info.value, ConnectionError)
    await conn.wait_closed()
    assert conn.closed
    assert conn.finished
    assert len(closed) == 1
    with pytest.raises(ConnectionClosed):
        conn.call("x", {})
    with pytest.raises(ConnectionClosed):
        conn.notify("x", {})


async def test_garbage_from_the_node_closes_the_connection(serve: Any) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"\x00\x00\x00\x01\xc1")  # 0xc1 is never valid msgpack
        await reader.read(1 << 16)

    conn = await Connection.open(await serve(script))
    async with asyncio.timeout(5):
        await conn.wait_closed()
    with pytest.raises(ConnectionClosed, match="invalid frame"):
        conn.call("x", {})


async def test_oversized_message_is_refused_before_sending(serve: Any) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)

    conn = await Connection.open(await serve(script), max_frame=1000)
    try:
        with pytest.raises(FrameTooLarge, match="over the frame limit of 1000"):
            conn.call("enqueue", {"blob": b"x" * 2000})
        assert conn.in_flight == 0
    finally:
        await conn.aclose()


async def test_timed_out_request_frees_its_slot(serve: Any) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)
        await reader.read(1 << 16)

    conn = await Connection.open(await serve(script))
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await conn.request("slow", {})
        assert conn.in_flight == 0
    finally:
        await conn.aclose()
