"""The duty scheduler: the node's periodic work, run in one place with one error policy.

A `Duty` is a name, a period and a coroutine function (promote due jobs, expire leases,
reconcile Redis with PostgreSQL, ask long attempts to yield, delete old log lines, ...); the
modules of `worcr_node/duties/` describe their duties (one per module: `duty()`) and
the `DutyScheduler` runs each on its own period. One error policy for all: storage unavailable
(PostgreSQL or Redis down) skips that run with a warning; any other exception is logged with its
traceback, counted, and the duty backs off (its period doubled per failure in a row, at most
`MAX_BACKOFF` seconds) — a failing duty never stops the node. Which node runs which duty will be
decided here too, when the nodes share their duties (the cluster).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from worcr_node.service import Service
from worcr_node.store.pg import StorageUnavailable
from worcr_node.store.redis_index import IndexUnavailable

__all__ = ["MAX_BACKOFF", "Duty", "DutyScheduler", "DutyStats"]

log = logging.getLogger(__name__)

MAX_BACKOFF = 60.0  # seconds between tries of a duty that keeps failing


@dataclass(frozen=True, slots=True)
class Duty:
    name: str
    every: float  # seconds between the end of one run and the start of the next
    run: Callable[[], Awaitable[object]]
    at_once: bool = False  # first run at start, not one period later


@dataclass(slots=True)
class DutyStats:
    runs: int = 0  # runs that ended well
    skipped: int = 0  # runs skipped because PostgreSQL or Redis was unavailable
    failures: int = 0  # runs that raised anything else
    failing: int = 0  # failures in a row, now


class DutyScheduler(Service):
    name = "duty-scheduler"

    def __init__(self, duties: Iterable[Duty]) -> None:
        super().__init__()
        self.duties = {d.name: d for d in duties}
        self.stats = {name: DutyStats() for name in self.duties}

    async def start(self) -> None:
        for duty in self.duties.values():
            self.spawn(self._loop(duty), duty.name)

    async def _loop(self, duty: Duty) -> None:
        delay = 0.0 if duty.at_once else duty.every
        while not self.stopping:
            await asyncio.sleep(delay)
            if self.stopping:
                return
            delay = await self.run_once(duty)

    async def run_once(self, duty: Duty) -> float:
        """Run the duty once under the error policy; the seconds until its next run."""
        stats = self.stats[duty.name]
        try:
            await duty.run()
        except (StorageUnavailable, IndexUnavailable) as exc:
            stats.skipped += 1
            log.warning("duty %s skipped: %s", duty.name, exc, extra={"action": duty.name})
            return duty.every
        except Exception:  # logged and backed off; the other duties go on
            stats.failures += 1
            stats.failing += 1
            delay: float = min(MAX_BACKOFF, duty.every * 2.0**stats.failing)
            log.exception("duty %s failed (%d in a row): next try in %.1f s", duty.name,
                          stats.failing, delay, extra={"action": duty.name})  # fmt: skip
            return delay
        stats.runs += 1
        stats.failing = 0
        return duty.every
