"""Migrations at node start are safe when several nodes start at once."""

from __future__ import annotations

import asyncio

import asyncpg

from worcr_node.embedded import PostgresServer
from worcr_node.store.migrate import migrate, migrations


async def test_concurrent_migrations_apply_each_file_once(pg_server: PostgresServer) -> None:
    admin = await asyncpg.connect(pg_server.dsn)
    try:
        await admin.execute("CREATE DATABASE migrate_race")
    finally:
        await admin.close()
    dsn = pg_server.dsn.rsplit("/", 1)[0] + "/migrate_race"
    conns = [await asyncpg.connect(dsn) for _ in range(4)]
    try:
        applied = await asyncio.gather(*(migrate(c) for c in conns))
        names = [name for _v, name, _sql in migrations()]
        flat = [name for names_applied in applied for name in names_applied]
        assert sorted(flat) == sorted(names)  # each file applied by exactly one
        rows = await conns[0].fetch("SELECT version FROM worcr_migrations ORDER BY version")
        assert [r[0] for r in rows] == [v for v, _n, _s in migrations()]
        assert await migrate(conns[0]) == []  # idempotent
    finally:
        for c in conns:
            await c.close()
