"""What a function sees: the plain values (maps, lists, strings, numbers, booleans, nil) built
from a job, a lane or a worker for each hook. Documented in docs/functions.md.

Dispatch-time hooks (weight, match, shed) see the job's *lane* (kind, tenant, tags, weight), not
one job: their answer is cached per lane and worker class. Job-time hooks (on_enqueue, retry,
limit_key) see the job itself, args included.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

__all__ = ["lane_view", "plain", "worker_view"]

MAX_DEPTH = 32
_INT_MAX = 2**63 - 1


def lane_view(kind: str, tenant: str, tags: Collection[str], weight: float) -> dict[str, Any]:
    return {"kind": kind, "tenant": tenant, "tags": sorted(tags), "weight": weight}


def worker_view(kinds: Collection[str], tags: Collection[str]) -> dict[str, Any]:
    """A worker class: workers with the same kinds and tags get the same answers."""
    return {"kinds": sorted(kinds), "tags": sorted(tags)}


def plain(value: Any, depth: int = 0) -> Any:
    """Args decoded from msgpack, as values both languages hold: bytes become hex strings, map
    keys strings, integers beyond 64 bits floats, anything nested deeper than 32 levels nil."""
    if depth > MAX_DEPTH:
        return None
    if value is None or isinstance(value, bool | str | float):
        return value
    if isinstance(value, int):
        return value if -_INT_MAX <= value <= _INT_MAX else float(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, Mapping):
        return {str(k): plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v, depth + 1) for v in value]
    return str(value)
