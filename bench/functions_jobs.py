"""The jobs of bench/functions.py: `python -m worcr.worker bench.functions_jobs`.

Two kinds, `heavy` and `light`, that do nothing but append "i start_time" to
$BENCH_LOG_DIR/jobs.log (one small O_APPEND write, like bench/noop_jobs.py), so that
bench/dispatch_scale.py's measurement reads their starts. Weight rules on kind `heavy` (a static
factor, or a Lua or JavaScript weight function) are what the benchmark compares. The worker's
tags come from WORCR_TAGS (the SDK's CLI reads it), set per worker process by the benchmark.
"""

from __future__ import annotations

import os
import time

import worcr
from bench.noop_jobs import _log_fd

__all__ = ["heavy", "light"]


@worcr.job("heavy")
async def heavy(ctx: worcr.JobContext, i: int) -> None:
    os.write(_log_fd(), b"%d %.6f\n" % (i, time.time()))


@worcr.job("light")
async def light(ctx: worcr.JobContext, i: int) -> None:
    os.write(_log_fd(), b"%d %.6f\n" % (i, time.time()))
