"""The limits in force, compiled for the node's hot paths.

Built from each new policy snapshot: the dispatcher asks which job limits (and which keys) apply
to a (lane, worker class) pair, the enqueue path asks which args paths partition a lane, the
protocol looks rate limits up by name, and the recount after a Redis loss asks which concurrency
units a running job holds. Each answer is a `LimitCheck`, the form the Redis scripts take.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from worcr_node.dispatch.rules import Match, TagSet
from worcr_node.functions.runner import FunctionRunner
from worcr_node.functions.views import plain
from worcr_node.limits.model import (
    FUNCTION_PATH,
    Limit,
    LimitType,
    Scope,
    arg_value,
    partition_paths,
)
from worcr_node.store.redis_index import LimitCheck

NOT_LIMITED = ""  # a limit_key function answered nothing: the limit does not apply to the job
_SEP = "\x1f"  # between the dynamic limit and the key in a function limit's partition value

__all__ = ["CompiledLimits"]


class CompiledLimits:
    def __init__(
        self, limits: Sequence[Limit], keyspace: Any, functions: FunctionRunner | None = None
    ) -> None:
        """`keyspace(limit_id, shape) -> (state key prefix, usage index key)` (RedisIndex);
        `functions` runs the limit_key functions."""
        self.functions = functions or FunctionRunner()
        self.limits = tuple(limits)
        self.job = tuple(x for x in limits if x.enabled and x.scope == Scope.JOB)
        self.by_name = {x.name: x for x in limits}
        self._keyspace = keyspace
        self._paths = lru_cache(maxsize=65536)(self._paths_uncached)

    @property
    def holds_units(self) -> bool:
        """Some enabled concurrency limit (job or rate): jobs may hold units until they end."""
        return any(x.enabled and x.type == LimitType.CONCURRENCY for x in self.limits)

    @property
    def matches(self) -> tuple[Match, ...]:
        """What job limits look at on workers (they split worker classes like rules do)."""
        return tuple(x.match for x in self.job)

    def check(self, limit: Limit, key: str, units: int | None = None) -> LimitCheck:
        prefix, index = self._keyspace(limit.id, limit.shape)
        return LimitCheck(
            limit.type.code,
            prefix + key,
            index,
            key,
            units or limit.limit,
            limit.period_ms,
            limit.burst if limit.type == LimitType.TOKEN_BUCKET else 0,
            prefix,
        )

    def concurrency_spaces(self) -> set[str]:
        """Keyspaces of the concurrency job limits: running jobs must be counted into them."""
        return {self._keyspace(x.id, x.shape)[0] for x in self.job
                if x.type == LimitType.CONCURRENCY}  # fmt: skip

    def paths(self, kind: str, tenant: str, tags: tuple[str, ...]) -> tuple[str, ...]:
        """The args paths that split this (kind, tenant, tags) into lanes."""
        return self._paths(kind, tenant, tags) if self.job else ()

    def _paths_uncached(self, kind: str, tenant: str, tags: tuple[str, ...]) -> tuple[str, ...]:
        return partition_paths(self.job, kind, tenant, TagSet(tags))

    async def partition(
        self, paths: Sequence[str], job: Mapping[str, Any], args: Any, job_id: str | None
    ) -> tuple[tuple[str, str], ...]:
        """The values that split a job's lane: args values, and for each limit_key function
        limit, the key (and limit) the function gives for the job. `job` has kind, tenant, tags
        (what the function sees besides args and id)."""
        out = []
        view: dict[str, Any] | None = None
        for p in paths:
            if not p.startswith(FUNCTION_PATH):
                out.append((p, arg_value(args, p)))
                continue
            limit = self.by_name.get(p[len(FUNCTION_PATH) :])
            value = NOT_LIMITED
            if limit is not None and limit.function is not None:
                if view is None:
                    view = {**job, "id": job_id, "args": plain(args)}
                answer = (await self.functions.limit_key(limit.function, view, job_id)).value
                if answer is not None:
                    key, units = answer
                    value = key if units is None else f"{units}{_SEP}{key}"
            out.append((p, value))
        return tuple(out)

    def _function_key(
        self, limit: Limit, partition: Mapping[str, str]
    ) -> tuple[str, int | None] | None:
        """(key, dynamic limit) from a lane's partition; None: the limit does not apply."""
        value = partition[FUNCTION_PATH + limit.name]
        if value == NOT_LIMITED:
            return None
        units, sep, key = value.partition(_SEP)
        return (key, int(units)) if sep else (value, None)

    def for_lane(
        self,
        kind: str,
        tenant: str,
        tags: TagSet,
        partition: Mapping[str, str] | None,
        worker_tags: TagSet,
    ) -> tuple[LimitCheck, ...] | None:
        """The job limits a lane's jobs take from when they go to such a worker; None if one of
        them keys on an args path the lane is not split by (jobs enqueued before that limit)."""
        out: list[LimitCheck] = []
        for lim in self.job:
            if not lim.applies(kind, tenant, tags, worker_tags):
                continue
            paths = lim.key.args_paths
            if lim.function is not None:
                paths = (FUNCTION_PATH + lim.name,)
            if paths and (partition is None or any(p not in partition for p in paths)):
                return None
            if lim.function is not None:
                assert partition is not None
                found = self._function_key(lim, partition)
                if found is not None:
                    out.append(self.check(lim, *found))
                continue
            key = lim.key.render(kind, tenant, tags, partition or {}, resolved=True)
            out.append(self.check(lim, key))
        return tuple(out)

    async def for_job(
        self,
        kind: str,
        tenant: str,
        tags: TagSet,
        args: Any,
        worker_tags: TagSet | None,
        partition: Mapping[str, str] | None = None,
        job_id: str | None = None,
    ) -> list[LimitCheck]:
        """Concurrency limits a running job counts against (recount); worker tags unknown (None):
        every limit whose job side matches counts, to stay on the safe side. A limit_key
        function's key is the one its lane was given at enqueue (`partition`), not asked again."""
        out: list[LimitCheck] = []
        for lim in self.job:
            if lim.type != LimitType.CONCURRENCY:
                continue
            if worker_tags is None:
                if lim.match.job_side(kind, tenant, tags) is not None:
                    continue
            elif not lim.applies(kind, tenant, tags, worker_tags):
                continue
            if lim.function is not None:
                if partition is not None and FUNCTION_PATH + lim.name in partition:
                    found = self._function_key(lim, partition)
                else:  # its lane predates the limit: as the split will key it
                    found = await self.key_of(lim, kind, tenant, tags, args, job_id)
                if found is not None:
                    out.append(self.check(lim, *found))
                continue
            out.append(self.check(lim, lim.key.render(kind, tenant, tags, args)))
        return out

    async def key_of(
        self, lim: Limit, kind: str, tenant: str, tags: TagSet, args: Any, job_id: str | None
    ) -> tuple[str, int | None] | None:
        """A job's key (and dynamic limit) under `lim`; None: the limit does not apply."""
        if lim.function is None:
            return lim.key.render(kind, tenant, tags, args), None
        path = FUNCTION_PATH + lim.name
        job = {"kind": kind, "tenant": tenant, "tags": sorted(tags.tags)}
        return self._function_key(lim, dict(await self.partition((path,), job, args, job_id)))
