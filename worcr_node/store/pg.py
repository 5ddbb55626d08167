"""The PostgreSQL store: the source of truth for jobs, lanes and attempt history.

The only module (with migrate.py) that talks to PostgreSQL. Methods are noun-first and batched
(`job_insert_many`, `job_claim_many`, ...). Connection failures surface as StorageUnavailable so
callers can answer a clear, retryable error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import msgpack

from worcr_node.jobspec import NewJob, Partition, RetryBackoff, lane_of
from worcr_node.state import JobState
from worcr_node.store import queries as q
from worcr_node.store.migrate import migrate

__all__ = ["ClaimedJob", "FinishOutcome", "InsertResult", "PgStore", "StorageUnavailable"]

T = TypeVar("T")

_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.ConnectionFailureError,
    # A connection left mid-operation by a dropped server ("cannot switch to state ..."):
    asyncpg.InternalClientError,
    TimeoutError,
)


log = logging.getLogger(__name__)


class _OneLine(logging.Filter):
    """asyncpg's pool logs a full traceback at WARNING each time it fails to restore its
    connections (so at every PostgreSQL restart): the error's one line says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {exc}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


logging.getLogger("asyncpg.pool").addFilter(_OneLine())

_DEADLOCK_RETRIES = 4


class StorageUnavailable(Exception):
    """PostgreSQL cannot be reached right now; the operation did not happen and may be retried."""


# A running attempt that ended other than by completion: (id, seq, lane, new state, kind, tenant).
Moved = tuple[uuid.UUID, int, str, str, str, str]


@dataclass(frozen=True, slots=True)
class InsertResult:
    id: uuid.UUID
    state: str
    duplicate: bool
    lane: str | None = None  # set for new ready jobs
    seq: int | None = None
    fresh: bool = False  # the lane was created by this insert


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    id: uuid.UUID
    token: int
    kind: str
    args: bytes
    tags: list[str]
    tenant: str
    attempt: int
    max_attempts: int
    reserve_for: float
    enqueued_at: float
    worker_id: str
    checkpoints: bytes | None = None  # msgpack map, as stored


@dataclass(frozen=True, slots=True)
class FinishOutcome:
    """A running attempt that ended other than by completion: failed, yielded or lost."""

    id: uuid.UUID
    token: int
    new_state: JobState
    run_at: float | None  # for retrying
    attempt_delta: int  # 0, or -1 for a yield (a yield is not an attempt)
    outcome: str
    error: str | None
    backtrace: str | None


