"""Duty `run-time`: the maximum run time of running attempts (the job's, else its kind's).

Once a second, attempts past it are marked as asked (`yield_asked_at`; a row locked by a write
is waited for) and the ask is broadcast (`YieldAttempts` on the bus), again every second until
the grace is over, so the node whose session holds the attempt sends its worker a `yield`
notification (a worker ignores a repeated ask); attempts still running a grace period after the
ask are revoked (`JobManager.revoke`, fenced by the lease token, so a revocation racing the
worker's own yield or ack changes nothing twice). Safe on several nodes at once.
"""

from __future__ import annotations

import logging

from worcr_node.bus import Bus
from worcr_node.manager import JobManager
from worcr_node.messages import YieldAttempts
from worcr_node.scheduler import Duty
from worcr_node.store.life import LifeStore

__all__ = ["RunTime"]

log = logging.getLogger(__name__)

BATCH = 1000


class RunTime:
    def __init__(
        self,
        manager: JobManager,
        store: LifeStore,
        bus: Bus,
        yield_grace: float,
        every: float = 1.0,
    ) -> None:
        self.manager = manager
        self.store = store
        self.bus = bus
        self.yield_grace = yield_grace
        self.every = every
        self.asked = 0
        self.revoked = 0

    def duty(self) -> Duty:
        return Duty("run-time", self.every, self.run, at_once=True)

    async def run(self) -> None:
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
