"""Duty `usage`: each job limit's usage index (the keys `GET /api/v1/limits/{name}/usage` lists)
is kept bounded by the keys used lately (`limits/usage.py`)."""

from __future__ import annotations

from worcr_node.dispatch.dispatcher import Dispatcher
from worcr_node.limits.usage import prune_usage_index
from worcr_node.scheduler import Duty
from worcr_node.store.redis_index import RedisIndex

__all__ = ["PruneUsage"]


class PruneUsage:
    def __init__(self, index: RedisIndex, dispatcher: Dispatcher, every: float = 60.0) -> None:
        self.index = index
        self.dispatcher = dispatcher
        self.every = every

    def duty(self) -> Duty:
        return Duty("usage", self.every, self.run)

    async def run(self) -> None:
        compiled = self.dispatcher.limits
        for limit in compiled.limits:
            await prune_usage_index(self.index, compiled, limit)
