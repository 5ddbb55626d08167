"""Limit definitions in PostgreSQL: create, replace, delete, list.

Limits are part of the dispatch policy: every write goes through `PolicyStore.write`, which bumps
the policy version in the same transaction and nudges the other nodes, so a change reaches every
node's dispatcher and protocol handlers within a second, without a restart.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import asyncpg

from worcr_node.functions.model import Hook
from worcr_node.functions.store import check_reference
from worcr_node.limits.model import MAX_LIMITS, Limit, LimitError, parse_limit
from worcr_node.store import queries as q

if TYPE_CHECKING:
    from worcr_node.dispatch.policy import PolicyStore

__all__ = ["LimitConflict", "LimitStore", "limit_from_row"]


class LimitConflict(Exception):
    """A limit with that name exists, or there are too many limits."""


def limit_from_row(r: asyncpg.Record) -> Limit:
    match = r["match"]
    body: dict[str, Any] = {
        "name": r["name"],
        "description": r["description"],
        "enabled": r["enabled"],
        "scope": r["scope"],
        "type": r["type"],
        "limit": int(r["max_units"]),
        "key": r["key_template"],
    }
    if r["type"] != "concurrency":
        body["period"] = float(r["period"])
    if r["type"] == "token_bucket":
        body["burst"] = int(r["burst"])
    m = json.loads(match) if isinstance(match, str) else match
    if m:
        body["match"] = m
    if r["function"] is not None:
        body["function"] = r["function"]
    return parse_limit(body, str(r["id"]))


def _args(limit: Limit) -> tuple[Any, ...]:
    return (uuid.UUID(limit.id), limit.name, limit.description, limit.enabled,
            limit.scope.value, limit.type.value, limit.limit, limit.period, limit.burst,
            limit.key.text, json.dumps(limit.match.to_json()), limit.function)  # fmt: skip


async def _check_function(c: asyncpg.Connection, limit: Limit) -> None:
    if limit.function is not None:
        why = await check_reference(c, limit.function, (Hook.LIMIT_KEY,))
        if why is not None:
            raise LimitError(why)


class LimitStore:
    def __init__(self, policy: PolicyStore) -> None:
        self.policy = policy
        self.pg = policy.pg

    async def list(self) -> list[Limit]:
        return [limit_from_row(r) for r in await self.pg.run(lambda c: c.fetch(q.LIMIT_LIST))]

    async def get(self, limit_id: uuid.UUID) -> Limit | None:
        row = await self.pg.run(lambda c: c.fetchrow(q.LIMIT_GET, limit_id))
        return None if row is None else limit_from_row(row)

    async def by_name(self, name: str) -> Limit | None:
        row = await self.pg.run(lambda c: c.fetchrow(q.LIMIT_GET_BY_NAME, name))
        return None if row is None else limit_from_row(row)

    async def create(self, limit: Limit) -> Limit:
        async def fn(c: asyncpg.Connection) -> Limit:
            await c.execute(q.LIMIT_CREATE_LOCK)
            if await c.fetchval(q.LIMIT_COUNT) >= MAX_LIMITS:
                raise LimitConflict(f"there are already {MAX_LIMITS} limits (the maximum)")
            await _check_function(c, limit)
            return limit_from_row(await c.fetchrow(q.LIMIT_INSERT, *_args(limit)))

        return await self._unique_name(fn, limit.name)  # type: ignore[no-any-return]

    async def replace(self, limit: Limit) -> Limit | None:
        async def fn(c: asyncpg.Connection) -> Limit | None:
            await _check_function(c, limit)
            row = await c.fetchrow(q.LIMIT_UPDATE, *_args(limit))
            return None if row is None else limit_from_row(row)

        return await self._unique_name(fn, limit.name)  # type: ignore[no-any-return]

    async def delete(self, limit_id: uuid.UUID) -> bool:
        return bool(await self.policy.write(lambda c: c.fetchval(q.LIMIT_DELETE, limit_id)))

    async def _unique_name(self, fn: Callable[[asyncpg.Connection], Any], name: str) -> Any:
        try:
            return await self.policy.write(fn)
        except asyncpg.UniqueViolationError:
            raise LimitConflict(f"a limit named {name!r} exists already") from None
