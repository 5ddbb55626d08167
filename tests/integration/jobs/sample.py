"""Handlers for worker subprocesses started by the integration tests:

    python -m worcr.worker tests.integration.jobs.sample --nodes HOST:PORT

`sample.block` prints `started <id> <attempt> <token>` on stdout when it begins (the test reads
that line as its signal that the job is running in the worker, not merely claimed by the node),
then sleeps for `seconds` (an hour by default: the test kills or stops the worker meanwhile).
Nothing else is printed on stdout; the worker's logs go to stderr. `sample.digest` is the
resumable job of the digest scenario (tests/integration/test_digest.py); `sample.record` appends
one line per execution to a file (tests/integration/test_rolling_restart.py).
"""

from __future__ import annotations

import asyncio
import os
import sys

import worcr


@worcr.job("sample.block")
async def block(ctx: worcr.JobContext, seconds: float = 3600.0) -> str:
    sys.stdout.write(f"started {ctx.id} {ctx.attempt} {ctx.token}\n")
    sys.stdout.flush()
    await asyncio.sleep(seconds)
    return "slept"


@worcr.job("sample.digest")
async def digest(ctx: worcr.JobContext, count: int, sent: str, acked: str) -> dict[str, int]:
    """The daily digest: "send" e-mails `count` times (append `i` to the file `sent`: the side
    effect), checkpointing the next index after each; once a checkpoint is answered, append it
    to `acked` (what the node promised to keep). Resumes at `ctx.checkpoints["next"]`."""
    start = ctx.checkpoints.get("next", 0)
    sent_fd = os.open(sent, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    acked_fd = os.open(acked, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(acked_fd, f"start {start} {ctx.token}\n".encode())
        for i in range(start, count):
            os.write(sent_fd, f"{i}\n".encode())  # survives a SIGKILL: the kernel has it
            await ctx.checkpoint("next", i + 1)
            os.write(acked_fd, f"{i + 1}\n".encode())
            await ctx.progress("emails", i + 1, count)
    finally:
        os.close(sent_fd)
        os.close(acked_fd)
    return {"sent": count - start}


@worcr.job("sample.record")
async def record(ctx: worcr.JobContext, path: str, seconds: float = 0.0) -> None:
    """Append `<id> <token>` to the file `path` (the side effect: one line per execution, atomic
    with O_APPEND), then sleep `seconds`."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{ctx.id} {ctx.token}\n".encode())
    finally:
        os.close(fd)
    await asyncio.sleep(seconds)
