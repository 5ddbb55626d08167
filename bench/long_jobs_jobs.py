"""The job of bench/long_jobs.py's items part: `python -m worcr.worker bench.long_jobs_jobs`.

`lj.items(n, size, mode, tag)` goes over items `ctx.checkpoints["next"]` (0 on a first run) to
n - 1. Each item costs a fixed amount of CPU: one SHA-256 of a `size`-byte buffer (the benchmark
picks `size` so that it takes --item-us), then, by `mode`:

- `none`: nothing more (the baseline);
- `every`: `await ctx.checkpoint("next", i + 1)`, durable before the next item;
- `every100`: the same after every 100th item (and after the last);
- `progress`: `await ctx.progress("items", i + 1, n)` (coalesced by the SDK, returns at once);
- `none_sleep0`, `progress_sleep0`: `none` and `progress` plus `await asyncio.sleep(0)` per item,
  as a handler that awaits some I/O per item would: it lets the SDK's progress task run while the
  job does (in a loop that never yields, the progress request can only go when the job ends).

The handler times itself (wall and process CPU, between its first and its last item) and appends
"tag mode n start end elapsed cpu" to $BENCH_LOG_DIR/items.log with one O_APPEND write.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from hashlib import sha256
from typing import Any

import worcr

__all__ = ["ITEMS_LOG", "LOOPS", "MODES", "items"]

ITEMS_LOG = "items.log"

Loop = Callable[[worcr.JobContext, int, int, bytes], Awaitable[None]]


async def _none(ctx: worcr.JobContext, first: int, n: int, buf: bytes) -> None:
    for _ in range(first, n):
        sha256(buf)


async def _every(ctx: worcr.JobContext, first: int, n: int, buf: bytes) -> None:
    for i in range(first, n):
        sha256(buf)
        await ctx.checkpoint("next", i + 1)


async def _every100(ctx: worcr.JobContext, first: int, n: int, buf: bytes) -> None:
    for i in range(first, n):
        sha256(buf)
        if (i + 1) % 100 == 0 or i + 1 == n:
            await ctx.checkpoint("next", i + 1)


async def _progress(ctx: worcr.JobContext, first: int, n: int, buf: bytes) -> None:
    for i in range(first, n):
        sha256(buf)
        await ctx.progress("items", i + 1, n)


async def _none_sleep0(ctx: worcr.JobContext, first: int, n: int, buf: bytes) -> None:
    for _ in range(first, n):
        sha256(buf)
        await asyncio.sleep(0)


async def _progress_sleep0(ctx: worcr.JobContext, first: int, n: int, buf: bytes) -> None:
    for i in range(first, n):
        sha256(buf)
        await ctx.progress("items", i + 1, n)
        await asyncio.sleep(0)


LOOPS: dict[str, Loop] = {
    "none": _none,
    "every": _every,
    "every100": _every100,
    "progress": _progress,
    "none_sleep0": _none_sleep0,
    "progress_sleep0": _progress_sleep0,
}
MODES = tuple(LOOPS)


@worcr.job("lj.items")
async def items(ctx: worcr.JobContext, n: int, size: int, mode: str, tag: str) -> dict[str, Any]:
    first = int(ctx.checkpoints.get("next", 0))
    buf = bytes(range(256)) * (size // 256) + bytes(size % 256)
    loop = LOOPS.get(mode)
    if loop is None:
        raise worcr.Permanent(f"unknown mode {mode!r}")
    cpu0, t0, w0 = time.process_time(), time.perf_counter(), time.time()
    await loop(ctx, first, n, buf)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    line = f"{tag} {mode} {n - first} {w0:.6f} {w0 + elapsed:.6f} {elapsed:.6f} {cpu:.6f}\n"
    path = os.path.join(os.environ["BENCH_LOG_DIR"], ITEMS_LOG)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    return {"items": n - first, "elapsed": elapsed}
