"""A running job's reports (worcr/reports.py) and its captured output (worcr/capture.py).

The link to the node is a stand-in whose answers the test releases one by one, so the order and
the coalescing of requests can be checked exactly.
"""

from __future__ import annotations

import asyncio
import io
import logging
from typing import Any

import pytest

from worcr.capture import JobLogHandler, _JobStream, current_job, level_name
from worcr.context import JobContext
from worcr.errors import RemoteError
from worcr.job_life import JobReports


class HeldLink:
    """Records requests; each waits until the test answers it."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.answers: list[asyncio.Future[Any]] = []
        self.arrived = asyncio.Event()

    async def request(self, method: str, params: dict[str, Any], resend: bool = True) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.sent.append((method, params))
        self.answers.append(fut)
        self.arrived.set()
        return await fut

    async def next_request(self) -> tuple[str, dict[str, Any]]:
        while not any(not f.done() for f in self.answers):
            self.arrived.clear()
            await self.arrived.wait()
        return self.sent[[not f.done() for f in self.answers].index(True)]

    def answer(self, value: Any = None, error: Exception | None = None) -> None:
        fut = next(f for f in self.answers if not f.done())
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result({} if value is None else value)


async def test_progress_is_coalesced_to_the_latest_value_per_counter() -> None:
    link = HeldLink()
    reports = JobReports(link, "j1", 7)  # type: ignore[arg-type]
    reports.progress("items", 1, 100)
    method, params = await link.next_request()
    assert (method, params["counters"]) == ("progress", {"items": [1, 100]})
    for i in range(2, 1000):  # while the first is in flight: only the latest is kept
        reports.progress("items", i, 100)
    reports.progress("pages", 3, None)
    link.answer()
    _, params = await link.next_request()
    assert params == {"id": "j1", "token": 7, "counters": {"items": [999, 100], "pages": [3, None]}}
    assert reports.busy
    link.answer()
    await reports.flush()
    assert not reports.busy
    assert len(link.sent) == 2


async def test_log_lines_are_batched_and_a_stale_answer_stops_sending() -> None:
    link = HeldLink()
    reports = JobReports(link, "j1", 7)  # type: ignore[arg-type]
    for i in range(5):
        reports.log("info", f"line {i}", at=1.0)
    method, params = await link.next_request()
    assert method == "log"
    assert [x[2] for x in params["lines"]] == [f"line {i}" for i in range(5)]  # one request
    reports.log("info", "late", at=2.0)
    link.answer(error=RemoteError("STALE_TOKEN", "over"))
    await reports.flush()
    assert reports.stale
    reports.log("info", "never sent", at=3.0)
    reports.progress("x", 1, None)
    await reports.flush()
    assert len(link.sent) == 1


async def test_a_checkpoint_survives_the_cancellation_of_its_caller() -> None:
    link = HeldLink()
    reports = JobReports(link, "j1", 7)  # type: ignore[arg-type]
    caller = asyncio.create_task(reports.checkpoint({"next": 5}))
    await link.next_request()
    caller.cancel()  # the handler is cancelled (a yield) while its checkpoint is in flight
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert reports.busy  # the request goes on: the yield waits for it
    flushed = asyncio.create_task(reports.flush())
    await asyncio.sleep(0)
    assert not flushed.done()
    link.answer()
    await flushed


class AnsweringLink:
    """Answers every request at once; records the log lines sent."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    async def request(self, method: str, params: dict[str, Any], resend: bool = True) -> Any:
        self.lines.extend((level, text) for _, level, text in params.get("lines", ()))
        return {}


async def _job() -> tuple[JobContext, AnsweringLink]:
    link = AnsweringLink()
    ctx = JobContext("j1", 7, "kind")
    ctx.attach(link, asyncio.get_running_loop())  # type: ignore[arg-type]
    return ctx, link


async def _sent(ctx: JobContext, link: AnsweringLink) -> list[tuple[str, str]]:
    if ctx.reports is not None:
        await ctx.reports.flush()
    return link.lines


