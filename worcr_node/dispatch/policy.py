"""The dispatch policy: rules, fairness settings and limits, stored in PostgreSQL, watched by every
node.

`PolicyStore` reads and writes the policy tables; every write bumps `worcr_dispatch_version` in
the same transaction. `PolicyWatcher` (a node service) polls that version every 0.25 s and also
listens for a Redis nudge sent after each write, so a change reaches every node well within a
second, without a restart; it then hands the new `Policy` snapshot to the dispatcher.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from worcr_node.bus import Bus
from worcr_node.dispatch.fairness import DEFAULT_SCOPE, Fairness, Strategy
from worcr_node.dispatch.rules import FUNCTION_ACTIONS, MAX_RULES, Rule, RuleError, parse_rule
from worcr_node.functions.model import Function, Hook
from worcr_node.functions.store import check_reference, function_from_row
from worcr_node.limits.model import Limit, LimitError
from worcr_node.limits.store import limit_from_row
from worcr_node.messages import PolicyChanged
from worcr_node.service import Service
from worcr_node.store import queries as q
from worcr_node.store.pg import PgStore, StorageUnavailable
from worcr_node.store.redis_index import IndexUnavailable

__all__ = ["Policy", "PolicyStore", "PolicyWatcher", "RuleConflict"]

log = logging.getLogger(__name__)


class RuleConflict(Exception):
    """A rule with that name exists, or there are too many rules."""


@dataclass(frozen=True, slots=True)
class Policy:
    version: int = 0
    rules: tuple[Rule, ...] = ()
    fairness: Fairness = field(default_factory=Fairness)
    limits: tuple[Limit, ...] = ()
    functions: tuple[Function, ...] = ()


def rule_from_row(r: asyncpg.Record) -> Rule:
    match = r["match"]
    body: dict[str, Any] = {
        "name": r["name"],
        "description": r["description"],
        "enabled": r["enabled"],
        "match": json.loads(match) if isinstance(match, str) else match,
        "action": r["action"],
    }
    if r["function"] is not None:
        body["function"] = r["function"]
    elif r["action"] == "multiply":
        body["factor"] = r["factor"]
    return parse_rule(body, str(r["id"]))


class PolicyStore:
    def __init__(self, pg: PgStore, bus: Bus) -> None:
        self.pg = pg
        self.bus = bus  # PolicyChanged, after each write

    async def version(self) -> int:
        return int(await self.pg.run(lambda c: c.fetchval(q.POLICY_VERSION)))

    async def load(self) -> Policy:
        async def read(c: asyncpg.Connection) -> Policy:
            async with c.transaction(isolation="repeatable_read", readonly=True):
                version = await c.fetchval(q.POLICY_VERSION)
                rules = [rule_from_row(r) for r in await c.fetch(q.RULE_LIST)]
                scopes = {r[0]: Strategy(r[1]) for r in await c.fetch(q.FAIRNESS_LIST)}
                weights = {r[0]: float(r[1]) for r in await c.fetch(q.TENANT_WEIGHT_LIST)}
                limits = [limit_from_row(r) for r in await c.fetch(q.LIMIT_LIST)]
                functions = [function_from_row(r) for r in await c.fetch(q.FUNCTION_LIST)]
            default = scopes.pop(DEFAULT_SCOPE, Strategy.ROUND_ROBIN)
            return Policy(int(version), tuple(rules), Fairness(default, scopes, weights),
                          tuple(limits), tuple(functions))  # fmt: skip

        return await self.pg.run(read)

    async def write(self, fn: Callable[[asyncpg.Connection], Any]) -> Any:
        async def tx(c: asyncpg.Connection) -> Any:
            async with c.transaction():
                out = await fn(c)
                await c.execute(q.POLICY_BUMP)
                return out

        out = await self.pg.run(tx)
        try:
            await self.bus.publish(PolicyChanged())
        except IndexUnavailable:
            pass  # nodes also poll the version
        return out

    # -- rules -------------------------------------------------------------------------------------

    async def rules(self) -> list[Rule]:
        return [rule_from_row(r) for r in await self.pg.run(lambda c: c.fetch(q.RULE_LIST))]

    async def rule(self, rule_id: uuid.UUID) -> Rule | None:
        row = await self.pg.run(lambda c: c.fetchrow(q.RULE_GET, rule_id))
        return None if row is None else rule_from_row(row)

    async def rule_create(self, rule: Rule) -> Rule:
        async def fn(c: asyncpg.Connection) -> Rule:
            await c.execute(q.RULE_CREATE_LOCK)
            if await c.fetchval(q.RULE_COUNT) >= MAX_RULES:
                raise RuleConflict(f"there are already {MAX_RULES} rules (the maximum)")
            await _check_function(c, rule)
            return rule_from_row(await c.fetchrow(q.RULE_INSERT, *_rule_args(rule)))

        return await self._unique_name(fn, rule.name)  # type: ignore[no-any-return]

    async def rule_replace(self, rule: Rule) -> Rule | None:
        async def fn(c: asyncpg.Connection) -> Rule | None:
            await _check_function(c, rule)
            row = await c.fetchrow(q.RULE_UPDATE, *_rule_args(rule))
            return None if row is None else rule_from_row(row)

        return await self._unique_name(fn, rule.name)  # type: ignore[no-any-return]

    async def rule_delete(self, rule_id: uuid.UUID) -> bool:
        return bool(await self.write(lambda c: c.fetchval(q.RULE_DELETE, rule_id)))

    async def _unique_name(self, fn: Callable[[asyncpg.Connection], Any], name: str) -> Any:
        try:
            return await self.write(fn)
        except asyncpg.UniqueViolationError:
            raise RuleConflict(f"a rule named {name!r} exists already") from None

    # -- fairness ----------------------------------------------------------------------------------

    async def fairness_set(self, default: Strategy, kinds: dict[str, Strategy]) -> None:
        async def fn(c: asyncpg.Connection) -> None:
            await c.execute(q.FAIRNESS_CLEAR)
            scopes = [DEFAULT_SCOPE, *kinds]
            strategies = [default.value, *(s.value for s in kinds.values())]
            await c.execute(q.FAIRNESS_INSERT_MANY, scopes, strategies)

        await self.write(fn)

    async def tenant_weights(self) -> list[asyncpg.Record]:
        return await self.pg.run(lambda c: c.fetch(q.TENANT_WEIGHT_LIST))

    async def tenant_weight(self, tenant: str) -> asyncpg.Record | None:
        return await self.pg.run(lambda c: c.fetchrow(q.TENANT_WEIGHT_GET, tenant))

    async def tenant_weight_set(self, tenant: str, weight: float) -> asyncpg.Record:
        row: asyncpg.Record = await self.write(
            lambda c: c.fetchrow(q.TENANT_WEIGHT_SET, tenant, weight)
        )
        return row

    async def tenant_weight_delete(self, tenant: str) -> bool:
        return bool(await self.write(lambda c: c.fetchval(q.TENANT_WEIGHT_DELETE, tenant)))


def _rule_args(rule: Rule) -> tuple[Any, ...]:
    return (uuid.UUID(rule.id), rule.name, rule.description, rule.enabled,
            json.dumps(rule.match_json()), rule.action, rule.factor, rule.function)  # fmt: skip


async def _check_function(c: asyncpg.Connection, rule: Rule) -> None:
    if rule.function is not None:
        why = await check_reference(c, rule.function, (Hook(FUNCTION_ACTIONS[rule.action]),))
        if why is not None:
            raise RuleError(why)


class PolicyWatcher(Service):
    """Keeps this node's policy snapshot current and tells the dispatcher when it changes."""

    name = "policy-watcher"

    def __init__(
        self, store: PolicyStore, on_change: Callable[[Policy], None], every: float = 0.25
    ) -> None:
        super().__init__()
        self.store = store
        self.on_change = on_change
        self.every = every
        self.policy = Policy()
        self._nudge = asyncio.Event()

    async def start(self) -> None:
        try:
            await self.refresh()
        except (StorageUnavailable, RuleError, LimitError) as exc:
            log.warning("dispatch policy not loaded yet: %s", exc)
        self.spawn(self._poll(), "poll")

    def nudge(self) -> None:
        """Read the version now (`PolicyChanged` on the bus), not at the next poll."""
        self._nudge.set()

    async def refresh(self) -> bool:
        """Reload the policy if its version moved; True if it changed."""
        version = await self.store.version()
        if version == self.policy.version:
            return False
        policy = await self.store.load()
        if policy.version != self.policy.version:
            self.policy = policy
            self.on_change(policy)
            log.info("dispatch policy v%d: %d rule(s), %d limit(s), %d function(s), fairness %s",
                     policy.version, len(policy.rules), len(policy.limits), len(policy.functions),
                     policy.fairness.to_json(),
                     extra={"action": "policy"})  # fmt: skip
            return True
        return False

    async def _poll(self) -> None:
        while not self.stopping:
            try:
                async with asyncio.timeout(self.every):
                    await self._nudge.wait()
            except TimeoutError:
                pass
            self._nudge.clear()
            try:
                await self.refresh()
            except StorageUnavailable as exc:
                log.debug("policy poll: %s", exc)
            except Exception:  # a bad stored row must not kill the watcher
                log.exception("policy reload failed", extra={"action": "policy"})
