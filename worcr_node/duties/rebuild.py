"""Duties `reconcile` and `epoch`: Redis is an index that can be rebuilt from PostgreSQL.

The reconciler makes Redis agree with PostgreSQL: it re-marks lanes that have ready jobs,
re-creates the leases of running jobs that have none, and makes running jobs hold the
concurrency units their limits say (after a Redis loss, or a limit created while they ran: a
full pass, `reconcile(full=True)`, also recounts). The epoch watchdog notices that Redis lost its
data (restart, FLUSHALL, failover: the epoch is gone while PostgreSQL remembers one) and rebuilds
at once; limits then restart conservatively (limits.lua). Every node runs both; each step is safe
on several nodes at once (leases are adopted atomically by a Lua script). `start` learns the
epoch (rebuilding if needed) before the node takes work; `policy_changed` recounts the running
jobs against new concurrency limits, until it succeeds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

import msgpack

from worcr_node.bus import Bus
from worcr_node.clock import Clock
from worcr_node.dispatch.dispatcher import Dispatcher
from worcr_node.dispatch.rules import TagSet
from worcr_node.limits.model import LimitType
from worcr_node.messages import UnitsFreed
from worcr_node.scheduler import Duty
from worcr_node.service import Service
from worcr_node.store.pg import PgStore, StorageUnavailable
from worcr_node.store.redis_index import IndexUnavailable, LimitCheck, RedisIndex

__all__ = ["EPOCH", "RedisRebuild"]

log = logging.getLogger(__name__)

EPOCH = "redis_epoch"  # worcr_cluster key: the Redis epoch last seen


class RedisRebuild(Service):
    name = "redis-rebuild"

    def __init__(
        self,
        store: PgStore,
        index: RedisIndex,
        dispatcher: Dispatcher,
        clock: Clock,
        bus: Bus,
        *,
        reconcile_every: float = 5.0,
        epoch_every: float = 0.5,
    ) -> None:
        super().__init__()
        self.store = store
        self.index = index
        self.dispatcher = dispatcher
        self.clock = clock
        self.bus = bus
        self.reconcile_every = reconcile_every
        self.epoch_every = epoch_every
        self.epoch: str | None = None
        self.rebuilds = 0
        self._lock = asyncio.Lock()
        self._recount: asyncio.Task[None] | None = None
        self.started = False

    async def start(self) -> None:
        """Learn the Redis epoch (rebuilding Redis if it lost its data) before anything runs;
        the periodic duties themselves are run by the node's `DutyScheduler`."""
        await self.check_epoch()
        self.started = True

    def duties(self) -> list[Duty]:
        return [
            Duty("reconcile", self.reconcile_every, self.reconcile),
            Duty("epoch", self.epoch_every, self.check_epoch),
        ]

    async def check_epoch(self) -> None:
        """Notice that Redis lost its data (restart, FLUSHALL, failover) and rebuild from
        PostgreSQL. Until the epoch is back, the limit scripts admit nothing (they check it), so
        limits cannot hand out a second allowance before the running jobs are counted again."""
        current = await self.index.epoch()
        if current is not None and current == self.epoch:
            return
        if self.epoch is not None:  # Redis restarted or failed over: its old connections are dead
            await self.index.reset_connections()
        recorded = None
        if current is None:
            recorded = await self.store.cluster_get(EPOCH)
            if recorded is not None and self.epoch is None:
                # Nodes starting together on an empty Redis: another node may have set the
                # epoch in Redis (it does so before recording it in PostgreSQL) between our two
                # reads. Then nothing was lost.
                current = await self.index.epoch()
        if current is not None:  # first look, or another node rebuilt already
            if self.epoch is not None:
                self.rebuilds += 1
            self.epoch = current
            await self.reconcile(full=True)
            return
        lost = recorded is not None or self.epoch is not None
        if lost:
            log.warning("Redis lost its data (epoch %s gone): rebuilding from PostgreSQL; limits "
                        "restart conservatively", recorded or self.epoch,
                        extra={"action": "rebuild"})  # fmt: skip
            self.rebuilds += 1
        await self.reconcile(full=True)  # leases and concurrency units first
        if lost:
            await self.index.mark_recovered()
        fresh = uuid.uuid4().hex
        self.epoch = await self.index.epoch_init(fresh)
        if self.epoch == fresh:
            await self.store.cluster_set(EPOCH, fresh)

    def policy_changed(self) -> None:
        """Limits may have changed: count the running jobs against them again, soon."""
        if self._recount is None or self._recount.done():
            self._recount = self.spawn(self._recount_now(), "recount")

    async def _recount_now(self) -> None:
        """Until it succeeds: new concurrency limits admit nothing before it has."""
        while not self.stopping:
            try:
                await self.reconcile(full=True)
                if not self.dispatcher.uncounted:
                    return
                continue  # the limits changed again meanwhile: count into the new ones
            except (StorageUnavailable, IndexUnavailable) as exc:
                log.warning("recount failed, retrying: %s", exc, extra={"action": "recount"})
            except Exception:
                log.exception("recount failed, retrying", extra={"action": "recount"})
            await asyncio.sleep(1.0)

    async def reconcile(self, full: bool = False) -> None:
        """Make Redis agree with PostgreSQL: leases for running jobs (and the concurrency units
        their limits say they hold), ready marks for lanes."""
        async with self._lock:
            await self._adopt(full)
            lanes = await self.store.lanes_with_ready()
            ready = await self.index.ready_lanes()
            missing = [lane for lane in lanes if lane not in ready]
            if missing:
                await self.index.mark_ready(missing)
                self.dispatcher.lanes_ready(dict.fromkeys(missing))

    async def _adopt(self, full: bool) -> None:
        # Only a full pass (start, Redis loss, limit change) reads what a recount needs (args of
        # every running job): in between, units are taken at claim and released with the lease.
        limits = self.dispatcher.limits
        spaces = limits.concurrency_spaces()
        counts = full
        now_ms = int(self.clock.now() * 1000)
        holds: dict[str, list[tuple[LimitCheck, int]]] = {}
        if counts:
            rows = await self.store.job_running_for_recount()
            workers = await self._worker_tags()
            by_id = {x.id: x for x in limits.limits}
            running = []
            for r in rows:
                jid = str(r["id"])
                running.append((jid, float(r["reserve_for"])))
                tags = TagSet(r["tags"])
                args = msgpack.unpackb(r["args"], raw=False, strict_map_key=False)
                part = r["partition"]
                part = json.loads(part) if isinstance(part, str) else part
                mine = [(c, 1) for c in await limits.for_job(r["kind"], r["tenant"], tags, args,
                                                             workers.get(r["worker_id"]), part,
                                                             jid)]  # fmt: skip
                for item in r["holds"]:  # limit id, key (any text), units
                    limit_id, rest = item.split("\x1f", 1)
                    key, units = rest.rsplit("\x1f", 1)
                    lim = by_id.get(limit_id)
                    if lim is not None and lim.type == LimitType.CONCURRENCY:
                        mine.append((limits.check(lim, key), int(units)))
                if mine:
                    holds[jid] = mine
        else:
            running = [(str(jid), rf) for jid, rf in await self.store.job_running_all()]
        created = await self.index.lease_adopt(
            {jid: now_ms + int(max(rf, self.dispatcher.min_lease) * 1000) for jid, rf in running},
            holds,
            now_ms,
        )
        if created:
            # A job that ended between the read above and the adopt got a lease it must not
            # keep (and units it must not hold): give those back now.
            still = {str(i) for i in await self.store.job_running_still(
                [uuid.UUID(i) for i in created])}  # fmt: skip
            ended = [i for i in created if i not in still]
            freed = await self.index.lease_release(ended)
            if freed:
                await self.bus.publish(UnitsFreed(tuple(freed)))
            if still:
                log.warning("re-created %d lease(s) from PostgreSQL", len(still),
                            extra={"action": "reconcile"})  # fmt: skip
        await self.store.hold_sweep()
        if counts:
            self.dispatcher.counted(spaces)

    async def _worker_tags(self) -> dict[str, TagSet]:
        """Tags of known workers (this node's, then the registry's); unknown ones are absent."""
        out: dict[str, TagSet] = {}
        try:
            for wid, raw in (await self.index.workers_all()).items():
                try:
                    out[wid] = TagSet(json.loads(raw).get("tags", []))
                except (ValueError, AttributeError, TypeError):
                    continue
        except IndexUnavailable:
            pass
        for c in self.dispatcher.consumers:
            out[c.worker_id] = TagSet(c.tags)
        return out
