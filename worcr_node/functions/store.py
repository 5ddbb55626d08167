"""Function definitions in PostgreSQL: put (create or new version), get, list, versions, delete.

Functions are part of the dispatch policy: every write goes through `PolicyStore.write`, which
bumps the policy version in the same transaction and nudges the other nodes, so every node
compiles the new version within a second. Every version ever saved is kept in
`worcr_function_versions`; `worcr_functions` holds the current one. Rules and limits refer to a
function by name: one in use cannot be deleted, nor change its hook.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import asyncpg

from worcr_node.dispatch.rules import parse_match
from worcr_node.functions.model import MAX_FUNCTIONS, Function, Hook
from worcr_node.store import queries as q

if TYPE_CHECKING:
    from worcr_node.dispatch.policy import PolicyStore

__all__ = ["FunctionConflict", "FunctionStore", "check_reference", "function_from_row"]


class FunctionConflict(Exception):
    """Too many functions, or a function in use cannot be deleted or change its hook."""


def function_from_row(r: asyncpg.Record) -> Function:
    match = r["match"]
    m = json.loads(match) if isinstance(match, str) else match
    return Function(
        name=r["name"],
        language=r["language"],
        hook=Hook(r["hook"]),
        source=r["source"],
        version=int(r["version"]),
        description=r["description"],
        enabled=r["enabled"],
        match=parse_match(m or {}),
    )


def row_times(r: asyncpg.Record) -> dict[str, str]:
    return {"created_at": r["created_at"].isoformat(), "updated_at": r["updated_at"].isoformat()}


async def check_reference(c: asyncpg.Connection, name: str, hooks: tuple[Hook, ...]) -> str | None:
    """Inside a rule's or limit's write: why it cannot refer to function `name` (None: it can).
    The row is locked (FOR SHARE) so it cannot be deleted or change hook before the commit."""
    hook = await c.fetchval(q.FUNCTION_HOOK, name)
    if hook is None:
        return f"function: there is no function named {name!r}"
    if hook not in hooks:
        need = " or ".join(h.value for h in hooks)
        return f"function: {name!r} is a {hook} function; this needs a {need} function"
    return None


class FunctionStore:
    def __init__(self, policy: PolicyStore) -> None:
        self.policy = policy
        self.pg = policy.pg

    async def all(self) -> list[asyncpg.Record]:
        return await self.pg.run(lambda c: c.fetch(q.FUNCTION_LIST))

    async def get(self, name: str) -> asyncpg.Record | None:
        return await self.pg.run(lambda c: c.fetchrow(q.FUNCTION_GET, name))

    async def versions(self, name: str, limit: int = 100) -> list[asyncpg.Record]:
        return await self.pg.run(lambda c: c.fetch(q.FUNCTION_VERSIONS, name, limit))

    async def version(self, name: str, version: int) -> asyncpg.Record | None:
        return await self.pg.run(lambda c: c.fetchrow(q.FUNCTION_VERSION_GET, name, version))

    async def put(self, fn: Function, create_only: bool = False) -> tuple[asyncpg.Record, bool]:
        """Save `fn` as the function's next version; (row, created). FunctionConflict if it
        exists and `create_only`, if there are too many, or if it is in use and the hook
        changes."""

        async def tx(c: asyncpg.Connection) -> tuple[asyncpg.Record, bool]:
            await c.execute(q.FUNCTION_CREATE_LOCK)
            old = await c.fetchrow(q.FUNCTION_GET_FOR_UPDATE, fn.name)
            if old is None:
                if await c.fetchval(q.FUNCTION_COUNT) >= MAX_FUNCTIONS:
                    raise FunctionConflict(f"there are already {MAX_FUNCTIONS} functions")
            elif create_only:
                raise FunctionConflict(
                    f"a function named {fn.name!r} exists already (PUT /api/v1/functions/"
                    f"{fn.name} saves a new version)"
                )
            elif old["hook"] != fn.hook:
                users = await c.fetch(q.FUNCTION_USERS, fn.name)
                if users:
                    raise FunctionConflict(f"{fn.name!r} is used by {_users(users)}: its hook "
                                           f"cannot change from {old['hook']}")  # fmt: skip
            version = await c.fetchval(q.FUNCTION_NEXT_VERSION, fn.name)
            args = (fn.name, version, fn.language, fn.hook.value, fn.source, fn.description,
                    fn.enabled, json.dumps(fn.match.to_json()))  # fmt: skip
            await c.execute(q.FUNCTION_VERSION_ADD, *args)
            return await c.fetchrow(q.FUNCTION_PUT, *args), old is None

        out: tuple[asyncpg.Record, bool] = await self.policy.write(tx)
        return out

    async def delete(self, name: str) -> bool:
        """False if there is no such function; FunctionConflict if rules or limits use it.
        Its versions stay (a function created again under the name continues the numbering)."""

        async def tx(c: asyncpg.Connection) -> bool:
            # Lock the row first: a rule or limit taking it (FOR SHARE) now waits for us.
            if await c.fetchrow(q.FUNCTION_GET_FOR_UPDATE, name) is None:
                return False
            users = await c.fetch(q.FUNCTION_USERS, name)
            if users:
                raise FunctionConflict(f"{name!r} is used by {_users(users)}; change or delete "
                                       "them first")  # fmt: skip
            return bool(await c.fetchval(q.FUNCTION_DELETE, name))

        out: bool = await self.policy.write(tx)
        return out

    async def errors(self, name: str, before: int | None, limit: int) -> list[asyncpg.Record]:
        return await self.pg.run(lambda c: c.fetch(q.FUNCTION_ERRORS, name, before, limit))


def _users(rows: list[Any]) -> str:
    names = [f"{r['what']} {r['name']!r}" for r in rows[:5]]
    more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
    return ", ".join(names) + more
