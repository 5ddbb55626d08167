"""Waiting on conditions that have no event to await (rows in PostgreSQL): poll with a deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


async def wait_until(
    predicate: Callable[[], Awaitable[bool]], timeout: float = 15.0, every: float = 0.05
) -> None:
    """Return once `predicate()` is true; fail the test if it is not within `timeout` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not await predicate():
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(every)
