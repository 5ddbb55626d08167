"""Duties of the job-life features: maximum run time and log retention.

Every node runs them; both are safe to run on several nodes at once. Run time, once a second:
running attempts past their maximum run time (the job's, else its kind's) are marked as asked
(`yield_asked_at`; a row locked by a write is waited for) and the ask is broadcast, again every
second until the grace is over, so the node whose session holds the attempt sends its worker a
`yield` notification (a worker ignores a repeated ask); attempts still running a grace period after
the ask are revoked (`JobManager.revoke`, fenced by the lease token, so a revocation racing the
worker's own yield or ack changes nothing twice). Retention, once a minute: log lines older than the
retention are deleted in batches.
"""

from __future__ import annotations

import logging

from worcr_node.bus import Bus
from worcr_node.clock import Clock
from worcr_node.manager import JobManager
from worcr_node.messages import YieldAttempts
from worcr_node.scheduler import Duty
from worcr_node.store.life import LifeStore

__all__ = ["LifeDuties"]

log = logging.getLogger(__name__)

BATCH = 1000


class LifeDuties:
    def __init__(
        self,
        manager: JobManager,
        store: LifeStore,
        bus: Bus,
        clock: Clock,
        *,
        yield_grace: float,
        log_retention: float,
        run_time_every: float = 1.0,
        retention_every: float = 60.0,
    ) -> None:
        self.manager = manager
        self.store = store
        self.bus = bus
        self.clock = clock
        self.yield_grace = yield_grace
        self.log_retention = log_retention
        self.run_time_every = run_time_every
        self.retention_every = retention_every
        self.asked = 0
        self.revoked = 0
        self.deleted_lines = 0

    def duties(self) -> list[Duty]:
        """Run by the node's `DutyScheduler`, the first time at once."""
        return [
            Duty("run-time", self.run_time_every, self.run_time, at_once=True),
            Duty("retention", self.retention_every, self.retention, at_once=True),
        ]

    async def run_time(self) -> None:
        """Ask attempts past their run time to yield; ask again every tick those asked before
        (an ask is lost if the worker was reconnecting, or Redis failed); revoke those asked
        a grace period ago."""
        new = await self.store.run_time_ask_yield(BATCH)
        if new:
            self.asked += len(new)
            log.info("asking %d attempt(s) past their maximum run time to yield", len(new),
                     extra={"action": "ask_yield"})  # fmt: skip
        asked = await self.store.run_time_asked(BATCH, self.yield_grace)
        overdue = [(jid, token, run, grace) for jid, token, run, grace, over in asked if over]
        pending = {(jid, token) for jid, token, _, _, over in asked if not over} | set(new)
        if pending:
            await self.bus.publish(YieldAttempts(tuple((str(j), t) for j, t in pending)))
        if overdue:
            self.revoked += await self.manager.revoke(overdue)

    async def retention(self) -> None:
        cutoff = self.clock.now() - self.log_retention
        while True:  # in batches (the scheduler cancels it if the node stops)
            n = await self.store.logs_delete_before(cutoff, 10_000)
            self.deleted_lines += n
            if n < 10_000:
                break
