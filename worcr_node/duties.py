"""Periodic duties: promote due jobs, expire leases and jobs, reconcile Redis with PostgreSQL.

Every node runs them; each is safe to run concurrently on several nodes (PostgreSQL row locks with
SKIP LOCKED, leases taken atomically by a Lua script). The reconciler is what makes Redis a
rebuildable index: it re-marks lanes that have ready jobs in PostgreSQL and re-creates leases of
running jobs that have none. The epoch watchdog notices that Redis lost its data (restart,
FLUSHALL, failover) and runs the reconciler at once.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable

from worcr_node.clock import Clock
from worcr_node.dispatch.dispatcher import Dispatcher
from worcr_node.manager import JobManager
from worcr_node.service import Service
from worcr_node.store.pg import PgStore, StorageUnavailable
from worcr_node.store.redis_index import IndexUnavailable, RedisIndex

__all__ = ["Duties"]

log = logging.getLogger(__name__)


class Duties(Service):
    name = "duties"

    def __init__(
        self,
        manager: JobManager,
        store: PgStore,
        index: RedisIndex,
        dispatcher: Dispatcher,
        clock: Clock,
        *,
        promote_every: float = 0.2,
        leases_every: float = 0.2,
        expire_every: float = 1.0,
        reconcile_every: float = 5.0,
        epoch_every: float = 0.5,
    ) -> None:
        super().__init__()
        self.manager = manager
        self.store = store
        self.index = index
        self.dispatcher = dispatcher
        self.clock = clock
        self.epoch: str | None = None
        self.rebuilds = 0
        self._every = {
            "promote": promote_every,
            "leases": leases_every,
            "expire": expire_every,
            "reconcile": reconcile_every,
            "epoch": epoch_every,
        }
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        self.epoch = await self.index.epoch_init(uuid.uuid4().hex)
        await self.reconcile()
        duties: dict[str, Callable[[], Awaitable[object]]] = {
            "promote": self.promote,
            "leases": self.expire_leases,
            "expire": self.manager.expire_due,
            "reconcile": self.reconcile,
            "epoch": self.check_epoch,
        }
        for name, fn in duties.items():
            self.spawn(self._every_loop(name, fn, self._every[name]), name)

    async def _every_loop(
        self, name: str, fn: Callable[[], Awaitable[object]], period: float
    ) -> None:
        while not self.stopping:
            await asyncio.sleep(period)
            try:
                await fn()
            except (StorageUnavailable, IndexUnavailable) as exc:
                log.warning("duty %s skipped: %s", name, exc, extra={"action": name})
            except Exception:  # logged; the duty runs again next period
                log.exception("duty %s failed", name, extra={"action": name})

    async def promote(self) -> None:
        while await self.manager.promote_due(1000) == 1000:
            pass

    async def expire_leases(self) -> int:
        total = 0
        while not self.stopping:
            now_ms = int(self.clock.now() * 1000)
            ids = await self.index.lease_take_expired(now_ms, 500)
            if not ids:
                return total
            # If PostgreSQL is down here, the leases are gone from Redis but the jobs still run in
            # PostgreSQL: the reconciler re-creates their leases, so they expire again later.
            total += await self.manager.requeue_lost(ids)
            if len(ids) < 500:
                return total
        return total

    async def check_epoch(self) -> None:
        current = await self.index.epoch()
        if current is not None and current == self.epoch:
            return
        log.warning("Redis lost its data (epoch %s -> %s): rebuilding from PostgreSQL",
                    self.epoch, current, extra={"action": "rebuild"})  # fmt: skip
        self.epoch = await self.index.epoch_init(uuid.uuid4().hex)
        self.rebuilds += 1
        await self.reconcile()

    async def reconcile(self) -> None:
        """Make Redis agree with PostgreSQL: leases for running jobs, ready marks for lanes."""
        async with self._lock:
            running = await self.store.job_running_all()
            now_ms = int(self.clock.now() * 1000)
            adopted = await self.index.lease_adopt(
                {
                    str(jid): now_ms + int(max(rf, self.dispatcher.min_lease) * 1000)
                    for jid, rf in running
                }
            )
            if adopted:
                log.warning("re-created %d lease(s) from PostgreSQL", adopted,
                            extra={"action": "reconcile"})  # fmt: skip
            lanes = await self.store.lanes_with_ready()
            ready = await self.index.ready_lanes()
            missing = [lane for lane in lanes if lane not in ready]
            if missing:
                await self.index.mark_ready(missing)
                self.dispatcher.lanes_ready(dict.fromkeys(missing))
