"""Versioned schema migrations, applied at node start under a PostgreSQL advisory lock.

Files `migrations/NNNN_name.sql` run in order, each in its own transaction, and are recorded in
`worcr_migrations`; several nodes starting at once serialize on the lock and skip what is done.
"""

from __future__ import annotations

import logging
from importlib import resources

import asyncpg

log = logging.getLogger(__name__)

__all__ = ["migrate", "migrations"]

_LOCK_KEY = 0x776F726372  # "worcr"


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every migration file, in order."""
    out: list[tuple[int, str, str]] = []
    folder = resources.files("worcr_node.store") / "migrations"
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            out.append((version, entry.name, entry.read_text()))
    return sorted(out)


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply pending migrations; return the names applied."""
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS worcr_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r[0] for r in await conn.fetch("SELECT version FROM worcr_migrations")}
        for version, name, sql in migrations():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO worcr_migrations (version, name) VALUES ($1, $2)", version, name
                )
            log.info("applied migration %s", name, extra={"action": "migrate"})
            applied.append(name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied
