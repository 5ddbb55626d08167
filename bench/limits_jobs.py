"""The jobs of bench/limits.py: `python -m worcr.worker bench.limits_jobs`.

- `noop(i)` (bench/noop_jobs.py, imported here): appends "i start_time" to $BENCH_LOG_DIR/jobs.log;
  the unlimited runs of the dispatch-cost pair and tenants B..K of the unthrottled pair run it,
  so bench/dispatch_scale.py's measurement reads their starts.
- `paced(i)`: does nothing; the jobs of the rate-limit efficiency runs (the benchmark reads their
  admission times from PostgreSQL, not from a log).
- `throttled(i)`: does nothing; tenant A's throttled backlog, kept out of jobs.log so that only
  B..K's starts are measured.
- `hold(i, seconds)`: sleeps, then appends "i start end" to $BENCH_LOG_DIR/hold.log; the jobs of
  the concurrency-limit efficiency run (worker-side running intervals).
No handler for `unserved`: the control of the unthrottled part enqueues jobs no worker runs.
Each log line is one small O_APPEND write, so lines of several processes never interleave.
"""

from __future__ import annotations

import asyncio
import os
import time

import worcr
from bench.noop_jobs import noop

__all__ = ["HOLD_LOG", "hold", "noop", "paced", "throttled"]

HOLD_LOG = "hold.log"

_fd: int | None = None
_fd_pid: int | None = None


def _hold_fd() -> int:
    global _fd, _fd_pid
    if _fd_pid != os.getpid():
        path = os.path.join(os.environ["BENCH_LOG_DIR"], HOLD_LOG)
        _fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        _fd_pid = os.getpid()
    assert _fd is not None
    return _fd


@worcr.job("paced")
async def paced(ctx: worcr.JobContext, i: int) -> None:
    return None


@worcr.job("throttled")
async def throttled(ctx: worcr.JobContext, i: int) -> None:
    return None


@worcr.job("hold")
async def hold(ctx: worcr.JobContext, i: int, seconds: float) -> None:
    start = time.time()
    await asyncio.sleep(seconds)
    os.write(_hold_fd(), b"%d %.6f %.6f\n" % (i, start, time.time()))
