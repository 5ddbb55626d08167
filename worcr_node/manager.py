"""The job manager: the node's one interface between transports/HTTP and storage.

Its methods read as the data flow: enqueue, claim, ack, fail, yield, requeue lost leases,
promote, expire, cancel, retry. Each writes PostgreSQL first (batched by group commit), then
updates the Redis index; a Redis failure after a commit is logged and repaired later by the
reconciler, never reported as a failed operation, because PostgreSQL already holds the truth.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from worcr.wire import Limits
from worcr_node.batcher import Batcher
from worcr_node.bus import Bus
from worcr_node.clock import Clock
from worcr_node.functions.enqueue import DISCARDED, apply_on_enqueue_many
from worcr_node.functions.model import Hook
from worcr_node.functions.retry import RetryHook
from worcr_node.functions.runner import FunctionRunner
from worcr_node.jobspec import NewJob, Partition, PartitionPaths, SpecError, lane_of, parse_job_spec
from worcr_node.limits.model import partition_for
from worcr_node.messages import LanesReady, StopAttempts, UnitsFreed
from worcr_node.outcome import (
    FailReport,
    decide_failure,
    decide_lost_lease,
    decide_revoked,
    decide_yield,
)
from worcr_node.state import JobState
from worcr_node.store.pg import (
    ClaimedJob,
    FinishOutcome,
    InsertResult,
    Moved,
    PgStore,
    StorageUnavailable,
)
from worcr_node.store.redis_index import IndexUnavailable, RedisIndex

Row = Mapping[str, Any]  # a job row as the store hands it to a decision (read-only)

__all__ = ["JobManager", "SpecError"]

log = logging.getLogger(__name__)

Ready = dict[str, list[tuple[int, uuid.UUID]]]
StateChange = tuple[str, str, str, str]  # (job id, new state, kind, tenant)
DISCARD_REASON = "discarded by load shedding: a discard rule (or shed function) took its lane"
# (paths, job {kind, tenant, tags}, args, job id) -> the values that split the job's lane
Partitioner = Callable[[Sequence[str], Mapping[str, Any], Any, str | None], Awaitable[Partition]]


async def _args_partition(
    paths: Sequence[str], job: Mapping[str, Any], args: Any, job_id: str | None
) -> Partition:
    return partition_for(paths, args)


async def _no_shed(lane: str, kind: str, tenant: str, tags: tuple[str, ...], weight: float) -> None:
    return None


class JobManager:
    def __init__(
        self,
        store: PgStore,
        index: RedisIndex,
        node_id: str,
        clock: Clock,
        limits: Limits,
        bus: Bus,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.store = store
        self.index = index
        self.bus = bus  # ready lanes, freed units and cancels: to this node and the others
        self.node_id = node_id
        self.clock = clock
        self.limits = limits
        self.rand = rand
        # Called with ids of jobs that stopped running through this node (fewest_running counts).
        self.on_done: Callable[[Collection[uuid.UUID]], None] = lambda ids: None
        # The args paths job limits split a (kind, tenant, tags) lane by (set with each policy),
        # and what splits one job's lane (values of those paths, keys of limit_key functions).
        self.partition_paths: PartitionPaths = lambda kind, tenant, tags: ()
        self.partition: Partitioner = _args_partition
        # Embedded functions (on_enqueue, retry); the dispatcher's runner, set by the node.
        self.functions = FunctionRunner()
        # "discard" / "hold" / None for a lane (kind, tenant, tags, weight): load-shedding rules.
        self.shed: Callable[[str, str, str, tuple[str, ...], float], Awaitable[str | None]] = (
            _no_shed
        )
        # Some concurrency limit is in force: acks release units before their commit is flushed.
        self.early_release = False
        # Called with (job id, new state, kind, tenant) of jobs that changed state (the event
        # stream; it consumes the iterable only while somebody watches).
        self.on_states: Callable[[Iterable[StateChange]], None] = lambda changes: None
        self._enqueue = Batcher[NewJob, InsertResult]("enqueue", self._flush_enqueue, concurrency=2)
        self._ack = Batcher[tuple[uuid.UUID, int, bytes | None], bool](
            "ack", self._flush_ack, concurrency=2
        )
        self._fail = Batcher[FailReport, bool]("fail", self._flush_fail)
        self._yield = Batcher[tuple[uuid.UUID, int], bool]("yield", self._flush_yield)
        self._claim = Batcher[tuple[uuid.UUID, str, str, int | None], ClaimedJob | None](
            "claim", self._flush_claim, concurrency=2
        )

    async def close(self) -> None:
        for b in (self._enqueue, self._claim, self._ack, self._fail, self._yield):
            await b.close()

    # -- enqueue ---------------------------------------------------------------------------------

    async def parse(self, specs: Sequence[Any]) -> list[NewJob | uuid.UUID]:
        """Validate a batch of job specs and run the on_enqueue functions; SpecError names the
        first bad (or rejected) one. The id of a job discarded (by a function or a discard
        rule) stands in its place."""
        if not 1 <= len(specs) <= self.limits.max_batch:
            raise SpecError(f"jobs: expected 1 to {self.limits.max_batch} job specs")
        now = self.clock.now()
        jobs: list[tuple[NewJob, Any]] = []
        for i, spec in enumerate(specs):
            try:
                jobs.append((parse_job_spec(spec, now, self.limits), spec.get("args", [])))
            except SpecError as exc:
                raise SpecError(f"jobs[{i}].{exc}") from None
        kept: list[NewJob | SpecError | None] = [job for job, _ in jobs]
        if self.functions.has(Hook.ON_ENQUEUE):
            kept = await apply_on_enqueue_many(self.functions, jobs, now, self.limits)
        for i, k in enumerate(kept):  # the first rejected one, in order
            if isinstance(k, SpecError):
                raise SpecError(f"jobs[{i}].{k}")
        todo = [(i, k, args) for i, (k, (_, args)) in enumerate(zip(kept, jobs, strict=True))
                if isinstance(k, NewJob)]  # fmt: skip
        placed: dict[int, NewJob | None] = {}
        if len(todo) <= 1 or not self._asks_functions():
            for i, job, args in todo:
                placed[i] = await self._prepare(i, job, args)
        else:  # the limit_key and shed calls of every job go to the function process together
            done = await asyncio.gather(*(self._prepare(i, job, args) for i, job, args in todo),
                                        return_exceptions=True)  # fmt: skip
            for (i, _, _), p in zip(todo, done, strict=True):  # the first bad one, in order
                if isinstance(p, BaseException):
                    raise p
                placed[i] = p
        return [p if (p := placed.get(i)) is not None else job.id
                for i, (job, _) in enumerate(jobs)]  # fmt: skip

    def _asks_functions(self) -> bool:
        return self.functions.has(Hook.LIMIT_KEY) or self.functions.has(Hook.SHED)

    async def _prepare(self, i: int, job: NewJob, args: Any) -> NewJob | None:
        """Job `i` of a batch with its lane; None: a discard rule took it."""
        try:
            return await self._place(job, args)
        except SpecError as exc:
            raise SpecError(f"jobs[{i}].{exc}") from None

    async def _place(self, job: NewJob, args: Any) -> NewJob | None:
        """Give the job its lane (split by what job limits key on); None if a discard rule
        takes its lane."""
        paths = self.partition_paths(job.kind, job.tenant, job.tags)
        if paths:
            view = {"kind": job.kind, "tenant": job.tenant, "tags": list(job.tags)}
            job.partition = await self.partition(paths, view, args, str(job.id))
        job.lane = lane_of(job.kind, job.tenant, job.tags, job.weight, job.partition)
        shed = await self.shed(job.lane, job.kind, job.tenant, job.tags, job.weight)
        return None if shed == "discard" else job

    async def enqueue(self, specs: Sequence[Any]) -> list[InsertResult]:
        """Durable on return: the jobs are committed in PostgreSQL. A discarded job's result
        has state "discarded" (it is not stored)."""
        parsed = await self.parse(specs)
        jobs = [j for j in parsed if isinstance(j, NewJob)]
        results = iter(await self._enqueue.submit(jobs) if jobs else [])
        return [next(results) if isinstance(j, NewJob) else InsertResult(j, DISCARDED, False)
                for j in parsed]  # fmt: skip

    async def _flush_enqueue(self, jobs: list[NewJob]) -> list[InsertResult]:
        results = await self.store.job_insert_many(jobs)
        ready: Ready = defaultdict(list)
        fresh = set()
        for r in results:
            if r.lane is not None and r.seq is not None:
                ready[r.lane].append((r.seq, r.id))
                if r.fresh:
                    fresh.add(r.lane)
        await self._push_ready(ready, fresh)
        return results

    async def _push_ready(self, ready: Ready, fresh: Collection[str] = ()) -> None:
        if not ready:
            return
        try:
            await self.index.push_ready(ready, fresh)
        except IndexUnavailable as exc:
            log.warning("Redis unavailable after commit; reconciler will index: %s", exc,
                        extra={"action": "push_ready"})  # fmt: skip
        self.bus.deliver(LanesReady({lane: min(seq for seq, _ in items)
                                      for lane, items in ready.items()}))  # fmt: skip

    # -- dispatch ----------------------------------------------------------------------------------

    async def claim(
        self, items: Sequence[tuple[str, str, int | None]], worker_id: str
    ) -> list[ClaimedJob]:
        """Lease-holding ids, each with the lane it was claimed from and when its job limits
        admitted it (Redis ms, None if none applied), become running attempts in PostgreSQL
        (queued -> running).

        Ids that are no longer queued in that lane (cancelled, expired, claimed twice, moved to
        a split lane) are dropped and their Redis leases (and limit units) released.
        """
        claimed = await self._claim.submit(
            [(uuid.UUID(i), worker_id, lane, admitted) for i, lane, admitted in items]
        )
        got = [c for c in claimed if c is not None]
        self.on_states((str(c.id), JobState.RUNNING, c.kind, c.tenant) for c in got)
        if len(got) < len(items):
            taken = {str(c.id) for c in got}
            refused = [i for i, _, _ in items if i not in taken]
            await self._release(refused)
            # A refused job that is still queued was moved to another lane (split for a limit)
            # while claimed: its new lane's refill skipped it (it was leased), so page it in.
            lanes = await self.store.job_queued_lanes([uuid.UUID(i) for i in refused])
            if lanes:
                try:
                    await self.index.mark_ready(lanes)
                except IndexUnavailable as exc:
                    log.warning("lanes not marked ready (the reconciler will): %s", exc)
                self.bus.deliver(LanesReady(dict.fromkeys(lanes)))
        return got

    async def _flush_claim(
        self, items: list[tuple[uuid.UUID, str, str, int | None]]
    ) -> list[ClaimedJob | None]:
        rows = await self.store.job_claim_many(
            [i[0] for i in items], [i[1] for i in items], self.node_id,
            [i[2] for i in items], [i[3] for i in items],
        )  # fmt: skip
        by_id = {(r.id, r.worker_id): r for r in rows}
        return [by_id.get((jid, wid)) for jid, wid, _, _ in items]

    async def _release(self, ids: Sequence[str]) -> bool:
        try:
            freed = await self.index.lease_release(ids)
            if freed:
                await self.bus.publish(UnitsFreed(tuple(freed)))
        except IndexUnavailable as exc:
            log.warning("could not release leases: %s", exc, extra={"action": "release"})
            return False
        return True

    # -- results -----------------------------------------------------------------------------------

    async def ack(self, items: Sequence[tuple[uuid.UUID, int, bytes | None]]) -> list[bool]:
        """running -> completed for each current token; False marks a stale token. An ack
        re-sent after its answer was lost (the attempt already completed) is True again."""
        ok = await self._ack.submit(items)
        return await self._already(items, ok, "completed")

    async def _already(
        self, items: Sequence[tuple[Any, ...]], ok: list[bool], outcome: str
    ) -> list[bool]:
        """Reports are idempotent: one refused because its attempt already ended with this very
        outcome (a worker re-sends a report whose answer it never got, e.g. through another node
        after a restart) is answered as done."""
        refused = [(i[0], i[1]) for i, good in zip(items, ok, strict=True) if not good]
        if not refused:
            return ok
        try:
            ended = await self.store.attempt_outcomes(refused)
        except StorageUnavailable:
            return ok
        return [good or ended.get((i[0], i[1])) == outcome
                for i, good in zip(items, ok, strict=True)]  # fmt: skip

    async def _flush_ack(self, items: list[tuple[uuid.UUID, int, bytes | None]]) -> list[bool]:
        released = False

        async def release_early(done: set[uuid.UUID]) -> None:
            # The workers are done with these jobs: give their concurrency units back while the
            # commit is flushed rather than after it (a limited job's slot is free ~2 ms sooner).
            nonlocal released
            released = await self._release([str(i) for i in done])

        done = await self.store.job_complete_many(
            [i[0] for i in items], [i[1] for i in items], [i[2] for i in items],
            release_early if self.early_release else None,
        )  # fmt: skip
        if not released:
            await self._release([str(i) for i in done])
        self.on_done(done.keys())
        self.on_states((str(i), JobState.COMPLETED, *done[i]) for i in done)
        return [i[0] in done for i in items]

    async def fail(self, items: Sequence[FailReport]) -> list[bool]:
        ok = await self._fail.submit(items)
        return await self._already([(f.id, f.token) for f in items], ok, "failed")

    async def _flush_fail(self, items: list[FailReport]) -> list[bool]:
        by_key = {(f.id, f.token): f for f in items}
        now = self.clock.now()
        chosen: dict[tuple[uuid.UUID, int], float | bool | None] = {}
        retry = RetryHook(self.functions) if self.functions.has(Hook.RETRY) else None
        if retry is not None:  # asked before the transaction: no row is locked while it runs
            rows = await self.store.job_running_rows(list(by_key))
            chosen = await retry.ask(rows, by_key)

        def decide(row: Row) -> FinishOutcome:
            f = by_key[(row["id"], row["lease_token"])]
            answer = chosen.get((row["id"], row["lease_token"]))
            return decide_failure(row, f, now, self.rand(), answer)

        done = await self._finish([(f.id, f.token) for f in items], decide, release=True)
        if retry is not None and retry.errors:
            try:  # a record for the operator: the failures themselves are committed already
                await self.store.job_function_errors_add(retry.errors)
            except StorageUnavailable as exc:
                log.warning("retry function errors not stored on their jobs: %s", exc)
        return done

    async def yield_(self, items: Sequence[tuple[uuid.UUID, int]]) -> list[bool]:
        ok = await self._yield.submit(items)
        return await self._already(items, ok, "yielded")

    async def _flush_yield(self, items: list[tuple[uuid.UUID, int]]) -> list[bool]:
        return await self._finish(
            items, lambda row: decide_yield(row["id"], row["lease_token"]), release=True
        )

    async def requeue_lost(self, ids: Sequence[str]) -> int:
        """Leases that expired (taken in Redis by this node): requeue or bury their attempts, then
        release the leases and the units the jobs held (after the commit, so PostgreSQL never
        shows a lost attempt still running once its units went to another job)."""
        current = await self.store.job_running_tokens([uuid.UUID(i) for i in ids])
        requeued: set[str] = set()
        if current:  # released (before the requeued jobs are pushed) by _finish
            ok = await self._finish(current, decide_lost_lease, release=True)
            requeued = {str(jid) for (jid, _), good in zip(current, ok, strict=True) if good}
        await self._release([i for i in ids if i not in requeued])
        n = len(requeued)
        if n:
            log.info("requeued %d job(s) whose lease expired", n, extra={"action": "lease_expired"})
        return n

    async def _finish(
        self,
        items: Sequence[tuple[uuid.UUID, int]],
        decide: Callable[[Row], FinishOutcome],
        *,
        release: bool,
        before_ready: Callable[[Sequence[Moved]], None] | None = None,
    ) -> list[bool]:
        moved = await self.store.job_finish_many(items, decide)
        changed = {r[0] for r in moved}
        self.on_done(changed)
        self.on_states((str(r[0]), r[3], r[4], r[5]) for r in moved)
        if before_ready is not None and moved:
            before_ready(moved)
        if release and changed:
            await self._release([str(i) for i in changed])
        ready: Ready = defaultdict(list)
        for jid, seq, lane, state, _, _ in moved:
            if state == JobState.QUEUED:
                ready[lane].append((seq, jid))
        await self._push_ready(ready)
        return [i[0] in changed for i in items]

    async def revoke(self, items: Sequence[tuple[uuid.UUID, int, float, float]]) -> int:
        """Attempts (id, token, max run time, grace) that ran too long and did not yield when
        asked: end them (re-dispatched with their checkpoints), tell their workers to stop."""
        why = {(i[0], i[1]): i[2:] for i in items}
        token_of = {i[0]: i[1] for i in items}
        revoked: list[tuple[str, int]] = []

        def stop_local(moved: Sequence[Moved]) -> None:
            # Before the jobs are ready again (and perhaps dispatched to another worker here).
            revoked.extend((str(r[0]), token_of[r[0]]) for r in moved)
            self.bus.deliver(StopAttempts(tuple(revoked), "max_run_time"))

        await self._finish(
            [(i[0], i[1]) for i in items],
            lambda row: decide_revoked(row, *why[(row["id"], row["lease_token"])]),
            release=True,
            before_ready=stop_local,
        )
        if revoked:
            log.warning("revoked %d attempt(s) past their maximum run time", len(revoked),
                        extra={"action": "revoke"})  # fmt: skip
            await self._broadcast_cancel(revoked, "max_run_time", local=False)
        return len(revoked)

    async def _broadcast_cancel(
        self, attempts: Sequence[tuple[str, int]], reason: str, local: bool = True
    ) -> None:
        """Tell the workers holding these (job id, token) attempts (on any node) to stop them;
        `local` False: this node's were told already."""
        try:
            await self.bus.publish(StopAttempts(tuple(attempts), reason), here=local)
        except IndexUnavailable:
            log.warning("cancel of %d attempt(s) not broadcast (Redis unavailable)", len(attempts))

    # -- time-driven -------------------------------------------------------------------------------

    async def promote_due(self, limit: int = 1000) -> int:
        rows = await self.store.job_promote_due(limit)
        ready: Ready = defaultdict(list)
        for jid, seq, lane, _, _ in rows:
            ready[lane].append((seq, jid))
        await self._push_ready(ready)
        self.on_states((str(r[0]), JobState.QUEUED, r[3], r[4]) for r in rows)
        return len(rows)

    async def expire_due(self, limit: int = 1000) -> int:
        rows = await self.store.job_expire_due(limit)
        self.on_states((str(r[0]), JobState.EXPIRED, r[1], r[2]) for r in rows)
        return len(rows)

    # -- operator actions --------------------------------------------------------------------------

    async def cancel(self, job_id: uuid.UUID) -> tuple[bool, str]:
        """(changed, state before). A running job's worker is told to stop."""
        res = await self.store.job_cancel(job_id)
        if res is None:
            return False, "missing"
        previous, token, kind, tenant = res
        if previous not in (s.value for s in (JobState.SCHEDULED, JobState.QUEUED,
                                               JobState.RUNNING, JobState.RETRYING)):  # fmt: skip
            return False, previous
        self.on_states([(str(job_id), JobState.CANCELLED, kind, tenant)])
        if previous == JobState.RUNNING:
            self.on_done({job_id})
            await self._release([str(job_id)])
            await self._broadcast_cancel([(str(job_id), token)], "cancelled")
        return True, previous

    async def discard_lanes(self, lanes: Sequence[str], batch: int = 1000) -> int:
        """Cancel the queued jobs of lanes a discard rule takes; returns how many."""
        total = 0
        while True:
            rows = await self.store.lane_discard_queued(lanes, batch, DISCARD_REASON)
            self.on_states((str(i), JobState.CANCELLED, kind, tenant) for i, kind, tenant in rows)
            total += len(rows)
            if len(rows) < batch:
                return total

    async def retry_now(self, job_id: uuid.UUID) -> bool:
        row = await self.store.job_retry_now(job_id)
        if row is None:
            return False
        await self._push_ready({row[2]: [(row[1], row[0])]})
        self.on_states([(str(job_id), JobState.QUEUED, row[3], row[4])])
        return True
