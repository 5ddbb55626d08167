"""Handlers for worker subprocesses started by the integration tests:

    python -m worcr.worker tests.integration.jobs.sample --nodes HOST:PORT

`sample.block` prints `started <id> <attempt> <token>` on stdout when it begins (the test reads
that line as its signal that the job is running in the worker, not merely claimed by the node),
then sleeps for `seconds` (an hour by default: the test kills or stops the worker meanwhile).
Nothing else is printed on stdout; the worker's logs go to stderr.
"""

from __future__ import annotations

import asyncio
import sys

import worcr


@worcr.job("sample.block")
async def block(ctx: worcr.JobContext, seconds: float = 3600.0) -> str:
    sys.stdout.write(f"started {ctx.id} {ctx.attempt} {ctx.token}\n")
    sys.stdout.flush()
    await asyncio.sleep(seconds)
    return "slept"
