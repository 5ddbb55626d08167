"""Duty `split`: lanes the dispatcher found misfiled (their jobs were enqueued before a job limit
that keys on an args path, or on a limit_key function) have their waiting jobs moved to lanes
split by those values (`PgStore.lane_split`: the jobs are read, the limit_key functions asked,
then the jobs still waiting moved in a transaction), so each value gets its own lane and one
saturated key never blocks another. Several nodes may split one lane at once: a job moved by
another is left as it is."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from worcr_node.dispatch.dispatcher import MISFILED, Dispatcher
from worcr_node.jobspec import Partition
from worcr_node.limits.compiled import CompiledLimits
from worcr_node.scheduler import Duty
from worcr_node.store.pg import PgStore
from worcr_node.store.redis_index import RedisIndex

__all__ = ["SplitLanes"]

log = logging.getLogger(__name__)


class SplitLanes:
    def __init__(
        self, store: PgStore, index: RedisIndex, dispatcher: Dispatcher, every: float = 0.5
    ) -> None:
        self.store = store
        self.index = index
        self.dispatcher = dispatcher
        self.every = every

    def duty(self) -> Duty:
        return Duty("split", self.every, self.run)

    async def run(self) -> int:
        """Returns the jobs moved."""
        moved = 0
        d = self.dispatcher
        for lane in list(d.misfiled):
            info = d.lane_info(lane)
            if info is None:
                d.misfiled.discard(lane)
                continue
            tags = tuple(sorted(info.tags.tags))
            paths = d.limits.paths(info.kind, info.tenant, tags)
            have = info.partition or {}
            if paths and not all(p in have for p in paths):
                ready = await self.store.lane_split(
                    lane, info.kind, info.tenant, tags, info.weight,
                    _partitioner(d.limits, paths, info.kind, info.tenant, tags),
                )  # fmt: skip
                await self.index.lane_reset(lane)
                if ready:
                    await self.index.mark_ready(list(ready))
                    d.lanes_ready(dict.fromkeys(ready))
                moved += sum(ready.values())
                log.info("split lane %s by %s: %d ready job(s) moved", lane, list(paths),
                         sum(ready.values()), extra={"action": "split"})  # fmt: skip
            d.misfiled.discard(lane)
            d.unpark(MISFILED + lane, None)
        return moved


def _partitioner(
    limits: CompiledLimits, paths: tuple[str, ...], kind: str, tenant: str, tags: tuple[str, ...]
) -> Callable[[Any, str], Awaitable[Partition]]:
    """What splits one waiting job's lane, from its args and id."""
    job = {"kind": kind, "tenant": tenant, "tags": list(tags)}

    async def partition(args: Any, job_id: str) -> Partition:
        return await limits.partition(paths, job, args, job_id)

    return partition
