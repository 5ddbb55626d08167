"""Duty `leases`: leases that expired (no heartbeat extended them) are taken in Redis, atomically
and for one node at a time, and their attempts end (`JobManager.requeue_lost`: requeued, or dead
after the last attempt; the units the jobs held are released)."""

from __future__ import annotations

from worcr_node.clock import Clock
from worcr_node.manager import JobManager
from worcr_node.scheduler import Duty
from worcr_node.store.redis_index import RedisIndex

__all__ = ["LEASE_GRACE_MS", "ExpireLeases"]

LEASE_GRACE_MS = 30_000  # an expired lease taken for requeueing comes back after this
BATCH = 500


class ExpireLeases:
    def __init__(
        self, index: RedisIndex, manager: JobManager, clock: Clock, every: float = 0.2
    ) -> None:
        self.index = index
        self.manager = manager
        self.clock = clock
        self.every = every

    def duty(self) -> Duty:
        return Duty("leases", self.every, self.run)

    async def run(self) -> int:
        total = 0
        while True:
            now_ms = int(self.clock.now() * 1000)
            ids = await self.index.lease_take_expired(now_ms, BATCH, LEASE_GRACE_MS)
            if not ids:
                return total
            # If PostgreSQL is down here, the leases stay taken until the grace time, then
            # expire again (for this node or another).
            total += await self.manager.requeue_lost(ids)
            if len(ids) < BATCH:
                return total
