"""The dispatcher: hands ready jobs to this node's connected workers.

Workers with the same kinds and tags form a class; each class has a `ClassView` (picker.py) of
the ready lanes it may run, at their effective weights (lane weight x rule factors; forbidden
lanes are left out), arranged by the fairness strategy. For each worker with free credit the
dispatcher picks a lane from its class view in O(log n), claims a batch of ids from the lane's
Redis window (which leases them), turns them into running attempts in PostgreSQL (batched), and
pushes them to the worker. It keeps the windows topped up from PostgreSQL (refill), learns of new
ready lanes from the manager (local enqueues) and from Redis pub/sub (other nodes), and rebuilds
the class views when the dispatch policy changes.

Job limits: a (lane, class) pair may take from limits (limits/compiled.py); its claims then go
through `claim_limited`, which takes only what every limit admits. A lane whose limit is full is
taken out of that class's view and parked (parking.py) until the limit may admit again, so other
lanes and tenants go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from worcr_node.clock import Clock
from worcr_node.dispatch.fairness import Strategy
from worcr_node.dispatch.parking import Parking
from worcr_node.dispatch.picker import ClassView
from worcr_node.dispatch.policy import Policy
from worcr_node.dispatch.rules import (
    JOB_SIDE_ACTIONS,
    Rule,
    TagSet,
    Verdict,
    evaluate,
    relevant_tags,
    worker_tag_relevance,
)
from worcr_node.functions.judge import LaneJudge, judged
from worcr_node.functions.runner import FunctionRunner
from worcr_node.limits.compiled import CompiledLimits
from worcr_node.manager import JobManager
from worcr_node.service import Service
from worcr_node.store.pg import ClaimedJob, PgStore, StorageUnavailable
from worcr_node.store.redis_index import ClaimResult, IndexUnavailable, LimitCheck, RedisIndex

__all__ = ["MISFILED", "ClassKey", "Consumer", "Dispatcher", "LaneInfo"]

log = logging.getLogger(__name__)

CLAIM_LEASE_MS = 30_000  # lease between the Redis claim and the PostgreSQL update
MAX_CLAIM = 100
MAX_LANES_PER_CLAIM = 8  # lanes one worker's claim may draw from when lanes run short
MIN_WINDOW = 16
REGISTRY_EVERY = 10  # seconds between refreshes of this node's workers in the registry
IDLE_LANES = 20_000  # lanes with no ready work remembered (~1.2 KiB each); then forgotten
FORGET_EVERY = 10  # seconds between checks of that bound
DOUBT_EVERY = 2  # seconds between second looks at verdicts built on a passing failure
MISFILED = "\x00misfiled:"  # + lane, park key: the lane is not split by an args path a limit
# keys on (its jobs were enqueued before the limit): the duties split it (duties/lane_split.py)
REBUILDING = "\x00rebuilding"  # park key: Redis lost its data, limits wait for the rebuild
BUCKET_BATCH_MS = 100  # a dry token bucket's lanes come back when this much rate has refilled it
ClassKey = tuple[frozenset[str], frozenset[str]]  # (kinds, tags); empty kinds: any kind
Claimed = tuple[str, str, int | None]  # (job id, lane, admitted at in Redis ms)


class Consumer(Protocol):
    """A connected worker as the dispatcher sees it."""

    worker_id: str
    kinds: frozenset[str]  # empty: any kind
    tags: list[str]
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
    tenant: str
    tags: TagSet
    weight: float
    partition: Mapping[str, str] | None = None  # args path -> value (job limits split by it)


@dataclass(slots=True)
class _Class:
    key: ClassKey
    tags: TagSet
    view: ClassView
    members: int = 0
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    checks: dict[str, tuple[LimitCheck, ...] | None] = field(default_factory=dict)


class Dispatcher(Service):
    name = "dispatcher"

    def __init__(
        self,
        manager: JobManager,
        store: PgStore,
        index: RedisIndex,
        clock: Clock,
        min_lease: float = 0.0,
        window_budget: int = 100_000,
        functions: FunctionRunner | None = None,
    ) -> None:
        super().__init__()
        self.functions = functions or FunctionRunner()
        self.min_lease = min_lease
        self.manager = manager
        self.store = store
        self.index = index
        self.clock = clock
        self.window_cap = index.window
        self.window_budget = window_budget
        self.policy = Policy()
        self.consumers: list[Consumer] = []
        self.lanes: dict[str, LaneInfo] = {}  # lanes that may have ready work
        self.heads: dict[str, int] = {}  # lane -> seq of its oldest ready job, as last seen
        self.classes: dict[ClassKey, _Class] = {}
        self._keys: dict[int, ClassKey] = {}  # id(consumer) -> its class
        self._relevance = worker_tag_relevance(())
        # lanes met (lanes never change): the ready ones and up to `idle_lanes` others, whose
        # descriptions are read again from PostgreSQL if they come back after being forgotten
        self._known: dict[str, LaneInfo] = {}
        self.idle_lanes = IDLE_LANES
        self._unknown: dict[str, int | None] = {}
        self._refilling: dict[str, asyncio.Task[None]] = {}
        self._claims: set[asyncio.Task[None]] = set()  # claimed jobs on their way to a worker
        self._orphans: set[asyncio.Future[list[ClaimedJob]]] = set()  # claims cut by stop()
        self._draining = False  # the node stops: no new claims (drain)
        self._idle = asyncio.Event()  # no dispatch pass under way
        self._idle.set()
        self._wake = asyncio.Event()
        self._rr = 0
        # fewest_running: PostgreSQL's count per tenant, plus this node's changes since
        self.running_base: dict[str, int] = {}
        self.running_delta: Counter[str] = Counter()
        self._job_tenant: dict[Any, str] = {}
        # job limits
        self.limits = CompiledLimits((), index.limit_keys, self.functions)
        self.parking: Parking[ClassKey] = Parking(self._put_back, self.wake)
        # Concurrency limits whose running jobs have not been counted yet (new, or re-keyed):
        # their lanes wait (parked as REBUILDING) until the duties' recount says so.
        self._counted: set[str] = set()
        self._uncounted: set[str] = set()
        self.misfiled: set[str] = set()  # lanes to split (repartition duty)
        # embedded functions: verdicts cached per (lane, class), load shedding per lane (the
        # runner remembers the functions' answers themselves)
        self._uses_functions = False
        self._shed: dict[str, str | None] = {}  # lane -> "hold" | "discard" | None
        self._shed_rules: tuple[Rule, ...] = ()  # enabled hold, discard and shed rules
        # (class, lane) verdicts built on a fallback for a failure that may pass (a function
        # timed out, ran out of memory, was tripped): judged again every DOUBT_EVERY seconds
        self._doubtful: dict[tuple[ClassKey, str], bool] = {}  # -> its own call hit the cap
        # (class, lane) pairs whose verdict waits for functions' answers (asked in the
        # background), by answer key: not offered until the runner has it, then judged again
        self._pending: dict[Any, set[tuple[ClassKey, str]]] = {}
        # lanes heard of while a resync's read of the ready set is under way: it keeps them
        self._heard_in_resync: set[str] | None = None
        manager.functions = self.functions
        manager.shed = self.shed_settled
        manager.on_done = self.jobs_done

    # -- inputs ------------------------------------------------------------------------------------

    def add(self, consumer: Consumer) -> None:
        if consumer not in self.consumers:
            self.consumers.append(consumer)
            self._join(consumer)
            self.spawn(self._register([consumer]), "register")
        self.wake()

    def remove(self, consumer: Consumer) -> None:
        if consumer in self.consumers:
            self.consumers.remove(consumer)
            if not any(c.worker_id == consumer.worker_id for c in self.consumers):
                self.spawn(self._unregister(consumer.worker_id), "unregister")
            key = self._keys.pop(id(consumer))
            cls = self.classes.get(key)
            if cls is not None:
                cls.members -= 1
                if cls.members <= 0:
                    del self.classes[key]

    def wake(self) -> None:
        self._wake.set()

    def lanes_ready(self, lanes: Mapping[str, int | None]) -> None:
        """Lanes that got ready work, with the seq of their oldest new job when known."""
        if self._heard_in_resync is not None:
            self._heard_in_resync.update(lanes)
        for lane, head in lanes.items():
            info = self._known.get(lane)
            if info is None:
                self._unknown[lane] = head
            else:
                self._add_lane(info, head)
        self.wake()

    def jobs_done(self, ids: Collection[Any]) -> None:
        """Jobs this node delivered stopped running (fewest_running bookkeeping)."""
        for jid in ids:
            tenant = self._job_tenant.pop(jid, None)
            if tenant is not None:
                self.running_delta[tenant] -= 1
                self._running_changed(tenant)

    def set_policy(self, policy: Policy) -> None:
        """A new rule set, limit set or fairness setting: regroup workers into classes, rebuild
        the views, forget what was parked (limits may have changed: each lane is tried again)."""
        self.policy = policy
        self.functions.set_functions(policy.functions)
        self._uses_functions = any(r.function is not None for r in policy.rules)
        self._shed.clear()
        self._doubtful.clear()
        self._pending.clear()
        self._shed_rules = tuple(r for r in policy.rules
                                 if r.enabled and r.action in JOB_SIDE_ACTIONS)  # fmt: skip
        self.limits = CompiledLimits(policy.limits, self.index.limit_keys, self.functions)
        self.manager.partition_paths = self.limits.paths
        self.manager.partition = self.limits.partition
        self.manager.early_release = self.limits.holds_units
        spaces = self.limits.concurrency_spaces()
        self._counted &= spaces
        self._uncounted = spaces - self._counted
        self._relevance = worker_tag_relevance((*policy.rules, *self.limits.matches))
        self.parking.clear()
        self.misfiled.clear()
        self.classes.clear()
        self._keys.clear()
        for c in self.consumers:
            self._join(c)
        self.wake()

    # -- lanes and classes -------------------------------------------------------------------------

    def running(self, tenant: str) -> int:
        return self.running_base.get(tenant, 0) + self.running_delta.get(tenant, 0)

    def _running_changed(self, tenant: str) -> None:
        for cls in self.classes.values():
            cls.view.running_changed(tenant)

    def key_for(self, kinds: Collection[str], tags: Collection[str]) -> ClassKey:
        """Workers with the same kinds and the same tags *that some rule looks at* form a class:
        a hostname tag no rule mentions does not split workers into separate pick structures."""
        return frozenset(kinds), relevant_tags(tags, self._relevance)

    def _join(self, c: Consumer) -> None:
        key = self._keys[id(c)] = self.key_for(c.kinds, c.tags)
        cls = self.classes.get(key)
        if cls is None:
            view = ClassView(self.policy.fairness, self.running)
            cls = self.classes[key] = _Class(key, TagSet(key[1]), view)
            self._fill(cls)
        cls.members += 1

    def new_view(self, key: ClassKey) -> ClassView:
        """A class view built now from the ready lanes (explain for a class with no worker)."""
        cls = _Class(key, TagSet(key[1]), ClassView(self.policy.fairness, self.running))
        self._fill(cls)
        return cls.view

    def _fill(self, cls: _Class) -> None:
        cls.view = ClassView(self.policy.fairness, self.running)
        cls.verdicts.clear()
        cls.checks.clear()
        for info in self.lanes.values():
            self._offer(cls, info)

    def verdict(
        self, info: LaneInfo, kinds: frozenset[str], tags: TagSet, judge: LaneJudge | None = None
    ) -> Verdict | None:
        """None if the class does not run the lane's kind at all."""
        if kinds and info.kind not in kinds:
            return None
        if judge is None and self._uses_functions:
            judge = self.judge(info, kinds, tags)
        return evaluate(self.policy.rules, info.kind, info.tenant, info.tags, tags, judge)

    def judge(self, info: LaneInfo, kinds: Collection[str], tags: TagSet) -> LaneJudge:
        """Asks the function rules' functions about a (lane, worker class) pair."""
        return LaneJudge(self.functions, info.lane, info.kind, info.tenant, info.tags.tags,
                         info.weight, kinds, tags.tags)  # fmt: skip

    def shed(
        self, lane: str, kind: str, tenant: str, tags: Collection[str], weight: float
    ) -> str | None:
        """ "discard" or "hold" if load-shedding rules (hold, discard, shed) take the lane's
        jobs, whatever the worker; cached per lane until the policy changes. While a shed
        function's answer is being asked: "hold" (not kept)."""
        if not self._shed_rules:
            return None
        if lane in self._shed:
            return self._shed[lane]
        tagset = TagSet(tags)
        judge = self.judge(LaneInfo(lane, kind, tenant, tagset, weight), (), TagSet(()))
        v = evaluate(self._shed_rules, kind, tenant, tagset, TagSet(()), judge)
        return self._shed_answer(lane, v, judge)

    async def shed_settled(
        self, lane: str, kind: str, tenant: str, tags: Collection[str], weight: float
    ) -> str | None:
        """`shed`, once every function it asks has answered (the enqueue path)."""
        if not self._shed_rules or lane in self._shed:
            return self._shed.get(lane)
        tagset = TagSet(tags)
        info = LaneInfo(lane, kind, tenant, tagset, weight)
        rules = self._shed_rules
        v, judge = await judged(
            lambda: self.judge(info, (), TagSet(())),
            lambda j: evaluate(rules, kind, tenant, tagset, TagSet(()), j),
        )
        return self._shed_answer(lane, v, judge)

    def _shed_answer(self, lane: str, v: Verdict, judge: LaneJudge) -> str | None:
        out = "discard" if v.discarded_by else "hold" if v.held_by else None
        if judge.pending:
            return "hold"  # not kept: asked again next time
        if judge.doubtful:
            return out  # not kept: asked again next time
        if len(self._shed) > 100_000:  # bounded; recomputed on demand
            self._shed.clear()
        self._shed[lane] = out
        return out

    def forget_lane(self, lane: str) -> None:
        """A lane emptied behind the dispatcher's back (load shedding): it comes back with its
        next ready job."""
        self._drop_lane(lane)

    def lanes_to_discard(self) -> list[str]:
        """Ready lanes whose jobs discard rules take (the duties cancel their jobs)."""
        return [
            lane
            for lane, i in self.lanes.items()
            if self.shed(lane, i.kind, i.tenant, i.tags.tags, i.weight) == "discard"
        ]

    def _offer(self, cls: _Class, info: LaneInfo) -> None:
        v = cls.verdicts.get(info.lane)
        if v is None:
            judge = self.judge(info, cls.key[0], cls.tags) if self._uses_functions else None
            v = self.verdict(info, cls.key[0], cls.tags, judge)
            if v is None:
                return
            if judge is not None and judge.pending:  # judged again when the answers come
                for key in judge.waiting:
                    self._pending.setdefault(key, set()).add((cls.key, info.lane))
                return
            cls.verdicts[info.lane] = v
            if judge is not None and judge.doubtful:  # a function's fallback for a timeout...
                self._doubtful[(cls.key, info.lane)] = judge.hit_cap
        if v.allowed and not self.parking.is_parked(cls.key, info.lane):
            head = self.heads.get(info.lane, 0)
            cls.view.add(info.lane, info.kind, info.tenant, info.weight * v.factor, head)

    def _add_lane(self, info: LaneInfo, head: int | None) -> None:
        if head is not None and (
            info.lane not in self.lanes or head < self.heads.get(info.lane, head + 1)
        ):
            self.heads[info.lane] = head
        new = info.lane not in self.lanes
        self.lanes[info.lane] = info
        for cls in self.classes.values():
            if new:
                self._offer(cls, info)
            elif head is not None:
                cls.view.set_head(info.lane, self.heads[info.lane])
        if new:
            self._resize_windows()

    def _drop_lane(self, lane: str) -> None:
        self.heads.pop(lane, None)
        self.parking.forget_lane(lane, self.classes)
        self.misfiled.discard(lane)
        if self.lanes.pop(lane, None) is not None:
            for cls in self.classes.values():
                cls.view.remove(lane)
            self._resize_windows()

    def _resize_windows(self) -> None:
        """Keep all windows together within the budget: many ready lanes, smaller windows."""
        per_lane = self.window_budget // max(1, len(self.lanes))
        self.index.window = max(MIN_WINDOW, min(self.window_cap, per_lane))

    # -- loop --------------------------------------------------------------------------------------

    async def start(self) -> None:
        self.spawn(self._loop(), "dispatch")
        self.spawn(self._resync_loop(), "ready-resync")
        self.spawn(self._running_loop(), "running-counts")
        self.spawn(self._answers_loop(), "function-answers")

    async def _loop(self) -> None:
        while not self.stopping:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
            try:
                async with asyncio.timeout(0.5):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            if self._draining:
                continue
            self._idle.clear()
            try:
                await self._learn_lanes()
                for _ in range(1000):  # bounded: give the loop a turn between passes
                    if self._draining or not await self._pass():
                        break
                    await asyncio.sleep(0)
            except (StorageUnavailable, IndexUnavailable) as exc:
                log.warning("dispatch paused: %s", exc, extra={"action": "dispatch"})
                await asyncio.sleep(0.5)
            except Exception:  # one bad round must not stop dispatching for every worker
                log.exception("dispatch round failed", extra={"action": "dispatch"})
                await asyncio.sleep(0.5)
            finally:
                self._idle.set()

    async def drain(self) -> None:
        """The node stops: claim nothing more, and see every claim under way to its end (pushed
        to its worker while the connection is still open, or given back at once as `yielded`
        when it cannot be), so no job is left running for a worker that never got it. The
        caller bounds the wait; `stop` gives back what a claim cut short there wrote."""
        self._draining = True
        self._wake.set()
        await self._idle.wait()
        while self._claims:
            await asyncio.wait(set(self._claims))

    async def stop(self) -> None:
        await super().stop()
        # Claims cut short by the stop (drain ran out of time): their jobs never reached a
        # worker, so they go back at once, as yielded, instead of waiting for their leases.
        orphans, self._orphans = self._orphans, set()
        for claim in orphans:
            try:
                jobs = await asyncio.wait_for(claim, 5)
                if jobs:
                    await self.manager.yield_([(j.id, j.token) for j in jobs])
            except Exception as exc:  # their leases expire instead
                log.warning("claim cut by shutdown not given back: %s", exc,
                            extra={"action": "drain"})  # fmt: skip

    async def _learn_lanes(self) -> None:
        if not self._unknown:
            return
        wanted, self._unknown = self._unknown, {}
        try:
            rows = await self.store.lane_get_many(sorted(wanted))
        except StorageUnavailable:
            wanted.update(self._unknown)
            self._unknown = wanted
            raise
        for r in rows:
            part = r["partition"]
            info = LaneInfo(r["lane"], r["kind"], r["tenant"], TagSet(r["tags"]),
                            float(r["weight"]),
                            json.loads(part) if isinstance(part, str) else part)  # fmt: skip
            self._known[info.lane] = info
            self._add_lane(info, wanted[info.lane])

    async def _pass(self) -> bool:
        """One round over hungry consumers; True if any job was claimed."""
        progress = False
        consumers = [c for c in self.consumers if c.open and self._wants(c)]
        if not consumers or not self.lanes:
            return False
        self._rr = (self._rr + 1) % len(consumers)
        for c in consumers[self._rr :] + consumers[: self._rr]:
            key = self._keys.get(id(c))
            if key is None or not c.open or not self._wants(c):
                continue  # gone during this round (its connection closed, or a new policy)
            cls = self.classes.get(key)
            if cls is not None and len(cls.view) and await self._claim_for(c, cls):
                progress = True
        return progress

    @staticmethod
    def _wants(c: Consumer) -> bool:
        free = c.capacity - c.held - c.reserved
        return free > 0 and (free >= max(1, c.capacity // 4) or c.held + c.reserved == 0)

    async def _claim_for(self, c: Consumer, cls: _Class) -> bool:
        """Fill the worker's free credit: pick a lane, claim from it, and while lanes run short
        (many small tenants) pick again, up to MAX_LANES_PER_CLAIM lanes. Each lane is charged
        what it gave, so fairness is as if every lane were a separate turn; the worker gets one
        push and one lease update for the lot."""
        n = min(c.capacity - c.held - c.reserved, MAX_CLAIM)
        c.reserved += n
        ids: list[Claimed] = []
        parked = False
        try:
            for _ in range(MAX_LANES_PER_CLAIM):
                lane = cls.view.pick()
                if lane is None:
                    break
                got = await self._claim_lane(cls, lane, n - len(ids))
                if got is None:
                    parked = True  # the view changed: worth another pass
                    continue
                ids += got
                if len(ids) >= n:
                    break
            if ids:
                claim = self.spawn(self._finish_claim(c, ids, n), "claim")
                self._claims.add(claim)
                claim.add_done_callback(self._claims.discard)
            return bool(ids) or parked
        finally:
            if not ids:
                c.reserved -= n

    async def _claim_lane(self, cls: _Class, lane: str, n: int) -> list[Claimed] | None:
        """Claim up to n ids from one lane for a class; None if the lane got parked instead."""
        info = self.lanes.get(lane)
        checks = self._checks(cls, info) if info is not None else ()
        if self._known_full(cls, lane, checks) or checks is None:
            return None
        deadline = int(self.clock.now() * 1000) + CLAIM_LEASE_MS
        res = await self._claim_once(lane, n, deadline, checks)
        if res.blocker is None and not res.ids and not res.complete:
            # A cold window (new backlog, Redis restarted): page it in now rather than let
            # younger lanes jump ahead, then try once more.
            await asyncio.shield(self._refill_soon(lane))
            res = await self._claim_once(lane, n, deadline, checks)
        if res.blocker is not None:
            check = None if res.blocker < 0 else checks[res.blocker]
            key = REBUILDING if check is None else check.state_key
            self._block(key, res.retry_ms, check)
            self._park(cls, lane, key)
            return None
        for i, retry in res.exhausted:
            self._block(checks[i].state_key, retry, checks[i])
        if not res.complete and res.left < self.index.window // 2:
            self._refill_soon(lane)
        if res.head >= 0 and lane in self.lanes:
            self.heads[lane] = res.head
            for other in self.classes.values():
                other.view.set_head(lane, res.head)
        if res.ids:
            cls.view.charge(lane, len(res.ids))
        if not res.left and (res.complete or not res.ids):
            # Empty window: gone for good if complete, else (a refill found nothing claimable)
            # parked until a refill or a push brings it back. An incomplete lane that just gave
            # ids stays: its refill is under way, and the next pick waits for it.
            self._drop_lane(lane)
        admitted = res.now_ms if checks else None
        return [(i, lane, admitted) for i in res.ids]

    async def _claim_once(
        self, lane: str, n: int, deadline: int, checks: tuple[LimitCheck, ...]
    ) -> ClaimResult:
        if checks:
            return await self.index.claim_limited(lane, n, deadline, checks)
        return await self.index.claim(lane, n, deadline)

    # -- job limits: parking -----------------------------------------------------------------------

    def _known_full(self, cls: _Class, lane: str, checks: tuple[LimitCheck, ...] | None) -> bool:
        """Park the lane without a script call if it is misfiled or a limit is known full."""
        if checks is None:
            self.misfiled.add(lane)
            self._park(cls, lane, MISFILED + lane)
            return True
        for check in checks:
            if check.space in self._uncounted:
                self._park(cls, lane, REBUILDING)
                return True
            if self.parking.is_full(check.state_key):
                self._park(cls, lane, check.state_key)
                return True
        return False

    @property
    def uncounted(self) -> bool:
        return bool(self._uncounted)

    def counted(self, spaces: Collection[str]) -> None:
        """The running jobs were counted into these concurrency limits (a full reconcile)."""
        self._counted |= set(spaces)
        self._uncounted -= set(spaces)
        self.parking.unpark(REBUILDING, None)

    def lane_info(self, lane: str) -> LaneInfo | None:
        return self._known.get(lane)

    def _checks(self, cls: _Class, info: LaneInfo) -> tuple[LimitCheck, ...] | None:
        if info.lane in cls.checks:
            return cls.checks[info.lane]
        checks = self.limits.for_lane(info.kind, info.tenant, info.tags, info.partition, cls.tags)
        cls.checks[info.lane] = checks
        return checks

    def _park(self, cls: _Class, lane: str, key: str) -> None:
        cls.view.remove(lane)
        self.parking.park(cls.key, lane, key)

    def _block(self, key: str, retry_ms: int, check: LimitCheck | None) -> None:
        """Park behind `key` until it admits again, and say how many units it admits then: a
        fixed window's whole allowance; a token bucket's tokens of the next BUCKET_BATCH_MS, up to
        half its burst (the other half absorbs the dispatcher's lateness, so no token is lost):
        one claim, transaction and push for several jobs instead of one per token; else one
        (an expired entry of a sliding window)."""
        units = 1
        if check is not None and retry_ms >= 0:
            if check.algo == "f":
                units = check.limit
            elif check.algo == "b":
                per_token = check.period_ms / check.limit
                units = max(1, min(check.burst // 2, int(BUCKET_BATCH_MS / per_token)))
                retry_ms += round((units - 1) * per_token)
        self.parking.block(key, retry_ms, units)

    def _put_back(self, class_key: ClassKey, lane: str) -> bool:
        cls = self.classes.get(class_key)
        info = self.lanes.get(lane)
        if cls is None or info is None:
            return False
        self._offer(cls, info)
        return True

    def unpark(self, key: str, budget: int | None) -> None:
        self.parking.unpark(key, budget)

    def freed(self, keys: Sequence[str]) -> None:
        """Units of these limit keys (one entry per unit) were released, by this node or another
        (`UnitsFreed` on the bus)."""
        self.parking.freed(list(keys))

    async def _finish_claim(self, c: Consumer, ids: list[Claimed], reserved: int) -> None:
        claim = asyncio.ensure_future(self.manager.claim(ids, c.worker_id))
        try:
            jobs = await asyncio.shield(claim)
        except asyncio.CancelledError:  # the node stops: what the claim wrote is given back
            self._orphans.add(claim)
            raise
        except StorageUnavailable as exc:
            log.warning("claim not written (%s); leases will expire", exc)
            jobs = []
        except Exception:  # the ids stay queued in PostgreSQL; their leases expire
            log.exception("claim failed", extra={"action": "claim"})
            jobs = []
        finally:
            c.reserved -= reserved
        if jobs:
            self._count_running(jobs)
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

    def _count_running(self, jobs: Sequence[ClaimedJob]) -> None:
        if not self._uses_running_counts():
            return
        if len(self._job_tenant) > 200_000:  # acks that went to other nodes: forget, resync
            self._job_tenant.clear()
        touched = set()
        for j in jobs:
            self._job_tenant[j.id] = j.tenant
            self.running_delta[j.tenant] += 1
            touched.add(j.tenant)
        for tenant in touched:
            self._running_changed(tenant)

    def _refill_soon(self, lane: str) -> asyncio.Task[None]:
        task = self._refilling.get(lane)
        if task is None:
            task = self._refilling[lane] = self.spawn(self._refill(lane), "refill")
        return task

    async def _refill(self, lane: str) -> None:
        head = None
        try:
            version = await self.index.lane_version(lane)
            rows = await self.store.lane_ready_page(lane, self.index.window)
            left = await self.index.refill(lane, version, len(rows) < self.index.window, rows)
            if left and rows:
                head = rows[0][1]
        except (StorageUnavailable, IndexUnavailable) as exc:
            log.warning("refill of lane %s failed: %s", lane, exc)
        except Exception:
            log.exception("refill of lane %s failed", lane, extra={"action": "refill"})
        finally:
            self._refilling.pop(lane, None)
        if head is not None:
            self.lanes_ready({lane: head})

    # -- worker registry ---------------------------------------------------------------------------

    async def _register(self, consumers: Sequence[Consumer]) -> None:
        now = self.clock.now()
        entries = {
            c.worker_id: json.dumps(
                {
                    "node": self.manager.node_id,
                    "tags": list(c.tags),
                    "kinds": sorted(c.kinds),
                    "capacity": c.capacity,
                    "seen": now,
                }
            )
            for c in consumers
        }
        with contextlib.suppress(IndexUnavailable):
            await self.index.workers_put(entries)

    async def _unregister(self, worker_id: str) -> None:
        with contextlib.suppress(IndexUnavailable):
            await self.index.workers_forget([worker_id])

    # -- other nodes -------------------------------------------------------------------------------

    async def _resync_loop(self) -> None:
        turns = 0
        while not self.stopping:
            await asyncio.sleep(1.0)
            turns += 1
            try:
                # A full read of the ready set costs O(lanes): with many lanes, do it less often
                # (pub/sub carries the news; resync only covers missed messages).
                if turns % max(1, min(10, len(self.lanes) // 1000)) == 0:
                    await self.resync()
                if turns % FORGET_EVERY == 0:
                    self.forget_idle_lanes()
                if turns % REGISTRY_EVERY == 0 and self.consumers:
                    await self._register(self.consumers)
                if turns % DOUBT_EVERY == 0 and self._doubtful:
                    try:
                        self.judge_again()
                    except Exception:  # never let this end the loop
                        log.exception("judging doubtful verdicts again failed")
            except IndexUnavailable:
                pass

    @property
    def remembered_lanes(self) -> int:
        """Lanes this node knows the kind, tenant, tags and weight of (with or without work)."""
        return len(self._known)

    def forget_idle_lanes(self) -> int:
        """Keep memory bounded with many tenants: once more than `idle_lanes` lanes without
        ready work are remembered, forget them (and each class's cached verdicts and limit
        checks for them). Returns how many were forgotten."""
        keep = set(self.lanes) | self.misfiled | set(self._refilling)
        idle = len(self._known) - len(keep & self._known.keys())
        if idle <= self.idle_lanes:
            return 0
        self._known = {lane: info for lane, info in self._known.items() if lane in keep}
        for cls in self.classes.values():
            cls.verdicts = {lane: v for lane, v in cls.verdicts.items() if lane in keep}
            cls.checks = {lane: c for lane, c in cls.checks.items() if lane in keep}
        log.info("forgot %d idle lane(s)", idle, extra={"action": "forget_lanes"})
        return idle

    async def _answers_loop(self) -> None:
        """Pairs waiting for a function's answer are judged again when it comes."""
        while True:
            keys = await self.functions.answered()
            pairs: set[tuple[ClassKey, str]] = set()
            for key in keys:
                pairs |= self._pending.pop(key, set())
            if pairs:
                try:
                    self._rejudge(pairs)
                except Exception:  # never let this end the loop
                    log.exception("judging pairs again after functions answered failed")

    def _rejudge(self, pairs: Collection[tuple[ClassKey, str]]) -> None:
        for key, lane in pairs:
            cls = self.classes.get(key)
            info = self.lanes.get(lane)
            if cls is None or info is None:
                continue
            cls.verdicts.pop(lane, None)
            cls.view.remove(lane)
            self._offer(cls, info)
        self.wake()

    def judge_again(self) -> None:
        """Verdicts built on a fallback for a failure that may pass are judged again (a tripped
        function answers at once; one that works again restores its lanes)."""
        doubtful, self._doubtful = self._doubtful, {}
        # the pairs only tripped by others first: they get their answers while the breaker is
        # closed, before the pairs whose calls hit the cap trip it again
        self._rejudge(sorted(doubtful, key=lambda pair: doubtful[pair]))

    async def resync(self) -> None:
        """Adopt the cluster-wide ready set (covers missed pub/sub messages)."""
        heard: set[str] = set()  # a lane heard of meanwhile is kept
        self._heard_in_resync = heard
        try:
            ready = await self.index.ready_lanes()
        finally:
            self._heard_in_resync = None
        for lane in list(self.lanes):
            if lane not in ready and lane not in self._refilling and lane not in heard:
                self._drop_lane(lane)
        self.lanes_ready({lane: None for lane in ready if lane not in self.lanes})

    def _uses_running_counts(self) -> bool:
        f = self.policy.fairness
        return Strategy.FEWEST_RUNNING in (f.default, *f.kinds.values())

    async def _running_loop(self) -> None:
        """fewest_running needs cluster-wide running counts: re-read them every second."""
        while not self.stopping:
            await asyncio.sleep(1.0)
            if not self._uses_running_counts():
                continue
            try:
                counts = await self.store.running_by_tenant()
            except StorageUnavailable:
                continue
            changed = set(self.running_base) | set(counts) | set(self.running_delta)
            self.running_base = counts
            self.running_delta.clear()
            # Jobs delivered before this read are in its counts; their completions show up in the
            # next read. Forgetting them here means a completion already counted by PostgreSQL
            # cannot also be subtracted locally (which undercounted the busiest tenant).
            self._job_tenant.clear()
            for tenant in changed:
                self._running_changed(tenant)
