"""The HTTP edge (worcr_node/http/edge.py) against an in-process node: JSON bodies only, no
requests from other sites' pages, body read timeouts and the large-body budget, and what a
malformed request or a client gone mid-body writes to the log.

Raw sockets send what aiohttp's client will not (a 9000-byte request line, half a body).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.apicalls import assert_error
from tests.conftest import NodeFactory
from tests.waiting import wait_until
from worcr_node.config import Config, ConfigError
from worcr_node.node import Node

JOBS = "/api/v1/jobs"
RULES = "/api/v1/rules"
JSON = {"Content-Type": "application/json"}
EDGE_LOG = "worcr_node.http.edge"


@pytest.fixture
async def http(node: Node) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(node.http_address) as session:
        yield session


async def listed(http: aiohttp.ClientSession) -> list[Any]:
    async with http.get(JOBS) as resp:
        assert resp.status == 200
        jobs: list[Any] = (await resp.json())["jobs"]
        return jobs


async def send(
    http: aiohttp.ClientSession, method: str, path: str, data: bytes, headers: dict[str, str]
) -> tuple[int, Any, aiohttp.ClientResponse]:
    """(status, JSON answer, response); no Content-Type but the one in `headers`."""
    async with http.request(
        method, path, data=io.BytesIO(data), headers=headers, skip_auto_headers=["Content-Type"]
    ) as resp:
        return resp.status, await resp.json(), resp


# -- settings --------------------------------------------------------------------------------


def test_body_settings_are_read_and_checked() -> None:
    config = Config.from_env({"WORCR_HTTP_BODY_TIMEOUT": "5", "WORCR_HTTP_BODY_BUDGET_MB": "16"})
    assert (config.http_body_timeout, config.http_body_budget_mb) == (5, 16)
    assert (Config().http_body_timeout, Config().http_body_budget_mb) == (30, 64)
    for var, value, words in [
        ("WORCR_HTTP_BODY_TIMEOUT", "0", "from 1 to 3600"),
        ("WORCR_HTTP_BODY_TIMEOUT", "soon", "from 1 to 3600"),
        ("WORCR_HTTP_BODY_BUDGET_MB", "7", "from 8 to 65536"),  # one 8 MiB body must fit
    ]:
        with pytest.raises(ConfigError, match=var) as caught:
            Config.from_env({var: value})
        assert words in str(caught.value)


# -- content type ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "text/plain; charset=utf-8", "application/x-www-form-urlencoded",
     "multipart/form-data; boundary=x", "application/octet-stream", "application/jsonx"],
)  # fmt: skip
async def test_a_body_that_is_not_json_typed_is_refused_and_nothing_stored(
    http: aiohttp.ClientSession, content_type: str
) -> None:
    body = json.dumps({"kind": "k"}).encode()
    status, answer, _ = await send(http, "POST", JOBS, body, {"Content-Type": content_type})
    assert_error(status, answer, 415, "BAD_REQUEST", "application/json")
    assert await listed(http) == []
    rule = json.dumps({"name": "r", "match": {"kind": "k"}, "action": {"pause": True}}).encode()
    status, answer, _ = await send(http, "POST", RULES, rule, {"Content-Type": content_type})
    assert_error(status, answer, 415, "BAD_REQUEST", "application/json")


async def test_a_body_without_content_type_is_refused(http: aiohttp.ClientSession) -> None:
    status, answer, _ = await send(http, "POST", JOBS, b'{"kind": "k"}', {})
    assert_error(status, answer, 415, "BAD_REQUEST", "none", "application/json")
    assert await listed(http) == []


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "Application/JSON; charset=UTF-8",
     "application/vnd.worcr+json"],
)  # fmt: skip
async def test_json_content_types_are_accepted(
    http: aiohttp.ClientSession, content_type: str
) -> None:
    status, answer, _ = await send(
        http, "POST", JOBS, b'{"kind": "k"}', {"Content-Type": content_type}
    )
    assert status == 201, answer
    assert [j["id"] for j in await listed(http)] == [answer["id"]]


@pytest.mark.parametrize("charset", ["latin-1", "utf-16", "no-such-charset"])
async def test_a_json_body_in_another_charset_is_refused(
    http: aiohttp.ClientSession, charset: str
) -> None:
    headers = {"Content-Type": f"application/json; charset={charset}"}
    status, answer, _ = await send(http, "POST", JOBS, b'{"kind": "k"}', headers)
    assert_error(status, answer, 415, "BAD_REQUEST", "UTF-8")
    assert await listed(http) == []


async def test_a_post_without_a_body_needs_no_content_type(http: aiohttp.ClientSession) -> None:
    status, answer, _ = await send(http, "POST", JOBS, b'{"kind": "k", "run_in": 3600}', JSON)
    assert status == 201, answer
    async with http.post(f"{JOBS}/{answer['id']}/retry") as resp:  # no Content-Length
        assert resp.status == 200, await resp.text()
    async with http.post(f"{JOBS}/{answer['id']}/cancel", headers={"Content-Length": "0"}) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["state"] == "cancelled"


# -- origin ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin", ["http://evil.example", "null", "http://127.0.0.1:1", "file://", "http://[::1"]
)
async def test_a_post_from_another_sites_page_is_refused(
    node: Node, http: aiohttp.ClientSession, origin: str
) -> None:
    status, answer, _ = await send(http, "POST", JOBS, b'{"kind": "k"}', {**JSON, "Origin": origin})
    assert_error(status, answer, 403, "UNAUTHORIZED", "cross-origin")
    status, answer, _ = await send(
        http, "POST", f"{JOBS}/{'0' * 32}/cancel", b"", {"Origin": origin}
    )
    assert_error(status, answer, 403, "UNAUTHORIZED", "cross-origin")
    async with http.get(JOBS, headers={"Origin": origin}) as resp:  # reads are not refused
        assert resp.status == 200
    assert await listed(http) == []


async def test_a_post_from_the_nodes_own_origin_is_accepted(
    node: Node, http: aiohttp.ClientSession
) -> None:
    headers = {**JSON, "Origin": node.http_address}
    status, answer, _ = await send(http, "POST", JOBS, b'{"kind": "k"}', headers)
    assert status == 201, answer


# -- body timeout and budget -------------------------------------------------------------------


async def open_body(node: Node, declared: int, sent: int) -> tuple[Any, Any]:
    """A POST that declares `declared` bytes of JSON and sends `sent` of them, then waits."""
    host, port = node.http_address.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"POST {JOBS} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {declared}\r\n\r\n".encode()
    )
    writer.write(b"[" + b" " * (sent - 1))
    await writer.drain()
    return reader, writer


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], Any]:
    """Status, headers (lower-case names) and JSON body of one response."""
    status = int((await reader.readline()).split()[1])
    headers = {}
    while line := (await reader.readline()).strip():
        name, _, value = line.decode().partition(":")
        headers[name.lower()] = value.strip()
    body = await reader.readexactly(int(headers["content-length"]))
    return status, headers, json.loads(body)


async def test_a_slow_body_times_out_and_gives_its_budget_back(
    node_factory: NodeFactory,
) -> None:
    node = await node_factory(http_body_timeout=1, http_body_budget_mb=8)
    reader, writer = await open_body(node, 8 << 20, 100_000)  # holds the whole 8 MiB budget
    try:
        async with aiohttp.ClientSession(node.http_address) as http:
            big = json.dumps([{"kind": "k", "args": ["x" * 100_000]}] * 10).encode()  # 1 MB
            status, answer, resp = await send(http, "POST", JOBS, big, JSON)
            assert_error(status, answer, 503, "UNAVAILABLE", "large request bodies")
            assert resp.headers["Retry-After"] == "1"
            small = await send(http, "POST", JOBS, b'{"kind": "small"}', JSON)
            assert small[0] == 201, small  # bodies under 64 KiB do not count

            async with asyncio.timeout(30):
                status, _, answer = await read_response(reader)
            assert_error(status, answer, 408, "BAD_REQUEST", "within 1 s")

            status, answer, _ = await send(http, "POST", JOBS, big, JSON)  # the budget is back
            assert status == 201, answer
    finally:
        writer.close()


async def test_a_body_over_the_limit_is_refused_before_it_is_read(node: Node) -> None:
    reader, writer = await open_body(node, (8 << 20) + 1, 10)
    try:
        async with asyncio.timeout(30):
            status, _, answer = await read_response(reader)
        assert_error(status, answer, 413, "BAD_REQUEST", "8388608")
    finally:
        writer.close()


# -- logs --------------------------------------------------------------------------------------


def errors_and_tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]


async def test_a_request_line_over_8190_bytes_is_one_info_line(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    host, port = node.http_address.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        async with asyncio.timeout(30):
            status_line = await reader.readline()
        assert status_line.split()[1] == b"400"
    finally:
        writer.close()
    assert errors_and_tracebacks(caplog) == []
    lines = [r for r in caplog.records if r.name == EDGE_LOG]
    assert [(r.levelno, getattr(r, "action", None)) for r in lines] == [
        (logging.INFO, "http_bad_request")
    ]
    assert "\n" not in lines[0].getMessage()


@pytest.mark.parametrize("declared", [50_000, 4 << 20])  # under and over 64 KiB
async def test_a_client_gone_mid_body_logs_no_error(
    node: Node, caplog: pytest.LogCaptureFixture, declared: int
) -> None:
    caplog.set_level(logging.INFO)
    _, writer = await open_body(node, declared, 20_000)
    writer.close()
    await writer.wait_closed()

    async def logged() -> bool:
        return any(getattr(r, "action", None) == "http_body_lost" for r in caplog.records)

    await wait_until(logged)
    assert errors_and_tracebacks(caplog) == []
    async with aiohttp.ClientSession(node.http_address) as http:  # the node still serves
        assert (await send(http, "POST", JOBS, b'{"kind": "k"}', JSON))[0] == 201


async def test_a_handler_that_fails_is_still_logged_with_its_traceback(
    node: Node, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    async def broken(specs: Any) -> Any:
        raise RuntimeError("a bug in a handler")

    monkeypatch.setattr(node.manager, "enqueue", broken)
    async with http.post(JOBS, json={"kind": "k"}) as resp:
        assert resp.status == 500
    failures = [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]
    assert len(failures) == 1
    assert "a bug in a handler" in repr(failures[0].exc_info)
