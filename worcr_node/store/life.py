"""PostgreSQL access for the life of running jobs: checkpoints, progress, logs, run time, kinds.

Kept apart from `pg.py` (the job lifecycle's hot path); it runs its statements (`queries.py`)
on the same pool. Every write of a running job is fenced by the attempt's lease token.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from worcr_node.store import queries as q
from worcr_node.store.pg import PgStore

__all__ = [
    "CheckpointRow",
    "CheckpointWrite",
    "LifeStore",
    "LogWrite",
    "ProgressWrite",
    "StoredLine",
]


@dataclass(frozen=True, slots=True)
class CheckpointWrite:
    id: uuid.UUID
    token: int
    put: dict[str, Any]
    drop: list[str]
    seq: int = 0  # the attempt's sequence number of this write; 0: none given


@dataclass(frozen=True, slots=True)
class CheckpointRow:
    """A running attempt's checkpoints as stored, locked for the merge."""

    id: uuid.UUID
    token: int
    packed: bytes | None  # msgpack map
    applied_token: int  # (token, seq) of the last write applied
    applied_seq: int


# (id, new msgpack map, token, seq) rows to write, from the locked rows
Merge = Callable[[list[CheckpointRow]], list[tuple[uuid.UUID, bytes, int, int]]]


@dataclass(frozen=True, slots=True)
class ProgressWrite:
    id: uuid.UUID
    token: int
    put: dict[str, Any]


@dataclass(frozen=True, slots=True)
class LogWrite:
    id: uuid.UUID
    token: int
    lines: list[tuple[float, str, str]]  # (at, level, message)


@dataclass(frozen=True, slots=True)
class StoredLine:
    job_id: uuid.UUID
    id: int
    token: int
    attempt: int
    at: float
    level: str
    message: str
    kind: str
    tenant: str


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class LifeStore:
    def __init__(self, pg: PgStore) -> None:
        self.pg = pg

    async def checkpoint_merge_many(
        self, items: Sequence[tuple[uuid.UUID, int]], merge: Merge
    ) -> list[CheckpointRow]:
        """In one transaction: lock the running attempts among `items` (in id order), let
        `merge` (pure) compute their new checkpoints, write them. Returns the rows that were
        running (the others are stale)."""

        async def tx(c: asyncpg.Connection) -> list[CheckpointRow]:
            async with c.transaction():
                rows = [
                    CheckpointRow(*r)
                    for r in await c.fetch(
                        q.CHECKPOINT_LOCK_MANY, [i[0] for i in items], [i[1] for i in items]
                    )
                ]
                writes = merge(rows)
                if writes:
                    await c.execute(
                        q.CHECKPOINT_SET_MANY,
                        [w[0] for w in writes],
                        [w[1] for w in writes],
                        [w[2] for w in writes],
                        [w[3] for w in writes],
                    )
            return rows

        return await self.pg.run(tx)

    async def progress_set_many(
        self, writes: Sequence[ProgressWrite], max_bytes: int
    ) -> list[asyncpg.Record]:
        """Merge counters; returns (id, token, merged progress JSON, kind, tenant) of the jobs
        written (at most one write per job id and token)."""
        return await self.pg.run(
            lambda c: c.fetch(
                q.PROGRESS_SET_MANY,
                [w.id for w in writes],
                [w.token for w in writes],
                [_dumps(w.put) for w in writes],
                max_bytes,
            ),
            relaxed=True,
        )

    async def log_insert_many(self, writes: Sequence[LogWrite], max_lines: int) -> list[StoredLine]:
        """Store lines of running attempts up to `max_lines` per attempt (at most one write per
        attempt); returns the lines stored, in order."""
        ids, tokens, idxs, ats, levels, messages = [], [], [], [], [], []
        for w in writes:
            for i, (at, level, message) in enumerate(w.lines):
                ids.append(w.id)
                tokens.append(w.token)
                idxs.append(i)
                ats.append(at)
                levels.append(level)
                messages.append(message)

        rows = await self.pg.run(
            lambda c: c.fetch(
                q.LOG_INSERT_MANY,
                [w.id for w in writes],
                [w.token for w in writes],
                [len(w.lines) for w in writes],
                max_lines,
                ids,
                tokens,
                idxs,
                ats,
                levels,
                messages,
            ),
            relaxed=True,
        )
        return [StoredLine(*r) for r in rows]

    async def attempts_running(
        self, items: Sequence[tuple[uuid.UUID, int]]
    ) -> set[tuple[uuid.UUID, int]]:
        """The (job id, token) pairs among `items` that are running attempts."""
        rows = await self.pg.run(
            lambda c: c.fetch(q.JOB_ATTEMPT_RUNNING, [i[0] for i in items], [i[1] for i in items])
        )
        return {(r[0], r[1]) for r in rows}

    async def logs_of_job(
        self, job_id: uuid.UUID, after: int, attempt: int | None, limit: int
    ) -> list[asyncpg.Record]:
        return await self.pg.run(lambda c: c.fetch(q.LOGS_OF_JOB, job_id, after, attempt, limit))

    async def logs_tail_of_attempt(
        self, job_id: uuid.UUID, token: int, limit: int
    ) -> list[asyncpg.Record]:
        """The last `limit` lines of one attempt (by its lease token), oldest first."""
        return await self.pg.run(lambda c: c.fetch(q.LOGS_TAIL_OF_JOB, job_id, token, limit))

    async def logs_delete_before(self, cutoff: float, limit: int) -> int:
        status = await self.pg.run(lambda c: c.execute(q.LOGS_DELETE_BEFORE, cutoff, limit))
        return int(status.split()[-1])

    # -- run time --------------------------------------------------------------------------------

    async def run_time_ask_yield(self, limit: int) -> list[tuple[uuid.UUID, int]]:
        rows = await self.pg.run(lambda c: c.fetch(q.RUN_TIME_ASK_YIELD, limit))
        return [(r[0], r[1]) for r in rows]

    async def run_time_asked(
        self, limit: int, default_grace: float
    ) -> list[tuple[uuid.UUID, int, float, float, bool]]:
        """Attempts asked to yield, still running: (id, token, run time, grace, overdue)."""
        rows = await self.pg.run(lambda c: c.fetch(q.RUN_TIME_ASKED, limit, default_grace))
        return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    # -- kinds -----------------------------------------------------------------------------------

    async def kind_list(self) -> list[asyncpg.Record]:
        return await self.pg.run(lambda c: c.fetch(q.KIND_LIST))

    async def kind_get(self, kind: str) -> asyncpg.Record | None:
        return await self.pg.run(lambda c: c.fetchrow(q.KIND_GET, kind))

    async def kind_put(
        self, kind: str, max_run_time: float | None, yield_grace: float | None
    ) -> asyncpg.Record:
        row = await self.pg.run(lambda c: c.fetchrow(q.KIND_PUT, kind, max_run_time, yield_grace))
        assert row is not None
        return row

    async def kind_delete(self, kind: str) -> bool:
        return await self.pg.run(lambda c: c.fetchrow(q.KIND_DELETE, kind)) is not None
