"""Test fixtures: real PostgreSQL and Redis, started here on free loopback ports.

Session-scoped servers; each test gets its own database (created from a migrated template) and its
own Redis key prefix, so tests are isolated without restarting servers. Nothing depends on a
service that happens to be running already.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.nodes import NodeProcess, SpawnNode
from tests.workers import SpawnWorker, WorkerProcess
from worcr_node.config import Config, HostPort
from worcr_node.embedded import PostgresServer, RedisServer
from worcr_node.node import Node
from worcr_node.store.migrate import migrate

_db_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    server = PostgresServer(tmp_path_factory.mktemp("pg") / "data", fsync=False)
    server.start()
    asyncio.run(_make_template(server.dsn))
    yield server
    server.stop()


async def _make_template(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE DATABASE worcr_template")
    finally:
        await conn.close()
    conn = await asyncpg.connect(dsn.rsplit("/", 1)[0] + "/worcr_template")
    try:
        await migrate(conn)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


async def create_database(admin_dsn: str) -> str:
    name = f"t{os.getpid()}_{next(_db_counter)}"
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f"CREATE DATABASE {name} TEMPLATE worcr_template")
    finally:
        await conn.close()
    return admin_dsn.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
async def database_url(pg_server: PostgresServer) -> str:
    return await create_database(pg_server.dsn)


@pytest.fixture
def redis_prefix(request: pytest.FixtureRequest) -> str:
    return f"t{next(_db_counter)}"


NodeFactory = Callable[..., Awaitable[Node]]


@pytest.fixture
async def node_factory(
    database_url: str, redis_server: RedisServer, redis_prefix: str
) -> AsyncIterator[NodeFactory]:
    nodes: list[Node] = []
    counter = itertools.count(1)

    async def make(**overrides: Any) -> Node:
        periods = overrides.pop("duty_periods", None)
        config = Config(
            database_url=overrides.pop("database_url", database_url),
            redis_url=overrides.pop("redis_url", redis_server.url),
            http=HostPort("127.0.0.1", 0),
            listen=HostPort("127.0.0.1", 0),
            node_id=f"node-{next(counter)}",
            redis_prefix=redis_prefix,
            heartbeat_ms=200,
        ).with_(**overrides)
        node = Node(config, duty_periods=periods)
        await node.start()
        nodes.append(node)
        return node

    yield make
    for node in reversed(nodes):
        await node.stop()
    gc.collect()  # leaked connections warn here, attributed to the test that leaked them


@pytest.fixture
async def node(node_factory: NodeFactory) -> Node:
    return await node_factory()


@pytest.fixture
async def spawn_node(
    database_url: str, redis_server: RedisServer, redis_prefix: str, tmp_path: Path
) -> AsyncIterator[SpawnNode]:
    """Start nodes as processes (to kill -9 them) on this test's database and Redis prefix."""
    procs: list[NodeProcess] = []

    async def spawn(
        name: str,
        *,
        listen: str | None = None,
        http: str | None = None,
        env: dict[str, str] | None = None,
    ) -> NodeProcess:
        """A node named `name`; `listen`/`http` to start it again where it was."""
        node = await NodeProcess.start(
            database_url, redis_server.url, redis_prefix, name, tmp_path / f"{name}.log", env,
            listen=listen, http=http,
        )  # fmt: skip
        procs.append(node)
        return node

    yield spawn
    for node in procs:
        await node.close()


@pytest.fixture
async def spawn_worker(tmp_path: Path) -> AsyncIterator[SpawnWorker]:
    """Start `python -m worcr.worker tests.integration.jobs.sample` processes; kill leftovers."""
    procs: list[WorkerProcess] = []

    async def spawn(node: Node | str, *options: str) -> WorkerProcess:
        proc = await WorkerProcess.start(node, tmp_path / f"worker-{len(procs)}.log", *options)
        procs.append(proc)
        return proc

    yield spawn
    for proc in procs:
        await proc.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).parts[-2] == "integration":
            item.add_marker(pytest.mark.integration)