async def test_captured_stdout_sends_whole_lines_and_the_rest_at_the_end() -> None:
    real = io.StringIO()
    stream = _JobStream(real, "stdout")  # type: ignore[arg-type]
    ctx, link = await _job()
    stream.write("outside any job\n")
    token = current_job.set(ctx)
    try:
        stream.write("one\ntw")
        stream.write("o\nthr")
    finally:
        current_job.reset(token)
    assert await _sent(ctx, link) == [("stdout", "one"), ("stdout", "two")]
    stream.end_job(ctx)
    assert (await _sent(ctx, link))[-1] == ("stdout", "thr")
    assert real.getvalue() == "outside any job\none\ntwo\nthr"  # everything passes through


async def test_log_records_inside_a_job_go_to_its_log_but_not_the_sdks_own() -> None:
    handler = JobLogHandler()
    ctx, link = await _job()
    record = logging.LogRecord("app.mail", logging.ERROR, __file__, 1, "sent %d", (3,), None)
    sdk = logging.LogRecord("worcr.worker", logging.INFO, __file__, 1, "internal", (), None)
    handler.emit(record)  # outside any job: nothing
    token = current_job.set(ctx)
    try:
        handler.emit(record)
        handler.emit(sdk)
    finally:
        current_job.reset(token)
    assert await _sent(ctx, link) == [("error", "app.mail: sent 3")]
    assert [level_name(n) for n in (5, 10, 20, 30, 40, 50, 60)] == [
        "debug", "debug", "info", "warning", "error", "critical", "critical"
    ]  # fmt: skip


async def test_long_lines_are_cut_and_big_batches_split_under_the_frame_limit() -> None:
    link = HeldLink()
    reports = JobReports(link, "j1", 7)  # type: ignore[arg-type]
    for i in range(300):
        reports.log("stdout", f"{i}:" + "x" * 20_000, at=1.0)  # 6 MB of text in all
    batches, sent = 0, 0
    while sent < 300:
        _, params = await link.next_request()
        assert all(len(x[2]) <= 8192 for x in params["lines"])
        assert sum(len(x[2]) for x in params["lines"]) <= 256 << 10
        link.answer({"stored": len(params["lines"])})
        batches += 1
        sent += len(params["lines"])
    await reports.flush()
    assert batches >= 10
    assert reports.dropped == 0


async def test_lines_past_the_attempts_cap_and_after_the_end_are_dropped() -> None:
    link = HeldLink()
    reports = JobReports(link, "j1", 7)  # type: ignore[arg-type]
    reports.log("info", "a", at=1.0)
    reports.log("info", "b", at=1.0)
    await link.next_request()
    reports.log("info", "c", at=1.0)
    link.answer({"stored": 1})  # the node kept one of two: the cap is reached
    await reports.flush()
    assert reports.capped
    reports.log("info", "d", at=1.0)
    assert len(link.sent) == 1
    assert reports.dropped == 2  # c (waiting when the cap was learnt) and d
    ended = JobReports(link, "j2", 1)  # type: ignore[arg-type]
    ended.close()
    ended.log("info", "late", at=1.0)
    ended.progress("n", 1, None)
    assert not ended.busy
    assert ended.dropped == 1


async def test_checkpoints_are_numbered_per_attempt() -> None:
    link = HeldLink()
    reports = JobReports(link, "j1", 7)  # type: ignore[arg-type]
    first = asyncio.create_task(reports.checkpoint({"next": 1}))
    await link.next_request()
    link.answer()
    second = asyncio.create_task(reports.checkpoint({"next": 2}))
    await link.next_request()
    assert [p["seq"] for _, p in link.sent] == [1, 2]
    link.answer()
    await asyncio.gather(first, second)


async def test_progress_requests_are_spaced_unless_a_flush_hurries_them() -> None:
    link = HeldLink()
    reports = JobReports(link, "j1", 7)  # type: ignore[arg-type]
    reports.progress("items", 1, 10)
    await link.next_request()
    reports.progress("items", 2, 10)
    link.answer()
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(link.sent) == 1  # the next one waits PROGRESS_INTERVAL ...
    flushed = asyncio.create_task(reports.flush())
    _, params = await link.next_request()  # ... or until the job's end flushes it
    assert params["counters"] == {"items": [2, 10]}
    link.answer()
    await flushed
