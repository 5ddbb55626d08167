"""The no-op job of bench/throughput.py: `python -m worcr.worker bench.noop_jobs`.

The job appends "id start_time" to $BENCH_LOG_DIR/jobs.log with one small O_APPEND write (lines
from several processes never interleave), exactly like the peers harness's `common.job_body`,
so that processed jobs/s and enqueue-to-start latency are measured the same way.
"""

from __future__ import annotations

import os
import time

import worcr

_fd: int | None = None
_fd_pid: int | None = None


def _log_fd() -> int:
    global _fd, _fd_pid
    if _fd_pid != os.getpid():
        path = os.path.join(os.environ["BENCH_LOG_DIR"], "jobs.log")
        _fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        _fd_pid = os.getpid()
    assert _fd is not None
    return _fd


@worcr.job("noop")
async def noop(ctx: worcr.JobContext, i: int) -> int:
    t = time.time()
    os.write(_log_fd(), b"%d %.6f\n" % (i, t))
    return i
