"""The no-op job of bench/fairness.py: `python -m worcr.worker bench.fairness_jobs`.

The job `fair(tenant_no, i)` appends "tenant_no i end_time" to $BENCH_LOG_DIR/fairness.log with
one small O_APPEND write (lines written by several processes never interleave), like
bench/noop_jobs.py. `tenant_no` is 0 for the big tenant A and k for the small tenant tk; `i` is
the job's index within its tenant, in enqueue order.
"""

from __future__ import annotations

import os
import time

import worcr

LOG_NAME = "fairness.log"

_fd: int | None = None
_fd_pid: int | None = None


def _log_fd() -> int:
    global _fd, _fd_pid
    if _fd_pid != os.getpid():
        path = os.path.join(os.environ["BENCH_LOG_DIR"], LOG_NAME)
        _fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        _fd_pid = os.getpid()
    assert _fd is not None
    return _fd


@worcr.job("fair")
async def fair(ctx: worcr.JobContext, tenant_no: int, i: int) -> None:
    os.write(_log_fd(), b"%d %d %.6f\n" % (tenant_no, i, time.time()))
