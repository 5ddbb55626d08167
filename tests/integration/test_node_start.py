"""Nodes starting together on an empty database and an empty Redis: none of them mistakes the
others' first epoch for a Redis that lost its data (which would rebuild needlessly and restart
every limit conservatively)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from tests.conftest import NodeFactory, create_database
from worcr_node.config import Config, HostPort
from worcr_node.embedded import PostgresServer, RedisServer
from worcr_node.node import Node


def lost_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "lost its data" in r.getMessage()]


@pytest.mark.parametrize("round_", range(5))
async def test_nodes_starting_together_report_no_data_loss(
    round_: int,
    node_factory: NodeFactory,
    pg_server: PostgresServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="worcr_node")
    database_url = await create_database(pg_server.dsn)  # empty (migrated), like the prefix
    nodes = await asyncio.gather(*(node_factory(database_url=database_url) for _ in range(3)))
    assert [n.rebuild.rebuilds for n in nodes] == [0, 0, 0]
    assert {n.rebuild.epoch for n in nodes} == {await nodes[0].index.epoch()}
    assert not lost_logs(caplog)


async def test_the_epoch_set_between_a_starting_nodes_two_reads_is_adopted(
    database_url: str,
    redis_server: RedisServer,
    redis_prefix: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The interleaving seen in 3 of 16 real starts, forced: node B finds no epoch in Redis, then
    node A starts, sets it in Redis and records it in PostgreSQL, then B reads PostgreSQL."""
    caplog.set_level(logging.WARNING, logger="worcr_node")

    def make(name: str) -> Node:
        return Node(
            Config(
                database_url=database_url,
                redis_url=redis_server.url,
                http=HostPort("127.0.0.1", 0),
                listen=HostPort("127.0.0.1", 0),
                node_id=name,
                redis_prefix=redis_prefix,
            )
        )

    a, b = make("a"), make("b")
    b_between_reads = asyncio.Event()
    a_recorded = asyncio.Event()
    b_get, a_set = b.store.cluster_get, a.store.cluster_set

    async def b_cluster_get(key: str) -> Any:
        b_between_reads.set()
        await a_recorded.wait()
        return await b_get(key)

    async def a_cluster_set(key: str, value: Any) -> None:
        await a_set(key, value)
        a_recorded.set()

    monkeypatch.setattr(b.store, "cluster_get", b_cluster_get)
    monkeypatch.setattr(a.store, "cluster_set", a_cluster_set)
    b_start = asyncio.create_task(b.start())
    try:
        await asyncio.wait_for(b_between_reads.wait(), 30)
        await asyncio.wait_for(a.start(), 30)
        await asyncio.wait_for(b_start, 30)
        assert b.rebuild.rebuilds == 0
        assert b.rebuild.epoch == a.rebuild.epoch == await a.index.epoch()
        assert not lost_logs(caplog)
    finally:
        await b.stop()
        await a.stop()
