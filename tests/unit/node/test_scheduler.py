"""The duty scheduler's one error policy: storage down skips a run, anything else is logged,
counted and backed off, and no failure stops the other duties or the node."""

from __future__ import annotations

import asyncio
import logging

import pytest

from worcr_node.scheduler import MAX_BACKOFF, Duty, DutyScheduler
from worcr_node.store.pg import StorageUnavailable
from worcr_node.store.redis_index import IndexUnavailable


async def test_a_failing_duty_backs_off_and_recovers(caplog: pytest.LogCaptureFixture) -> None:
    outcomes: list[Exception | None] = [RuntimeError("bug"), RuntimeError("bug"), None]

    async def flaky() -> None:
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome

    duty = Duty("flaky", 0.5, flaky)
    scheduler = DutyScheduler([duty])
    assert await scheduler.run_once(duty) == 1.0  # 0.5 doubled
    assert await scheduler.run_once(duty) == 2.0  # and again
    assert await scheduler.run_once(duty) == 0.5  # back to its period
    stats = scheduler.stats["flaky"]
    assert (stats.runs, stats.failures, stats.failing, stats.skipped) == (1, 2, 0, 0)
    failed = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failed) == 2
    assert all(r.exc_info for r in failed)  # with the traceback


async def test_backoff_is_capped() -> None:
    async def broken() -> None:
        raise ValueError("always")

    duty = Duty("broken", 10.0, broken)
    scheduler = DutyScheduler([duty])
    delays = [await scheduler.run_once(duty) for _ in range(6)]
    assert delays == [20.0, 40.0, MAX_BACKOFF, MAX_BACKOFF, MAX_BACKOFF, MAX_BACKOFF]


@pytest.mark.parametrize("error", [StorageUnavailable("pg down"), IndexUnavailable("redis down")])
async def test_storage_down_skips_a_run_without_backing_off(error: Exception) -> None:
    async def needs_storage() -> None:
        raise error

    duty = Duty("promote", 0.2, needs_storage)
    scheduler = DutyScheduler([duty])
    assert await scheduler.run_once(duty) == 0.2
    assert scheduler.stats["promote"].skipped == 1
    assert scheduler.stats["promote"].failures == 0


async def test_one_failing_duty_does_not_stop_the_others() -> None:
    healthy_ran = asyncio.Event()
    runs = 0

    async def broken() -> None:
        raise RuntimeError("bug")

    async def healthy() -> None:
        nonlocal runs
        runs += 1
        if runs == 3:
            healthy_ran.set()

    scheduler = DutyScheduler([Duty("broken", 0.001, broken, at_once=True),
                               Duty("healthy", 0.001, healthy, at_once=True)])  # fmt: skip
    await scheduler.start()
    try:
        await asyncio.wait_for(healthy_ran.wait(), 5)
        assert scheduler.stats["broken"].failures >= 1
    finally:
        await scheduler.stop()
