"""Storing what running jobs report: checkpoints, progress counters and log lines.

Each kind of report goes through its own group-commit `Batcher`: many jobs' reports become one
fenced statement (`store/life.py`). Reports of one attempt within a batch are merged first (the
statements take one row per job). A write of an attempt that is no longer the running one is
refused as stale: a worker that lost its lease cannot move a job's checkpoints. Stored progress
and log lines are published on the event stream.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from enum import StrEnum
from typing import Any

import msgpack

from worcr.wire import Limits
from worcr_node.batcher import Batcher
from worcr_node.life.events import EventStreams
from worcr_node.life.model import LogLine
from worcr_node.store.life import (
    CheckpointRow,
    CheckpointWrite,
    LifeStore,
    LogWrite,
    ProgressWrite,
)

__all__ = ["JobLife", "Written", "merge_checkpoints"]

log = logging.getLogger(__name__)

Key = tuple[uuid.UUID, int]


class Written(StrEnum):
    OK = "ok"
    STALE = "stale"  # the attempt is not the job's running one
    TOO_LARGE = "too_large"  # the merged map would exceed its limit


def _groups(keys: list[Key]) -> dict[Key, list[int]]:
    """Positions of each (job, token) in a batch, in order."""
    out: dict[Key, list[int]] = {}
    for i, key in enumerate(keys):
        out.setdefault(key, []).append(i)
    return out


class JobLife:
    def __init__(
        self,
        store: LifeStore,
        events: EventStreams,
        limits: Limits,
        max_log_lines: Callable[[], int] | None = None,
    ) -> None:
        self.store = store
        self.events = events
        self.limits = limits
        self.max_log_lines = max_log_lines or (lambda: limits.max_log_lines)
        self._checkpoints = Batcher[CheckpointWrite, Written](
            "checkpoint", self._flush_checkpoints, concurrency=2
        )
        self._progress = Batcher[ProgressWrite, Written](
            "progress", self._flush_progress, concurrency=2
        )
        self._logs = Batcher[LogWrite, int]("log", self._flush_logs, concurrency=2)

    async def close(self) -> None:
        for b in (self._checkpoints, self._progress, self._logs):
            await b.close()

    async def checkpoint(
        self, job_id: uuid.UUID, token: int, put: dict[str, Any], drop: list[str], seq: int = 0
    ) -> Written:
        """Durable when it returns OK (also when a later write of the attempt, `seq`, was
        already applied: this one is superseded)."""
        (out,) = await self._checkpoints.submit([CheckpointWrite(job_id, token, put, drop, seq)])
        return out

    async def progress(self, job_id: uuid.UUID, token: int, put: dict[str, Any]) -> Written:
        (out,) = await self._progress.submit([ProgressWrite(job_id, token, put)])
        return out

    async def log(self, job_id: uuid.UUID, token: int, lines: list[LogLine]) -> int | None:
        """How many lines were stored (fewer once the attempt reached its cap); None: stale."""
        (stored,) = await self._logs.submit(
            [LogWrite(job_id, token, [(x.at, x.level, x.message) for x in lines])]
        )
        return None if stored < 0 else stored

    # -- flushes ---------------------------------------------------------------------------------

    async def _running(self, keys: list[Key]) -> set[Key]:
        """Of writes not stored, those whose attempt is running (so: refused for their size)."""
        if not keys:
            return set()
        return await self.store.attempts_running(keys)

    async def _flush_checkpoints(self, items: list[CheckpointWrite]) -> list[Written]:
        groups = _groups([(w.id, w.token) for w in items])
        too_large: set[Key] = set()

        def merge(rows: list[CheckpointRow]) -> list[tuple[uuid.UUID, bytes, int, int]]:
            out = []
            for row in rows:
                writes = [items[i] for i in groups[(row.id, row.token)]]
                merged = merge_checkpoints(row, writes)
                if merged is None:
                    continue  # every write superseded by one applied already
                packed, seq = merged
                if len(packed) > self.limits.max_checkpoints:
                    too_large.add((row.id, row.token))
                    continue
                out.append((row.id, packed, row.token, seq))
            return out

        rows = await self.store.checkpoint_merge_many(list(groups), merge)
        running = {(r.id, r.token) for r in rows}
        out = [Written.OK] * len(items)
        for key, positions in groups.items():
            verdict = (
                Written.STALE if key not in running
                else Written.TOO_LARGE if key in too_large
                else Written.OK
            )  # fmt: skip
            for i in positions:
                out[i] = verdict
        return out

    async def _outcomes(
        self, groups: dict[Key, list[int]], done: set[Key], n: int
    ) -> list[Written]:
        out = [Written.OK] * n
        missed = [k for k in groups if k not in done]
        too_large = await self._running(missed)
        for key in missed:
            verdict = Written.TOO_LARGE if key in too_large else Written.STALE
            for i in groups[key]:
                out[i] = verdict
        return out

    async def _flush_progress(self, items: list[ProgressWrite]) -> list[Written]:
        groups = _groups([(w.id, w.token) for w in items])
        merged = []
        for (jid, token), positions in groups.items():
            put: dict[str, Any] = {}
            for i in positions:
                put.update(items[i].put)
            merged.append(ProgressWrite(jid, token, put))
        rows = await self.store.progress_set_many(merged, self.limits.max_progress)
        self.events.publish(
            {
                "type": "progress",
                "job": str(r[0]),
                "kind": r[3],
                "tenant": r[4],
                "progress": json.loads(r[2]),
            }
            for r in rows
        )
        return await self._outcomes(groups, {(r[0], r[1]) for r in rows}, len(items))

    async def _flush_logs(self, items: list[LogWrite]) -> list[int]:
        groups = _groups([(w.id, w.token) for w in items])
        merged = [
            LogWrite(jid, token, [line for i in positions for line in items[i].lines])
            for (jid, token), positions in groups.items()
        ]
        stored = await self.store.log_insert_many(merged, self.max_log_lines())
        by_attempt: dict[Key, list[dict[str, Any]]] = {}
        meta: dict[Key, tuple[str, str]] = {}
        for line in stored:
            key = (line.job_id, line.token)
            by_attempt.setdefault(key, []).append(
                {
                    "id": line.id,
                    "attempt": line.attempt,
                    "at": line.at,
                    "level": line.level,
                    "message": line.message,
                }
            )
            meta[key] = (line.kind, line.tenant)
        self.events.publish(
            {"type": "log", "job": str(key[0]), "kind": meta[key][0], "tenant": meta[key][1],
             "lines": lines}
            for key, lines in by_attempt.items()
        )  # fmt: skip
        # Lines of one attempt are stored in order up to the cap: hand them out in order.
        out = [0] * len(items)
        running = await self._running([k for k in groups if k not in by_attempt])
        for key, positions in groups.items():
            left = len(by_attempt.get(key, ()))
            if not left and key not in running:
                for i in positions:
                    out[i] = -1  # stale
                continue
            for i in positions:
                take = min(left, len(items[i].lines))
                out[i] = take
                left -= take
        return out


def merge_checkpoints(
    row: CheckpointRow, writes: list[CheckpointWrite]
) -> tuple[bytes, int] | None:
    """The attempt's checkpoints after `writes` (in order), msgpack-encoded, and the sequence
    number to record; None if every write is older than the last one applied (a delayed copy)."""
    same = row.applied_token == row.token
    fresh = [w for w in writes if not (same and w.seq and w.seq <= row.applied_seq)]
    if not fresh:
        return None
    values: dict[str, Any] = {}
    if row.packed is not None:
        try:
            values = msgpack.unpackb(row.packed, raw=False, strict_map_key=False)
        except Exception:  # written by this module only; never expected
            log.error("job %s: stored checkpoints unreadable; starting afresh", row.id)
            values = {}
    for w in fresh:
        for name in w.drop:
            values.pop(name, None)
        values.update(w.put)
    seq = max([w.seq for w in fresh] + [row.applied_seq if same else 0])
    return msgpack.packb(values, use_bin_type=True), seq
