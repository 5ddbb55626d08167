"""The throwaway PostgreSQL and Redis servers: start, answer, survive stop/kill and restart."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import asyncpg
import pytest
import redis

from worcr_node.embedded import PostgresServer, RedisServer, find_redis_server


async def _query(dsn: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


def _query_sync(dsn: str, sql: str) -> list[asyncpg.Record]:
    return asyncio.run(_query(dsn, sql))


async def _execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)  # simple protocol: several statements allowed
    finally:
        await conn.close()


def test_postgres_answers_and_keeps_data_across_stop_and_kill(tmp_path: Path) -> None:
    with PostgresServer(tmp_path / "pg", fsync=False) as pg:
        port = pg.port
        assert pg.running
        assert pg.dsn == f"postgresql://postgres@127.0.0.1:{port}/postgres"
        assert _query_sync(pg.dsn, "SELECT 1 AS one")[0]["one"] == 1
        asyncio.run(_execute(pg.dsn, "CREATE TABLE kept (v int); INSERT INTO kept VALUES (7)"))

        pg.stop()
        assert not pg.running
        assert pg.pid is None
        pg.stop()  # double stop is fine
        pg.start()
        assert pg.port == port
        assert _query_sync(pg.dsn, "SELECT v FROM kept")[0]["v"] == 7

        pg.kill()
        assert not pg.running
        pg.start()  # crash recovery on the same data dir and port
        assert pg.port == port
        assert _query_sync(pg.dsn, "SELECT v FROM kept")[0]["v"] == 7
    assert not pg.running


def test_postgres_stop_before_start_is_a_no_op(tmp_path: Path) -> None:
    pg = PostgresServer(tmp_path / "pg", fsync=False)
    pg.stop()
    pg.kill()
    assert not pg.running
    assert not (tmp_path / "pg").exists()


def test_redis_answers_and_restarts_after_kill(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.stop()  # stop before start is fine
    with server:
        port = server.port
        assert server.url == f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(server.url)
        try:
            assert client.ping()
            client.set("k", "v")
            assert client.get("k") == b"v"
        finally:
            client.close()

        server.kill()
        assert not server.running
        server.start()
        assert server.port == port
        client = redis.Redis.from_url(server.url)
        try:
            assert client.ping()
            assert client.get("k") is None  # nothing persisted: no RDB, no AOF
        finally:
            client.close()
        server.restart()
        assert server.running
    assert not server.running


def test_find_redis_server_returns_an_executable() -> None:
    path = find_redis_server()
    assert path.is_file()
    assert os.access(path, os.X_OK)


def test_a_fixed_port_already_taken_fails_with_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        server = RedisServer(tmp_path / "redis", squatter.getsockname()[1])
        with pytest.raises(RuntimeError, match="another process already listens"):
            server.start()
        assert not server.running
