"""The function host: calls run in a child process (a real one, `python -m
worcr_node.functions.child`), the event loop runs meanwhile, a call that runs too long gets its
process killed, a process that dies fails only the call it was running, and the calls queued
behind go to the next process. `InlineHost` answers the same requests in this process."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest

from worcr_node.functions.host import InlineHost, ProcessHost, Reply
from worcr_node.functions.sandbox import CallError, Caps, CompileError

COUNTER = "n = 0\nfunction weight(job) n = n + 1 return n end"
SPIN = "function weight(job) local x = 0 for i = 1, job.loops do x = x + i end return 1 end"
FOREVER = "function weight(job) while true do end end"


@pytest.fixture
async def host() -> AsyncIterator[ProcessHost]:
    h = ProcessHost(Caps(time=5.0, memory=16 << 20), kill_after=0.5)
    yield h
    await h.close()


async def test_calls_compile_once_per_key_and_answer_in_order(host: ProcessHost) -> None:
    answers = await asyncio.gather(
        *(host.call(("c", 1), "lua", COUNTER, "weight", ({},)) for _ in range(5))
    )
    assert [a.value for a in answers] == [1, 2, 3, 4, 5]  # one state, kept between calls
    js = await host.call(("j", 1), "javascript", "function weight(j) { return j.k * 2 }",
                         "weight", ({"k": 21},))  # fmt: skip
    assert (js.value, js.error) == (42, None)
    host.forget([("c", 1)])  # the next call of that key compiles it again
    assert (await host.call(("c", 1), "lua", COUNTER, "weight", ({},))).value == 1


async def test_errors_come_back_typed(host: ProcessHost) -> None:
    bad = await host.call(("b", 1), "lua", "function weight( return 1 end", "weight", ({},))
    assert isinstance(bad.error, CompileError)
    assert bad.error.line == 1
    raised = await host.call(("r", 1), "lua", "function weight() error('no') end", "weight", ())
    assert isinstance(raised.error, CallError)
    assert raised.error.kind == "error"
    assert "no" in raised.error.message
    check = await host.check("javascript", "function weight( {", "weight")
    assert isinstance(check.error, CompileError)
    trial = await host.trial("lua", "function weight(a, b) return a + b end", "weight", (2, 3))
    assert (trial.value, trial.error) == (5, None)


async def test_the_event_loop_runs_while_a_call_runs(host: ProcessHost) -> None:
    """A call that keeps its process busy for a while: timers of this loop fire meanwhile in
    the process host, and none does with the inline host (the call holds the loop)."""
    await host.call(("s", 1), "lua", SPIN, "weight", ({"loops": 1},))  # started and compiled
    inline = InlineHost(Caps(time=5.0, memory=16 << 20))
    await inline.call(("s", 1), "lua", SPIN, "weight", ({"loops": 1},))
    job = {"loops": 20_000_000}

    async def ticks_during(call: asyncio.Future[Reply]) -> int:
        n = 0
        while not call.done():
            await asyncio.sleep(0.01)
            n += 1
        assert (await call).error is None, (await call).error
        return n

    inline_ticks = await ticks_during(
        asyncio.ensure_future(inline.call(("s", 1), "lua", SPIN, "weight", (job,)))
    )
    process_ticks = await ticks_during(
        asyncio.ensure_future(host.call(("s", 1), "lua", SPIN, "weight", (job,)))
    )
    assert inline_ticks <= 1  # the call ran inside one step of the loop
    assert process_ticks >= 5, process_ticks


async def test_a_call_running_too_long_is_killed_and_the_queue_goes_on(host: ProcessHost) -> None:
    await host.call(("c", 1), "lua", COUNTER, "weight", ({},))
    first_pid = host.pid
    runaway = asyncio.ensure_future(host.call(("f", 1), "lua", FOREVER, "weight", ({},)))
    behind = [asyncio.ensure_future(host.call(("c", 1), "lua", COUNTER, "weight", ({},)))
              for _ in range(3)]  # fmt: skip
    killed = await runaway
    assert isinstance(killed.error, CallError)
    assert killed.error.kind == "timeout"
    assert "killed" in killed.error.message
    assert killed.cpu >= host.kill_after  # counted as a far overrun by the breaker
    # the calls queued behind it ran in a new process (which compiled the counter again)
    assert [(await b).value for b in behind] == [1, 2, 3]
    assert host.kills == 1
    assert host.pid is not None
    assert host.pid != first_pid


async def test_a_process_that_dies_fails_only_the_call_it_was_running(host: ProcessHost) -> None:
    await host.call(("s", 1), "lua", SPIN, "weight", ({"loops": 1},))
    pid = host.pid
    assert pid is not None
    running = asyncio.ensure_future(host.call(("s", 1), "lua", SPIN, "weight", ({"loops": 10**9},)))
    queued = asyncio.ensure_future(host.call(("c", 1), "lua", COUNTER, "weight", ({},)))
    await asyncio.sleep(0)  # both written to the process
    os.kill(pid, signal.SIGKILL)  # as an engine crash would
    died = await running
    assert isinstance(died.error, CallError)
    assert died.error.kind == "error"
    assert "died" in died.error.message
    assert (await queued).value == 1
    assert host.deaths == 1
    assert host.kills == 0


async def test_a_closed_host_answers_with_an_error(host: ProcessHost) -> None:
    await host.call(("c", 1), "lua", COUNTER, "weight", ({},))
    await host.close()
    late = await host.call(("c", 1), "lua", COUNTER, "weight", ({},))
    assert isinstance(late.error, CallError)
    assert "stopping" in late.error.message


async def test_an_answer_msgpack_cannot_carry_is_a_result_error(host: ProcessHost) -> None:
    """A JavaScript number past 2^64 comes back from the engine as a Python int msgpack cannot
    pack: the call fails with kind "result", and the process lives on."""
    huge = await host.call(("h", 1), "javascript", "function weight() { return 1e20 }",
                           "weight", ())  # fmt: skip
    assert isinstance(huge.error, CallError)
    assert huge.error.kind == "result"
    inline = InlineHost(Caps(time=5.0, memory=16 << 20))
    same = await inline.call(("h", 1), "javascript", "function weight() { return 1e20 }",
                             "weight", ())  # fmt: skip
    assert isinstance(same.error, CallError)
    assert same.error.kind == "result"  # the same answer from both hosts
    assert (await host.call(("c", 1), "lua", COUNTER, "weight", ({},))).value == 1
    assert host.deaths == 0


async def test_closing_answers_every_call_in_flight(host: ProcessHost) -> None:
    await host.call(("c", 1), "lua", COUNTER, "weight", ({},))  # the process is up
    runaway = asyncio.ensure_future(host.call(("f", 1), "lua", FOREVER, "weight", ({},)))
    queued = asyncio.ensure_future(host.call(("c", 1), "lua", COUNTER, "weight", ({},)))
    await asyncio.sleep(0)  # both sent
    await host.close()
    for call in (runaway, queued):
        reply = await asyncio.wait_for(call, 5)
        assert isinstance(reply.error, CallError)


async def test_many_calls_in_one_request_are_timed_one_by_one(host: ProcessHost) -> None:
    """A batch (one request, one answer per call): a call that runs too long in the middle
    fails alone, and every other call is answered (the watchdog times each call, not the batch).
    The process writes a batch's answers a few at a time, so the host cannot tell which call
    ran when it killed the process: the calls not answered go to the next process one at a
    time, and the runaway is killed a second time, alone."""
    source = "function weight(job) if job.loop then while true do end end return job.n end"
    batch = [({"n": 1},), ({"n": 2},), ({"loop": True},), ({"n": 4},), ({"n": 5},)]
    replies = await host.call_many(("b", 1), "lua", source, "weight", batch)
    assert [r.value for r in replies] == [1, 2, None, 4, 5]
    assert isinstance(replies[2].error, CallError)
    assert replies[2].error.kind == "timeout"
    assert all(r.error is None for i, r in enumerate(replies) if i != 2)
    assert host.kills in (1, 2)  # 2 unless the answers before it were out already
    fine = await host.call_many(("c", 1), "lua", COUNTER, "weight", [({},)] * 50)
    assert [r.value for r in fine] == list(range(1, 51))
    inline = InlineHost(Caps(time=5.0, memory=16 << 20))
    assert [r.value for r in await inline.call_many(("c", 1), "lua", COUNTER, "weight",
                                                     [({},)] * 3)] == [1, 2, 3]  # fmt: skip


async def test_arguments_a_runtime_refuses_fail_their_own_call_only(host: ProcessHost) -> None:
    deep: Any = 1
    for _ in range(40):  # deeper than a function may be given
        deep = [deep]
    source = "function weight(job) return job.n end"
    batch = [({"n": 1},), ({"n": 2, "deep": deep},), ({"n": 3},)]
    replies = await host.call_many(("d", 1), "lua", source, "weight", batch)
    assert [r.value for r in replies] == [1, None, 3]
    assert isinstance(replies[1].error, CallError)
    assert replies[1].error.kind == "error"
    assert (host.kills, host.deaths) == (0, 0)
