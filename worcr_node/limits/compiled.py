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
from worcr_node.limits.model import Limit, LimitType, Scope, partition_paths
from worcr_node.store.redis_index import LimitCheck

__all__ = ["CompiledLimits"]


class CompiledLimits:
    def __init__(self, limits: Sequence[Limit], keyspace: Any) -> None:
        """`keyspace(limit_id, shape) -> (state key prefix, usage index key)` (RedisIndex)."""
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

    def check(self, limit: Limit, key: str) -> LimitCheck:
        prefix, index = self._keyspace(limit.id, limit.shape)
        return LimitCheck(
            limit.type.code,
            prefix + key,
            index,
            key,
            limit.limit,
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
            if paths and (partition is None or any(p not in partition for p in paths)):
                return None
            key = lim.key.render(kind, tenant, tags, partition or {}, resolved=True)
            out.append(self.check(lim, key))
        return tuple(out)

    def for_job(
        self, kind: str, tenant: str, tags: TagSet, args: Any, worker_tags: TagSet | None
    ) -> list[LimitCheck]:
        """Concurrency limits a running job counts against (recount); worker tags unknown (None):
        every limit whose job side matches counts, to stay on the safe side."""
        out: list[LimitCheck] = []
        for lim in self.job:
            if lim.type != LimitType.CONCURRENCY:
                continue
            if worker_tags is None:
                if lim.match.job_side(kind, tenant, tags) is not None:
                    continue
            elif not lim.applies(kind, tenant, tags, worker_tags):
                continue
            out.append(self.check(lim, lim.key.render(kind, tenant, tags, args)))
        return out
