"""The function error log: failures of function calls, written to PostgreSQL in batches.

`FunctionRunner` hands every failure to `FunctionErrorLog.record` (synchronous, never blocks the
call). Once a second the log writes what it gathered: per (function, version, kind, message) at
most `PER_FLUSH` rows with their job or lane, the rest folded into the last row's `repeats`, so a
function failing for every job of a 100,000-job batch costs a few rows, not 100,000. Old rows
are deleted after `RETENTION`. Read by `GET /api/v1/functions/{name}/errors`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from worcr_node.functions.runner import FunctionFailure
from worcr_node.service import Service
from worcr_node.store import queries as q
from worcr_node.store.pg import PgStore, StorageUnavailable

__all__ = ["FunctionErrorLog"]

log = logging.getLogger(__name__)

PER_FLUSH = 5  # rows per (function, version, kind, message) per flush
MAX_KEYS = 1000  # distinct (function, version, kind, message) per flush; more are dropped
RETENTION = 7 * 86400.0  # seconds
MAX_MESSAGE = 2000


@dataclass(slots=True)
class _Group:
    rows: list[tuple[str | None, str | None, float]] = field(default_factory=list)
    folded: int = 0  # failures beyond PER_FLUSH, added to the last row's repeats


class FunctionErrorLog(Service):
    name = "function-errors"

    def __init__(self, store: PgStore, node_id: str, every: float = 1.0) -> None:
        super().__init__()
        self.store = store
        self.node_id = node_id
        self.every = every
        self._groups: dict[tuple[str, int, str, str, str], _Group] = {}
        self.dropped = 0
        self._wake = asyncio.Event()

    def record(self, failure: FunctionFailure, job: str | None, lane: str | None) -> None:
        key = (failure.function, failure.version, failure.hook, failure.kind,
               failure.message[:MAX_MESSAGE])  # fmt: skip
        group = self._groups.get(key)
        if group is None:
            if len(self._groups) >= MAX_KEYS:
                self.dropped += 1
                return
            group = self._groups[key] = _Group()
        if len(group.rows) < PER_FLUSH:
            group.rows.append((job, lane, time.time()))
        else:
            group.folded += 1
        log.debug("%s", failure, extra={"action": "function_error"})

    async def start(self) -> None:
        self.spawn(self._loop(), "flush")

    async def stop(self) -> None:
        await super().stop()
        try:
            await self.flush()
        except StorageUnavailable:
            pass

    async def _loop(self) -> None:
        last_prune = 0.0
        while not self.stopping:
            await asyncio.sleep(self.every)
            try:
                await self.flush()
                if time.monotonic() - last_prune > 3600:
                    await self.store.run(lambda c: c.execute(q.FUNCTION_ERRORS_PRUNE, RETENTION))
                    last_prune = time.monotonic()
            except StorageUnavailable as exc:
                log.debug("function errors not written yet: %s", exc)
            except Exception:  # the next flush tries again
                log.exception("could not write function errors")

    async def flush(self) -> int:
        """Write what was gathered; returns rows written."""
        if not self._groups:
            return 0
        groups, self._groups = self._groups, {}
        cols: list[list[object]] = [[] for _ in range(10)]
        for (name, version, hook, kind, message), g in groups.items():
            for i, (job, lane, at) in enumerate(g.rows):
                repeats = 1 + (g.folded if i == len(g.rows) - 1 else 0)
                values = (name, version, hook, kind, message, _uuid(job), lane, self.node_id,
                          repeats, datetime.fromtimestamp(at, UTC))  # fmt: skip
                for col, value in zip(cols, values, strict=True):
                    col.append(value)
        try:
            await self.store.run(lambda c: c.execute(q.FUNCTION_ERROR_INSERT_MANY, *cols))
        except StorageUnavailable:
            for key, g in groups.items():  # keep them for the next flush
                self._groups.setdefault(key, g)
            raise
        return len(cols[0])


def _uuid(raw: str | None) -> uuid.UUID | None:
    if raw is None:
        return None
    try:
        return uuid.UUID(raw)
    except ValueError:
        return None
