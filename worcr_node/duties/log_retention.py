"""Duty `retention`: job log lines older than `WORCR_LOG_RETENTION` seconds are deleted, once a
minute, ten thousand at a time (the scheduler cancels a long run when the node stops)."""

from __future__ import annotations

from worcr_node.clock import Clock
from worcr_node.scheduler import Duty
from worcr_node.store.life import LifeStore

__all__ = ["LogRetention"]

BATCH = 10_000


class LogRetention:
    def __init__(
        self, store: LifeStore, clock: Clock, log_retention: float, every: float = 60.0
    ) -> None:
        self.store = store
        self.clock = clock
        self.log_retention = log_retention
        self.every = every
        self.deleted_lines = 0

    def duty(self) -> Duty:
        return Duty("retention", self.every, self.run, at_once=True)

    async def run(self) -> None:
        cutoff = self.clock.now() - self.log_retention
        while True:
            n = await self.store.logs_delete_before(cutoff, BATCH)
            self.deleted_lines += n
            if n < BATCH:
                break