class PgStore:
    def __init__(self, dsn: str, pool_size: int = 8) -> None:
        self._dsn = dsn
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._relaxed_pool: asyncpg.Pool | None = None
        self._known_lanes: set[str] = set()

    async def open(self) -> None:
        self._pool = await self._make_pool(self._pool_size, {})
        # Best-effort writes (progress, log lines) commit without waiting for their WAL flush:
        # the next durable commit (an ack, a checkpoint) flushes them too, and a PostgreSQL crash
        # can lose only the last fraction of a second of them, never corrupt anything.
        self._relaxed_pool = await self._make_pool(
            max(2, self._pool_size // 4), {"synchronous_commit": "off"}
        )
        async with self._pool.acquire() as conn:
            await migrate(conn)

    async def _make_pool(self, size: int, settings: dict[str, str]) -> asyncpg.Pool:
        return await asyncpg.create_pool(
            self._dsn,
            min_size=1,
            max_size=size,
            command_timeout=30,
            max_inactive_connection_lifetime=60,
            # Plan every execution for its parameters. A generic plan cached while worcr_jobs was
            # nearly empty (a hash join over every queued row for the batched claim) would make
            # each claim cost 50-100 ms once the table grows, until autovacuum's next ANALYZE
            # (up to a minute). Found by bench/fairness.py; planning costs far less than that.
            # No JIT: the node's statements are short, and a cost estimate inflated by a table
            # too small for autovacuum to ever analyze (worcr_kinds) made PostgreSQL compile the
            # run-time duty's query every second (~0.5 s of CPU for 5 ms of work).
            server_settings={"plan_cache_mode": "force_custom_plan", "jit": "off", **settings},
            # The node keeps no session state on a pooled connection (no LISTEN, no cursors, no
            # SET; the migration's session lock is released in a finally; transactions are
            # always managed), so the default reset query on every release (RESET ALL,
            # UNLISTEN *, ...) would be one wasted round trip per statement.
            reset=_keep_session,
        )

    async def close(self) -> None:
        for name in ("_relaxed_pool", "_pool"):
            pool = getattr(self, name)
            if pool is None:
                continue
            setattr(self, name, None)
            try:
                async with asyncio.timeout(5):  # close() waits for every connection's release
                    await pool.close()
            except Exception:  # a dead server, or a connection never released
                pool.terminate()

    @asynccontextmanager
    async def _conn(self, relaxed: bool = False) -> AsyncIterator[asyncpg.Connection]:
        pool = self._relaxed_pool if relaxed else self._pool
        if pool is None:
            raise StorageUnavailable("the store is not open")
        try:
            async with pool.acquire(timeout=10) as conn:
                yield conn
        except _UNAVAILABLE as exc:
            raise StorageUnavailable(f"PostgreSQL is unavailable: {exc}") from exc

    async def run(
        self, fn: Callable[[asyncpg.Connection], Awaitable[T]], *, relaxed: bool = False
    ) -> T:
        """Run `fn` on a pooled connection (`relaxed`: one whose commits do not wait for their
        WAL flush, for best-effort writes). A deadlock victim is run again (its transaction was
        rolled back, and every write here is fenced or idempotent): writers of running jobs lock
        rows in id order, but a client may still interleave reports in other orders."""
        for attempt in range(_DEADLOCK_RETRIES):
            try:
                async with self._conn(relaxed) as conn:
                    return await fn(conn)
            except asyncpg.DeadlockDetectedError:
                if attempt == _DEADLOCK_RETRIES - 1:
                    raise
                log.warning("deadlock in PostgreSQL; running the transaction again")
                await asyncio.sleep(0.005 * (attempt + 1))
        raise AssertionError("unreachable")

    # -- enqueue ---------------------------------------------------------------------------------

    async def job_insert_many(self, jobs: Sequence[NewJob]) -> list[InsertResult]:
        """Insert new jobs in one transaction; duplicates (same id or unique key) are reported."""
        new_lanes = {j.lane: j for j in jobs if j.lane not in self._known_lanes}
        cols: list[list[Any]] = [[] for _ in range(15)]
        for j in jobs:
            for col, value in zip(
                cols,
                (
                    j.id, j.lane, j.kind, j.args, "\x1f".join(j.tags), j.tenant, j.weight,
                    j.state.value, j.run_at, j.expires_at, j.max_attempts,
                    json.dumps(j.backoff.to_json()) if j.backoff else None, j.unique_key,
                    j.reserve_for, j.max_run_time,
                ),
                strict=True,
            ):  # fmt: skip
                col.append(value)

        async def tx(conn: asyncpg.Connection) -> list[InsertResult]:
            async with conn.transaction():
                created: set[str] = set()
                if new_lanes:
                    lanes = list(new_lanes.values())
                    created = {
                        r[0]
                        for r in await conn.fetch(
                            q.LANE_INSERT_MANY,
                            [j.lane for j in lanes],
                            [j.kind for j in lanes],
                            [j.tenant for j in lanes],
                            ["\x1f".join(j.tags) for j in lanes],
                            [j.weight for j in lanes],
                            [_partition_json(j) for j in lanes],
                        )
                    }
                rows = await conn.fetch(q.JOB_INSERT_MANY, *cols)
                inserted = {r[0]: r[1] for r in rows}
                noted = [j for j in jobs if j.function_errors and j.id in inserted]
                if noted:
                    await conn.execute(q.JOB_FUNCTION_ERRORS_ADD, [j.id for j in noted],
                                       [json.dumps(j.function_errors) for j in noted])  # fmt: skip
                existing: dict[uuid.UUID, str] = {}
                by_key: dict[str, tuple[uuid.UUID, str]] = {}
                if len(inserted) < len(jobs):
                    missing = [j for j in jobs if j.id not in inserted]
                    ids = [j.id for j in missing if j.client_id]
                    if ids:
                        existing = {r[0]: r[1] for r in await conn.fetch(q.JOB_EXISTING_BY_ID, ids)}
                    keys = [j.unique_key for j in missing if j.unique_key]
                    if keys:
                        for r in await conn.fetch(q.JOB_EXISTING_BY_UNIQUE_KEY, keys):
                            by_key[r[2]] = (r[0], r[1])
            return _insert_results(jobs, inserted, existing, by_key, created)

        results = await self.run(tx)
        self._known_lanes.update(new_lanes)
        return results

    # -- dispatch and results ----------------------------------------------------------------------

    async def job_claim_many(
        self,
        ids: Sequence[uuid.UUID],
        worker_ids: Sequence[str],
        node_id: str,
        lanes: Sequence[str],
        admitted_ms: Sequence[int | None],
    ) -> list[ClaimedJob]:
        """queued -> running for ids still in the lane they were claimed from."""
        rows = await self.run(
            lambda c: c.fetch(q.JOB_CLAIM_MANY, ids, worker_ids, node_id, lanes, admitted_ms)
        )
        return [ClaimedJob(*r) for r in rows]

    async def job_complete_many(
        self,
        ids: Sequence[uuid.UUID],
        tokens: Sequence[int],
        results: Sequence[bytes | None],
        before_commit: Callable[[set[uuid.UUID]], Awaitable[None]] | None = None,
    ) -> dict[uuid.UUID, tuple[str, str]]:
        """running -> completed; returns {id: (kind, tenant)} of the jobs whose token was current
        (the others are stale).

        `before_commit(done)` runs inside the transaction, after the update and before the commit
        (and its disk flush): the attempts' `finished_at` (the transaction's start) precedes it."""
        if before_commit is None:
            rows = await self.run(lambda c: c.fetch(q.JOB_COMPLETE_MANY, ids, tokens, results))
            return {r[0]: (r[1], r[2]) for r in rows}

        async def tx(conn: asyncpg.Connection) -> dict[uuid.UUID, tuple[str, str]]:
            async with conn.transaction():
                rows = await conn.fetch(q.JOB_COMPLETE_MANY, ids, tokens, results)
                done = {r[0]: (r[1], r[2]) for r in rows}
                await before_commit(set(done))
            return done

        return await self.run(tx)

    async def job_finish_many(
        self,
        items: Sequence[tuple[uuid.UUID, int]],
        decide: Callable[[asyncpg.Record], FinishOutcome],
    ) -> list[Moved]:
        """End running attempts other than by completion.

        Locks the current rows, lets `decide` (pure, in Python: nothing that waits) choose each
        next state, writes them and their attempt rows. Returns (id, seq, lane, new state, kind,
        tenant) for the rows changed; items whose token is stale are absent.
        """

        async def tx(conn: asyncpg.Connection) -> list[Moved]:
            async with conn.transaction():
                rows = await conn.fetch(
                    q.JOB_LOCK_RUNNING, [i[0] for i in items], [i[1] for i in items]
                )
                if not rows:
                    return []
                outs = [decide(r) for r in rows]
                moved = await conn.fetch(
                    q.JOB_FINISH_ATTEMPT_MANY,
                    [o.id for o in outs],
                    [o.token for o in outs],
                    [o.new_state.value for o in outs],
                    [o.run_at for o in outs],
                    [o.attempt_delta for o in outs],
                    [o.outcome for o in outs],
                    [o.error for o in outs],
                    [o.backtrace for o in outs],
                )
            return [(r[0], r[1], r[2], r[3], r[4], r[5]) for r in moved]

        return await self.run(tx)

    async def job_running_rows(
        self, items: Sequence[tuple[uuid.UUID, int]]
    ) -> list[dict[str, Any]]:
        """The running attempts among (id, token), with kind, tenant, tags, args, attempt and
        max_attempts; not locked (a retry function is asked about them before the write)."""
        rows = await self.run(
            lambda c: c.fetch(q.JOB_RUNNING_FULL, [i[0] for i in items], [i[1] for i in items])
        )
        return [dict(r) for r in rows]

    async def job_function_errors_add(self, errors: dict[uuid.UUID, list[dict[str, Any]]]) -> None:
        """Append function failures to jobs' `function_errors` (the latest 20 kept)."""
        ids = list(errors)
        texts = [json.dumps(errors[i]) for i in ids]
        await self.run(lambda c: c.execute(q.JOB_FUNCTION_ERRORS_ADD, ids, texts), relaxed=True)

    async def job_running_tokens(self, ids: Sequence[uuid.UUID]) -> list[tuple[uuid.UUID, int]]:
        rows = await self.run(lambda c: c.fetch(q.JOB_RUNNING_TOKENS, ids))
        return [(r[0], r[1]) for r in rows]

    async def job_running_all(self) -> list[tuple[uuid.UUID, float]]:
        rows = await self.run(lambda c: c.fetch(q.JOB_RUNNING_ALL))
        return [(r[0], r[1]) for r in rows]

    async def job_running_for_recount(self) -> list[asyncpg.Record]:
        """Running attempts with kind, tenant, tags, args, worker and their rate-limit holds
        (`holds`: "limit id \\x1f key \\x1f units" strings)."""
        return await self.run(lambda c: c.fetch(q.JOB_RUNNING_FOR_RECOUNT))

    async def job_queued_lanes(self, ids: Sequence[uuid.UUID]) -> list[str]:
        """The lanes of those jobs that are queued."""
        rows = await self.run(lambda c: c.fetch(q.JOB_QUEUED_LANES, ids))
        return [r[0] for r in rows]

    async def job_running_still(self, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        rows = await self.run(lambda c: c.fetch(q.JOB_RUNNING_STILL, ids))
        return {r[0] for r in rows}

    # -- limits ------------------------------------------------------------------------------------

    async def hold_add(
        self, job_id: uuid.UUID, token: int, limit_id: str, key: str, units: int
    ) -> None:
        await self.run(
            lambda c: c.execute(q.HOLD_ADD, job_id, token, uuid.UUID(limit_id), key, units)
        )

    async def hold_give(
        self, job_id: uuid.UUID, token: int, limit_id: str, key: str, units: int
    ) -> None:
        lid = uuid.UUID(limit_id)

        async def tx(c: asyncpg.Connection) -> None:
            async with c.transaction():
                if await c.fetchval(q.HOLD_GIVE, job_id, token, lid, key, units) is None:
                    await c.execute(q.HOLD_DROP, job_id, token, lid, key)

        await self.run(tx)

    async def hold_sweep(self) -> int:
        """Forget holds of attempts that ended."""
        status = await self.run(lambda c: c.execute(q.HOLD_SWEEP))
        return int(status.split()[-1])

    async def cluster_get(self, key: str) -> str | None:
        value = await self.run(lambda c: c.fetchval(q.CLUSTER_GET, key))
        return None if value is None else str(value)

    async def cluster_set(self, key: str, value: str) -> None:
        await self.run(lambda c: c.execute(q.CLUSTER_SET, key, value))

    # -- time-driven -------------------------------------------------------------------------------

    async def job_promote_due(self, limit: int) -> list[tuple[uuid.UUID, int, str, str, str]]:
        """(id, seq, lane, kind, tenant) of the jobs made ready."""
        rows = await self.run(lambda c: c.fetch(q.JOB_PROMOTE_DUE, limit))
        return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    async def job_expire_due(self, limit: int) -> list[tuple[uuid.UUID, str, str]]:
        """(id, kind, tenant) of the jobs that expired."""
        rows = await self.run(lambda c: c.fetch(q.JOB_EXPIRE_DUE, limit))
        return [(r[0], r[1], r[2]) for r in rows]

    # -- lanes -------------------------------------------------------------------------------------

    async def lane_ready_page(self, lane: str, limit: int) -> list[tuple[uuid.UUID, int]]:
        rows = await self.run(lambda c: c.fetch(q.LANE_READY_PAGE, lane, limit))
        return [(r[0], r[1]) for r in rows]

    async def lanes_with_ready(self) -> list[str]:
        rows = await self.run(lambda c: c.fetch(q.LANES_WITH_READY))
        return [r[0] for r in rows]

    async def lane_split(
        self,
        lane: str,
        kind: str,
        tenant: str,
        tags: tuple[str, ...],
        weight: float,
        partition: Callable[[Any, str], Awaitable[Partition]],
        batch: int = 1000,
    ) -> dict[str, int]:
        """Move the waiting jobs of a lane to lanes split by `partition(args, job id)` (values
        of args paths, keys of limit_key functions); returns {new lane: jobs moved there that
        are ready now}. Per batch: the jobs are read, `partition` is asked with no lock held,
        then one transaction moves those still waiting in the lane (several nodes may split
        one lane at once: a job moved by another is left as it is)."""
        ready: dict[str, int] = {}
        while True:
            rows = await self.run(lambda c: c.fetch(q.LANE_JOBS_TO_SPLIT, lane, batch))
            if not rows:
                break
            targets: dict[str, Partition] = {}
            moves: list[str] = []
            for r in rows:
                args = msgpack.unpackb(r["args"], raw=False, strict_map_key=False)
                part = await partition(args, str(r["id"]))
                new = lane_of(kind, tenant, tags, weight, part)
                targets[new] = part
                moves.append(new)

            moved = await self._lane_move(lane, kind, tenant, tags, weight, targets,
                                          [r["id"] for r in rows], moves)  # fmt: skip
            for r in moved:
                if r["state"] == JobState.QUEUED:
                    ready[r["lane"]] = ready.get(r["lane"], 0) + 1
            if len(rows) < batch or not moved:
                break
        return ready

    async def _lane_move(
        self,
        lane: str,
        kind: str,
        tenant: str,
        tags: tuple[str, ...],
        weight: float,
        targets: Mapping[str, Partition],
        ids: Sequence[uuid.UUID],
        moves: Sequence[str],
    ) -> list[asyncpg.Record]:
        """Create the target lanes, move the jobs still waiting in `lane` (one transaction)."""

        async def tx(conn: asyncpg.Connection) -> list[asyncpg.Record]:
            async with conn.transaction():
                await conn.execute(
                    q.LANE_INSERT_MANY,
                    list(targets),
                    [kind] * len(targets),
                    [tenant] * len(targets),
                    ["\x1f".join(tags)] * len(targets),
                    [weight] * len(targets),
                    [json.dumps(dict(p)) if p else None for p in targets.values()],
                )
                return list(await conn.fetch(q.JOB_MOVE_LANES, ids, moves, lane))

        return await self.run(tx)

    async def lane_discard_queued(
        self, lanes: Sequence[str], limit: int, reason: str
    ) -> list[tuple[uuid.UUID, str, str]]:
        """Cancel up to `limit` queued jobs of `lanes` (load shedding); (id, kind, tenant)."""
        rows = await self.run(lambda c: c.fetch(q.LANE_DISCARD_QUEUED, lanes, limit, reason))
        return [(r[0], r[1], r[2]) for r in rows]

    async def running_by_tenant(self) -> dict[str, int]:
        rows = await self.run(lambda c: c.fetch(q.RUNNING_BY_TENANT))
        return {r[0]: int(r[1]) for r in rows}

    async def lane_get_many(self, lanes: Sequence[str]) -> list[asyncpg.Record]:
        return await self.run(lambda c: c.fetch(q.LANE_GET_MANY, list(lanes)))

    # -- operator actions --------------------------------------------------------------------------

    async def job_cancel(self, job_id: uuid.UUID) -> tuple[str, int, str, str] | None:
        """Cancel an active job. Returns (previous state, lease token, kind, tenant), or None if
        not found."""

        async def tx(conn: asyncpg.Connection) -> tuple[str, int, str, str] | None:
            async with conn.transaction():
                row = await conn.fetchrow(q.JOB_STATE_FOR_UPDATE, job_id)
                if row is None:
                    return None
                await conn.execute(q.JOB_CANCEL, job_id)
                if row[0] == JobState.RUNNING:
                    await conn.execute(q.ATTEMPT_CANCELLED, job_id)
                return (row[0], row[1], row[2], row[3])

        return await self.run(tx)

    async def job_retry_now(self, job_id: uuid.UUID) -> tuple[uuid.UUID, int, str, str, str] | None:
        """(id, seq, lane, kind, tenant) of the job made ready again, or None."""
        row = await self.run(lambda c: c.fetchrow(q.JOB_RETRY_NOW, job_id))
        return None if row is None else (row[0], row[1], row[2], row[3], row[4])

    async def job_get(self, job_id: uuid.UUID) -> asyncpg.Record | None:
        return await self.run(lambda c: c.fetchrow(q.JOB_GET, job_id))

    async def attempt_outcomes(
        self, items: Sequence[tuple[uuid.UUID, int]]
    ) -> dict[tuple[uuid.UUID, int], str]:
        """(job id, token) -> outcome, for the attempts of these that ended."""
        ids, tokens = [i[0] for i in items], [i[1] for i in items]
        rows = await self.run(lambda c: c.fetch(q.ATTEMPT_OUTCOMES, ids, tokens))
        return {(r["job_id"], r["lease_token"]): str(r["outcome"]) for r in rows}

    async def attempts_of_job(self, job_id: uuid.UUID) -> list[asyncpg.Record]:
        return await self.run(lambda c: c.fetch(q.ATTEMPTS_OF_JOB, job_id))

    async def job_list(
        self,
        limit: int,
        state: str | None = None,
        kind: str | None = None,
        tenant: str | None = None,
        cursor: uuid.UUID | None = None,
    ) -> list[asyncpg.Record]:
        sql = q.job_list(
            state is not None, kind is not None, tenant is not None, cursor is not None
        )
        params = [p for p in (state, kind, tenant, cursor) if p is not None]
        return await self.run(lambda c: c.fetch(sql, limit, *params))

    async def ping(self) -> None:
        await self.run(lambda c: c.fetchval("SELECT 1"))


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset: nothing to undo (an open transaction is rolled back by asyncpg)."""


def _insert_results(
    jobs: Sequence[NewJob],
    inserted: dict[uuid.UUID, int],
    existing: dict[uuid.UUID, str],
    by_key: dict[str, tuple[uuid.UUID, str]],
    created: set[str],
) -> list[InsertResult]:
    out: list[InsertResult] = []
    first: dict[uuid.UUID, InsertResult] = {}
    for j in jobs:
        if j.id in first:  # the same id twice in one batch: the second is a duplicate
            out.append(InsertResult(j.id, first[j.id].state, True))
            continue
        seq = inserted.get(j.id)
        if seq is not None:
            ready = j.state is JobState.QUEUED
            out.append(
                InsertResult(
                    j.id,
                    j.state.value,
                    False,
                    j.lane if ready else None,
                    seq if ready else None,
                    j.lane in created,
                )
            )
        elif j.id in existing:
            out.append(InsertResult(j.id, existing[j.id], True))
        elif j.unique_key is not None and j.unique_key in by_key:
            jid, state = by_key[j.unique_key]
            out.append(InsertResult(jid, state, True))
        else:  # conflicted, then the other row moved on before we looked: report as duplicate
            out.append(InsertResult(j.id, "unknown", True))
        first[j.id] = out[-1]
    return out


def _partition_json(job: NewJob) -> str | None:
    return json.dumps(dict(job.partition)) if job.partition else None


def backoff_of(raw: str | None) -> RetryBackoff:
    """The stored backoff policy of a job (jsonb text), or the default."""
    if not raw:
        return RetryBackoff()
    data = json.loads(raw)
    return RetryBackoff(**{k: float(v) for k, v in data.items()})
