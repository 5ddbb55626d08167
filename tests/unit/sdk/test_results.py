"""Batching of ack/fail/yield reports, per-item answers, and re-sending after failures."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from worcr.backoff import Backoff
from worcr.errors import ConnectionClosed, FrameTooLarge
from worcr.results import Reporter
from worcr.wire import RemoteError


class FakeSender:
    def __init__(self) -> None:
        self.closed = False
        self.sent: list[tuple[str, list[dict[str, Any]], asyncio.Future[Any]]] = []
        self.called = asyncio.Event()

    def call(self, method: str, params: dict[str, Any]) -> asyncio.Future[Any]:
        if self.closed:
            raise ConnectionClosed("closed")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.sent.append((method, params["jobs"], fut))
        self.called.set()
        return fut

    async def next_call(self) -> None:
        self.called.clear()
        async with asyncio.timeout(5):
            await self.called.wait()

    def answer_all(self) -> None:
        for _, items, fut in self.sent:
            if not fut.done():
                fut.set_result({"results": [None] * len(items)})


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_reports_in_one_iteration_go_out_as_one_request_per_method() -> None:
    sender = FakeSender()
    reporter = Reporter(batch_size=64, delay=0)
    reporter.attach(sender)
    for n in range(10):
        reporter.ack(f"a{n}", n, None if n % 2 else {"n": n})
    reporter.fail("f1", 1, "ValueError: x", "tb", retryable=False)
    reporter.fail("f2", 2, "E", None)
    reporter.yield_("y1", 3)
    assert sender.sent == []  # nothing before the loop turns
    await settle()
    assert [(m, len(items)) for m, items, _ in sender.sent] == [
        ("ack", 10),
        ("fail", 2),
        ("yield", 1),
    ]
    acks = sender.sent[0][1]
    assert acks[0] == {"id": "a0", "token": 0, "result": {"n": 0}}
    assert acks[1] == {"id": "a1", "token": 1}
    assert sender.sent[1][1] == [
        {"id": "f1", "token": 1, "error": "ValueError: x", "backtrace": "tb", "retryable": False},
        {"id": "f2", "token": 2, "error": "E"},
    ]
    assert reporter.in_flight == 13
    assert reporter.queued == 0
    sender.answer_all()
    await settle()
    assert reporter.in_flight == 0


async def test_a_full_batch_is_sent_at_once() -> None:
    sender = FakeSender()
    reporter = Reporter(batch_size=4, delay=10)
    reporter.attach(sender)
    for n in range(9):
        reporter.ack(str(n), n)
    assert [len(items) for _, items, _ in sender.sent] == [4, 4]
    assert reporter.queued == 1
    reporter.flush()
    assert [len(items) for _, items, _ in sender.sent] == [4, 4, 1]


async def test_reports_wait_for_the_request_in_flight_to_be_answered() -> None:
    sender = FakeSender()
    reporter = Reporter(batch_size=64, delay=10)
    reporter.attach(sender)
    reporter.ack("a", 1)
    await settle()
    assert len(sender.sent) == 1  # idle: sent on the next iteration
    reporter.ack("b", 2)
    reporter.ack("c", 3)
    await settle()
    assert len(sender.sent) == 1  # one request in flight: the others wait for its answer
    sender.answer_all()
    await settle()
    assert [[i["id"] for i in items] for _, items, _ in sender.sent] == [["a"], ["b", "c"]]


async def test_delay_bounds_the_wait_behind_a_slow_answer() -> None:
    sender = FakeSender()
    reporter = Reporter(batch_size=64, delay=0.01)
    reporter.attach(sender)
    reporter.ack("a", 1)
    await sender.next_call()
    reporter.ack("b", 2)
    await settle()
    assert len(sender.sent) == 1
    await sender.next_call()  # the first request is never answered
    assert [[i["id"] for i in items] for _, items, _ in sender.sent] == [["a"], ["b"]]


async def test_large_backlogs_are_split_at_the_protocol_batch_limit() -> None:
    sender = FakeSender()
    reporter = Reporter(batch_size=64, max_batch=100)
    for n in range(250):
        reporter.ack(str(n), n)  # disconnected: all queued
    assert reporter.queued == 250
    reporter.attach(sender)
    assert [len(items) for _, items, _ in sender.sent] == [100, 100, 50]


async def test_stale_items_are_logged_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    sender = FakeSender()
    reporter = Reporter(delay=0)
    reporter.attach(sender)
    reporter.ack("ok", 1)
    reporter.ack("old", 2)
    reporter.flush()
    _, _, fut = sender.sent[0]
    with caplog.at_level(logging.WARNING, logger="worcr.results"):
        fut.set_result({"results": [None, {"code": "STALE_TOKEN", "message": "lease gone"}]})
        await settle()
    assert "ack of job old refused: its lease was lost" in caplog.text
    assert reporter.in_flight == 0
    assert reporter.queued == 0


async def test_reports_lost_with_the_connection_are_sent_again_after_reconnect() -> None:
    first = FakeSender()
    reporter = Reporter(delay=0)
    reporter.attach(first)
    reporter.ack("a", 1)
    reporter.fail("b", 2, "E")
    reporter.flush()
    for _, _, fut in first.sent:
        fut.set_exception(ConnectionClosed("gone"))
    reporter.attach(None)
    await settle()
    assert reporter.queued == 2
    assert reporter.in_flight == 0
    reporter.ack("c", 3)  # while disconnected: queued, no timer needed
    second = FakeSender()
    reporter.attach(second)
    assert sorted((m, [i["id"] for i in items]) for m, items, _ in second.sent) == [
        ("ack", ["a", "c"]),
        ("fail", ["b"]),
    ]


async def test_a_closed_sender_keeps_the_reports() -> None:
    sender = FakeSender()
    reporter = Reporter(delay=0)
    reporter.attach(sender)
    sender.closed = True
    reporter.ack("a", 1)
    reporter.flush()
    assert reporter.queued == 1


async def test_retryable_refusal_is_retried_after_backoff() -> None:
    sender = FakeSender()
    reporter = Reporter(delay=0, retry_backoff=Backoff(base=0.001, jitter=0))
    reporter.attach(sender)
    reporter.yield_("a", 1)
    reporter.flush()
    sender.sent[0][2].set_exception(RemoteError("UNAVAILABLE", "db down", retryable=True))
    await sender.next_call()
    assert sender.sent[1][0] == "yield"
    assert sender.sent[1][1] == [{"id": "a", "token": 1}]


async def test_final_refusal_drops_the_batch(caplog: pytest.LogCaptureFixture) -> None:
    sender = FakeSender()
    reporter = Reporter(delay=0)
    reporter.attach(sender)
    reporter.ack("a", 1)
    reporter.flush()
    with caplog.at_level(logging.ERROR, logger="worcr.results"):
        sender.sent[0][2].set_exception(RemoteError("BAD_REQUEST", "nope"))
        await settle()
    assert "refused 1 ack report(s) for good" in caplog.text
    assert reporter.queued == 0
    assert reporter.in_flight == 0


async def test_drain_waits_for_answers_and_for_a_reconnect() -> None:
    reporter = Reporter(delay=0)
    reporter.ack("a", 1)
    draining = asyncio.create_task(reporter.drain())
    await settle()
    assert not draining.done()
    sender = FakeSender()
    reporter.attach(sender)
    await settle()
    assert not draining.done()
    sender.answer_all()
    async with asyncio.timeout(5):
        await draining
    await reporter.drain()  # nothing left: immediate


async def test_batches_over_the_frame_limit_are_halved() -> None:
    class SmallFrames(FakeSender):
        def call(self, method: str, params: dict[str, Any]) -> asyncio.Future[Any]:
            if len(params["jobs"]) > 3:
                raise FrameTooLarge(10_000, 1_000)
            return super().call(method, params)

    sender = SmallFrames()
    reporter = Reporter(batch_size=10)
    reporter.attach(sender)
    for n in range(10):
        reporter.ack(str(n), n, "r" * 100)
    assert [len(items) for _, items, _ in sender.sent] == [2, 3, 2, 3]
    assert [i["id"] for _, items, _ in sender.sent for i in items] == [str(n) for n in range(10)]
    assert reporter.queued == 0
