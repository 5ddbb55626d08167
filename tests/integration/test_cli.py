"""The real `worcr` command: bad configuration stops the node with a clear message."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys

import pytest

from tests.conftest import create_database
from tests.rawclient import RawClient
from worcr_node.embedded import PostgresServer, RedisServer, free_port


def run_node(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worcr_node", "node"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def start_node(
    pg_server: PostgresServer, redis_server: RedisServer, prefix: str, listen: int, stderr: int
) -> asyncio.subprocess.Process:
    """`worcr node` as deployed, on a new database, its worker port `listen`; stdout piped."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worcr_node", "node",
        env={
            **os.environ,
            "WORCR_DATABASE_URL": await create_database(pg_server.dsn),
            "WORCR_REDIS_URL": redis_server.url,
            "WORCR_REDIS_PREFIX": prefix,
            "WORCR_HTTP": "127.0.0.1:0",
            "WORCR_LISTEN": f"127.0.0.1:{listen}",
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("var", "value"),
    [("WORCR_HTTP", "nonsense"), ("WORCR_DATABASE_URL", "mysql://x/y"), ("WORCR_NODE_ID", "a b")],
)
def test_bad_config_names_the_variable(var: str, value: str) -> None:
    proc = run_node(**{var: value})
    assert proc.returncode == 2
    assert var in proc.stderr
    assert "expected" in proc.stderr


def test_unreachable_database_fails_start_with_message() -> None:
    proc = run_node(
        WORCR_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none",
        WORCR_HTTP="127.0.0.1:0",
        WORCR_LISTEN="127.0.0.1:0",
    )
    assert proc.returncode == 1
    assert "could not start" in proc.stderr


async def test_worcr_node_serves_jobs_under_uvloop_and_stops_on_sigterm(
    pg_server: PostgresServer, redis_server: RedisServer
) -> None:
    """The production entry point, as deployed: a separate process with uvloop."""
    listen = free_port()
    proc = await start_node(
        pg_server, redis_server, "cli-uvloop", listen, asyncio.subprocess.DEVNULL
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert b"HTTP API" in line
        client = await RawClient.connect(f"127.0.0.1:{listen}")
        await client.hello(capacity=1)
        await client.call("enqueue", {"jobs": [{"kind": "k", "args": [1]}]})
        [job] = await client.jobs(1)
        done = await client.call("ack", {"jobs": [{"id": job["id"], "token": job["token"]}]})
        assert done["results"] == [None]
        await client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0


async def test_node_taken_port_is_one_clear_line(
    pg_server: PostgresServer, redis_server: RedisServer
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = await start_node(
            pg_server, redis_server, "cli-taken", port, asyncio.subprocess.STDOUT
        )
        assert proc.stdout is not None
        out = (await asyncio.wait_for(proc.stdout.read(), 60)).decode()
        code = await proc.wait()
    assert code == 1, out
    [line] = [line for line in out.splitlines() if "ERROR" in line or "Traceback" in line]
    assert f"cannot listen for workers on 127.0.0.1:{port}" in line, out
    assert "WORCR_LISTEN=HOST:PORT" in line, out
