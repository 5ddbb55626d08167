"""The usage index of each limit: the keys used lately (for `GET /api/v1/limits/{ref}/usage`).

Every admission adds its key to the limit's index in Redis (a sorted set by last use), so the API
can list the keys in use without scanning Redis. Keys that read as unused again are forgotten:
by the usage endpoint as it lists them, and by a duty every minute, so the index stays bounded by
the keys used lately, whatever the API's traffic.
"""

from __future__ import annotations

from worcr_node.limits.compiled import CompiledLimits
from worcr_node.limits.model import Limit, LimitType
from worcr_node.store.redis_index import RedisIndex

__all__ = ["idle_ms", "prune_usage_index"]

PRUNE_SCAN = 1000  # oldest index entries read to find idle concurrency keys
CONCURRENCY_IDLE_MS = 3_600_000  # a concurrency key unused and untouched this long is forgotten


def idle_ms(limit: Limit) -> float:
    """How long after its last use a rate-type key is certainly back to unused, doubled: one
    period for windows, a full refill (burst emission intervals) for a token bucket."""
    if limit.type == LimitType.TOKEN_BUCKET:
        return 2 * max(limit.period_ms, limit.burst * limit.period_ms / limit.limit)
    return 2 * limit.period_ms


async def prune_usage_index(index: RedisIndex, compiled: CompiledLimits, limit: Limit) -> None:
    """Forget keys that read as unused again: a rate key idle for two periods (its state has
    expired), a concurrency key idle for an hour and holding no unit."""
    index_key = compiled.check(limit, "").index_key
    now_ms = (await index.limit_usage([]))[1]
    if limit.type != LimitType.CONCURRENCY:
        await index.limit_index_prune(index_key, now_ms - idle_ms(limit))
        return
    entries = await index.limit_index(index_key, PRUNE_SCAN, oldest=True)
    stale = [k for k, t in entries if t <= now_ms - CONCURRENCY_IDLE_MS]
    if stale:
        usage, _ = await index.limit_usage([compiled.check(limit, k) for k in stale])
        await index.limit_index_forget(
            index_key, [k for k, n in zip(stale, usage, strict=True) if n[0] == 0]
        )
