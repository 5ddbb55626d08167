"""JSON rendering of stored jobs and attempts for the HTTP API."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

import msgpack

__all__ = ["jsonable", "render_attempt", "render_job", "render_result"]


def jsonable(value: Any) -> Any:
    """msgpack values as JSON: bytes become {"$bytes": base64}."""
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _json(text: str | None) -> Any:
    """A jsonb column (asyncpg hands it over as text)."""
    return None if text is None else json.loads(text)


def _unpack(data: bytes | None) -> Any:
    if data is None:
        return None
    return jsonable(msgpack.unpackb(data, raw=False, strict_map_key=False))


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
