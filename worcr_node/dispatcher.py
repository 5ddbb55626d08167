"""The dispatcher: hands ready jobs to this node's connected workers.

For each worker with free credit it picks a lane (weight-proportional among the lanes holding
kinds the worker runs), claims a batch of ids from the lane's Redis window (which leases them),
turns them into running attempts in PostgreSQL (batched), and pushes them to the worker. It keeps
the windows topped up from PostgreSQL (refill) and learns of new ready lanes from the manager
(local enqueues) and from Redis pub/sub (other nodes).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from worcr_node.clock import Clock
from worcr_node.manager import JobManager
from worcr_node.service import Service
from worcr_node.store.pg import ClaimedJob, PgStore, StorageUnavailable
from worcr_node.store.redis_index import IndexUnavailable, RedisIndex

__all__ = ["Consumer", "Dispatcher", "LaneInfo"]

log = logging.getLogger(__name__)

CLAIM_LEASE_MS = 30_000  # lease between the Redis claim and the PostgreSQL update
MAX_CLAIM = 100


class Consumer(Protocol):
    """A connected worker as the dispatcher sees it."""

    worker_id: str
    kinds: frozenset[str]  # empty: any kind
    capacity: int
    reserved: int  # jobs being claimed for it right now

    @property
    def held(self) -> int: ...

    @property
    def open(self) -> bool: ...

    def deliver(self, jobs: Sequence[ClaimedJob]) -> bool:
        """Push jobs to the worker; False if the connection is gone."""
        ...


@dataclass(frozen=True, slots=True)
class LaneInfo:
    lane: str
    kind: str
    weight: float


class Dispatcher(Service):
    name = "dispatcher"

    def __init__(
        self,
        manager: JobManager,
        store: PgStore,
        index: RedisIndex,
        clock: Clock,
        rand: Callable[[], float] = random.random,
        min_lease: float = 0.0,
    ) -> None:
        super().__init__()
        self.min_lease = min_lease
        self.manager = manager
        self.store = store
        self.index = index
        self.clock = clock
        self.rand = rand
        self.consumers: list[Consumer] = []
        self.lanes: dict[str, LaneInfo] = {}  # lanes that may have ready work
        self._known: dict[str, LaneInfo] = {}  # every lane met (lanes never change)
        self._unknown: set[str] = set()
        self._refilling: set[str] = set()
        self._wake = asyncio.Event()
        self._rr = 0
        manager.on_ready = self.lanes_ready

    # -- inputs ------------------------------------------------------------------------------------

    def add(self, consumer: Consumer) -> None:
        if consumer not in self.consumers:
            self.consumers.append(consumer)
        self.wake()

    def remove(self, consumer: Consumer) -> None:
        if consumer in self.consumers:
            self.consumers.remove(consumer)

    def wake(self) -> None:
        self._wake.set()

    def lanes_ready(self, lanes: Sequence[str]) -> None:
        for lane in lanes:
            info = self._known.get(lane)
            if info is None:
                self._unknown.add(lane)
            else:
                self.lanes[lane] = info
        self.wake()

    # -- loop --------------------------------------------------------------------------------------

    async def start(self) -> None:
        self.spawn(self._loop(), "dispatch")
        self.spawn(self._listen(), "ready-listener")
        self.spawn(self._resync_loop(), "ready-resync")

    async def _loop(self) -> None:
        while not self.stopping:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
            try:
                async with asyncio.timeout(0.5):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self._learn_lanes()
                for _ in range(1000):  # bounded: give the loop a turn between passes
                    if not await self._pass():
                        break
                    await asyncio.sleep(0)
            except (StorageUnavailable, IndexUnavailable) as exc:
                log.warning("dispatch paused: %s", exc, extra={"action": "dispatch"})
                await asyncio.sleep(0.5)
            except Exception:  # one bad round must not stop dispatching for every worker
                log.exception("dispatch round failed", extra={"action": "dispatch"})
                await asyncio.sleep(0.5)

    async def _learn_lanes(self) -> None:
        if not self._unknown:
            return
        wanted, self._unknown = self._unknown, set()
        try:
            rows = await self.store.lane_get_many(sorted(wanted))
        except StorageUnavailable:
            self._unknown |= wanted
            raise
        for r in rows:
            info = LaneInfo(r["lane"], r["kind"], float(r["weight"]))
            self._known[info.lane] = info
            self.lanes[info.lane] = info

    async def _pass(self) -> bool:
        """One round over hungry consumers; True if any job was claimed."""
        progress = False
        consumers = [c for c in self.consumers if c.open and self._wants(c)]
        if not consumers or not self.lanes:
            return False
        self._rr = (self._rr + 1) % len(consumers)
        for c in consumers[self._rr :] + consumers[: self._rr]:
            if not self._wants(c):
                continue
            lane = self._pick(c)
            if lane is None:
                continue
            if await self._claim_for(c, lane):
                progress = True
        return progress

    @staticmethod
    def _wants(c: Consumer) -> bool:
        free = c.capacity - c.held - c.reserved
        return free > 0 and (free >= max(1, c.capacity // 4) or c.held + c.reserved == 0)

    def _pick(self, c: Consumer) -> LaneInfo | None:
        if c.kinds:
            lanes = [i for i in self.lanes.values() if i.kind in c.kinds]
        else:
            lanes = list(self.lanes.values())
        if not lanes:
            return None
        if len(lanes) == 1:
            return lanes[0]
        total = sum(i.weight for i in lanes)
        x = self.rand() * total
        for info in lanes:
            x -= info.weight
            if x < 0:
                return info
        return lanes[-1]

    async def _claim_for(self, c: Consumer, info: LaneInfo) -> bool:
        n = min(c.capacity - c.held - c.reserved, MAX_CLAIM)
        c.reserved += n
        handed_off = False
        try:
            deadline = int(self.clock.now() * 1000) + CLAIM_LEASE_MS
            res = await self.index.claim(info.lane, n, deadline)
            if not res.complete and res.left < self.index.window // 2:
                self._refill_soon(info.lane)
            if not res.ids:
                if res.complete:
                    self.lanes.pop(info.lane, None)
                return False
            self.spawn(self._finish_claim(c, res.ids, n), "claim")
            handed_off = True
            return True
        finally:
            if not handed_off:
                c.reserved -= n

    async def _finish_claim(self, c: Consumer, ids: list[str], reserved: int) -> None:
        try:
            jobs = await self.manager.claim(ids, c.worker_id)
        except StorageUnavailable as exc:
            log.warning("claim not written (%s); leases will expire", exc)
            jobs = []
        except Exception:  # the ids stay queued in PostgreSQL; their leases expire
            log.exception("claim failed", extra={"action": "claim"})
            jobs = []
        finally:
            c.reserved -= reserved
        if jobs:
            if not c.deliver(jobs):
                await self.manager.yield_([(j.id, j.token) for j in jobs])
                return
            self.wake()
            # The worker has the jobs already; now give each lease its exact length. A job
            # acked in between has no lease left, and lease_set never creates one (XX).
            now_ms = int(self.clock.now() * 1000)
            try:
                await self.index.lease_set(
                    {
                        str(j.id): now_ms + int(max(j.reserve_for, self.min_lease) * 1000)
                        for j in jobs
                    }
                )
            except IndexUnavailable:
                pass  # the provisional claim lease stands; heartbeats extend it
            return
        self.wake()

    def _refill_soon(self, lane: str) -> None:
        if lane not in self._refilling:
            self._refilling.add(lane)
            self.spawn(self._refill(lane), "refill")

    async def _refill(self, lane: str) -> None:
        try:
            version = await self.index.lane_version(lane)
            rows = await self.store.lane_ready_page(lane, self.index.window)
            left = await self.index.refill(lane, version, len(rows) < self.index.window, rows)
            if left:
                self.wake()
        except (StorageUnavailable, IndexUnavailable) as exc:
            log.warning("refill of lane %s failed: %s", lane, exc)
        except Exception:
            log.exception("refill of lane %s failed", lane, extra={"action": "refill"})
        finally:
            self._refilling.discard(lane)

    # -- other nodes -------------------------------------------------------------------------------

    async def _listen(self) -> None:
        await self.index.listen(
            self.index.ready_channel,
            lambda data: self.lanes_ready(data.split()),
            lambda: self.stopping,
        )

    async def _resync_loop(self) -> None:
        while not self.stopping:
            await asyncio.sleep(1.0)
            try:
                await self.resync()
            except IndexUnavailable:
                pass

    async def resync(self) -> None:
        """Adopt the cluster-wide ready set (covers missed pub/sub messages)."""
        ready = await self.index.ready_lanes()
        for lane in list(self.lanes):
            if lane not in ready and lane not in self._refilling:
                del self.lanes[lane]
        self.lanes_ready([lane for lane in ready if lane not in self.lanes])
