"""JSON rendering of stored jobs and attempts for the HTTP API.

Values stored as msgpack (args, result, checkpoints) are shown as strict JSON, whatever was
stored: bytes as `{"$bytes": base64}` and a bytes map key as `"$bytes:" + base64`. What the node
refuses now but may be stored (checkpoints, or jobs written by an older node) keeps a documented
form too: a msgpack extension type (a Timestamp is type -1) as `{"$ext": [type, base64]}`, NaN
and infinities as `{"$float": "NaN" | "Infinity" | "-Infinity"}`, what is nested deeper than
`RENDER_DEPTH` levels as `{"$truncated": "..."}`, and bytes that are not msgpack at all as
`{"$msgpack": base64}`. So reading a job never fails, and never gives JSON a browser refuses.

`JobPage` encodes the jobs of one list answer as they come, and stops at `PAGE_BYTES`.
"""

from __future__ import annotations

import base64
import json
import math
from datetime import datetime
from typing import Any

import msgpack

__all__ = [
    "PAGE_BYTES",
    "RENDER_DEPTH",
    "JobPage",
    "jsonable",
    "render_attempt",
    "render_job",
    "render_result",
]

RENDER_DEPTH = 64  # levels shown (twice Limits.max_depth: checkpoints nest values in a map)
PAGE_BYTES = 4 << 20  # a list answer takes no further job once its JSON is this long
FIRST_FETCH = 20  # rows a list reads first; then as many as the bytes left should hold...
MAX_FETCH = 250  # ...up to this many at a time
_NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _key(key: Any) -> str:
    return "$bytes:" + _b64(key) if isinstance(key, bytes) else str(key)


def jsonable(value: Any, depth: int = 0) -> Any:
    """A value decoded from msgpack as strict JSON (the forms in the module docstring)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": _NON_FINITE[repr(value)]}
    if isinstance(value, bytes):
        return {"$bytes": _b64(value)}
    if isinstance(value, msgpack.ExtType):
        return {"$ext": [value.code, _b64(value.data)]}
    if isinstance(value, msgpack.Timestamp):
        return {"$ext": [-1, _b64(value.to_bytes())]}
    if not isinstance(value, list | tuple | dict):  # msgpack makes no other type
        return str(value)[:256]
    if depth >= RENDER_DEPTH:
        return {"$truncated": f"nested deeper than {RENDER_DEPTH} levels"}
    if isinstance(value, dict):
        return {_key(k): jsonable(v, depth + 1) for k, v in value.items()}
    return [jsonable(v, depth + 1) for v in value]


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _json(text: str | None) -> Any:
    """A jsonb column (asyncpg hands it over as text)."""
    return None if text is None else json.loads(text)


def _unpack(data: bytes | None) -> Any:
    if data is None:
        return None
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException):  # not msgpack, or an array map key
        return {"$msgpack": _b64(data)}
    return jsonable(value)


def render_job(row: Any) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "state": row["state"],
        "kind": row["kind"],
        "args": _unpack(row["args"]),
        "tags": list(row["tags"]),
        "tenant": row["tenant"],
        "weight": row["weight"],
        "lane": row["lane"],
        "run_at": _time(row["run_at"]),
        "expires_at": _time(row["expires_at"]),
        "max_attempts": row["max_attempts"],
        "backoff": _json(row["backoff"]) if row["backoff"] else None,
        "unique_key": row["unique_key"],
        "reserve_for": row["reserve_for"],
        "attempt": row["attempt"],
        "lease_token": row["lease_token"],
        "worker_id": row["worker_id"],
        "node_id": row["node_id"],
        "result": render_result(row),
        "last_error": row["last_error"],
        "enqueued_at": _time(row["enqueued_at"]),
        "admitted_at": _time(row["admitted_at"]),
        "started_at": _time(row["started_at"]),
        "finished_at": _time(row["finished_at"]),
        "updated_at": _time(row["updated_at"]),
        "checkpoints": _unpack(row["checkpoints"]),
        "progress": _json(row["progress"]),
        "max_run_time": row["max_run_time"],
        "yield_asked_at": _time(row["yield_asked_at"]),
        "function_errors": _json(row["function_errors"]) or [],
    }


def render_result(row: Any) -> Any:
    """The job's result as JSON (null until a worker acked it with one)."""
    return _unpack(row["result"])


def render_attempt(row: Any) -> dict[str, Any]:
    return {
        "attempt": row["attempt"],
        "lease_token": row["lease_token"],
        "worker_id": row["worker_id"],
        "node_id": row["node_id"],
        "admitted_at": _time(row["admitted_at"]),
        "started_at": _time(row["started_at"]),
        "finished_at": _time(row["finished_at"]),
        "outcome": row["outcome"],
        "error": row["error"],
        "backtrace": row["backtrace"],
    }


class JobPage:
    """The jobs of one list answer, encoded as they are added: at most `limit` of them, and no
    further job once the page's JSON would pass `budget` bytes (the first job always goes in,
    so paging goes on). A page that is full either way has a `next_cursor`."""

    def __init__(self, limit: int, budget: int = PAGE_BYTES) -> None:
        self.limit = limit
        self.budget = budget
        self.parts: list[str] = []
        self.size = 0
        self.last_id: str | None = None
        self.cut = False  # the budget stopped it

    @property
    def full(self) -> bool:
        return self.cut or len(self.parts) >= self.limit

    def add(self, row: Any) -> bool:
        """Take the job if it fits; False once the page is full."""
        text = json.dumps(render_job(row))  # ASCII (ensure_ascii): characters are bytes
        if self.parts and self.size + len(text) + 2 > self.budget:
            self.cut = True
            return False
        self.parts.append(text)
        self.size += len(text) + 2
        self.last_id = str(row["id"])
        return not self.full

    def next_fetch(self) -> int:
        """How many rows to read next: a few at first, then about as many as still fit."""
        left = self.limit - len(self.parts)
        if not self.parts:
            return min(left, FIRST_FETCH)
        fit = (self.budget - self.size) * len(self.parts) // self.size + 1
        return max(1, min(left, MAX_FETCH, fit))

    def body(self) -> str:
        """`{"jobs": [...], "next_cursor": id of the last job if the page is full, else null}`."""
        cursor = json.dumps(self.last_id if self.full else None)
        return f'{{"jobs": [{", ".join(self.parts)}], "next_cursor": {cursor}}}'
