"""Handler argument binding, failure descriptions and the cancel flag."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from worcr import Permanent
from worcr.context import (
    CancelFlag,
    JobContext,
    argument_mismatch,
    describe_exception,
    invoke,
    is_retryable,
    truncate_backtrace,
)


def ctx_with(args: Any) -> JobContext:
    return JobContext("j1", 7, "k", args)


def echo(ctx: JobContext, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
    return (ctx.id, args, kwargs)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([1, "a"], ((1, "a"), {})),
        ([], ((), {})),
        ({"to": "bob", "n": 2}, ((), {"to": "bob", "n": 2})),
        ("text", (("text",), {})),
        (None, ((None,), {})),
        (5, ((5,), {})),
    ],
)
def test_invoke_binds_list_map_and_scalar(args: Any, expected: tuple[Any, Any]) -> None:
    assert invoke(echo, ctx_with(args)) == ("j1", *expected)


def test_invoke_passes_a_map_with_non_string_keys_whole() -> None:
    args = {1: "one", b"k": "bytes"}
    assert invoke(echo, ctx_with(args)) == ("j1", (args,), {})


def test_argument_mismatch_tells_binding_errors_apart() -> None:
    def handler(ctx: JobContext, address: str) -> None: ...

    assert argument_mismatch(handler, ctx_with(["a@b"])) is None
    message = argument_mismatch(handler, ctx_with(["a", "b"]))
    assert message is not None
    assert "do not match handler" in message
    assert "(ctx" in message
    assert argument_mismatch(handler, ctx_with({"addr": "x"})) is not None
    assert argument_mismatch(handler, ctx_with({"address": "x"})) is None


def test_from_wire_validates_the_identity_fields() -> None:
    ctx = JobContext.from_wire(
        {"id": "a", "token": 3, "kind": "k", "args": [1], "attempt": 2, "tags": ["x"]}
    )
    assert (ctx.id, ctx.token, ctx.kind, ctx.args, ctx.attempt, ctx.tags) == (
        "a",
        3,
        "k",
        [1],
        2,
        ["x"],
    )
    assert ctx.tenant == "default"
    assert not ctx.cancelled
    with pytest.raises(ValueError, match="id/token/kind"):
        JobContext.from_wire({"id": "a", "kind": "k"})
    with pytest.raises(ValueError, match="must be a map"):
        JobContext.from_wire([1])


def test_retryable_unless_permanent_or_flagged() -> None:
    class NoRetry(Exception):
        retryable = False

    assert is_retryable(ValueError("x"))
    assert not is_retryable(Permanent("bad input"))
    assert not is_retryable(NoRetry())


def test_describe_exception_and_limits() -> None:
    assert describe_exception(ValueError("boom")) == "ValueError: boom"
    assert describe_exception(KeyError()) == "KeyError"
    long = describe_exception(RuntimeError("x" * 100), limit=20)
    assert len(long) == 20
    assert long.endswith("...")
    text = "Traceback\n" + "line\n" * 100
    cut = truncate_backtrace(text, limit=60)
    assert len(cut) == 60
    assert cut.startswith("...(traceback truncated)")
    assert cut.endswith("line\n")
    assert truncate_backtrace("short", limit=60) == "short"


def test_cancel_flag_wakes_a_waiting_thread() -> None:
    flag = CancelFlag()
    assert flag.wait(0) is False
    seen: list[bool] = []
    started = threading.Event()

    def waiter() -> None:
        started.set()
        seen.append(flag.wait(5))

    thread = threading.Thread(target=waiter)
    thread.start()
    started.wait()
    flag.set()
    thread.join(5)
    assert seen == [True]
    assert flag.is_set()
    assert flag


async def test_cancel_flag_wakes_an_async_waiter() -> None:
    flag = CancelFlag()
    waiting = asyncio.create_task(flag.wait_async())
    await asyncio.sleep(0)
    assert not waiting.done()
    flag.set()
    async with asyncio.timeout(5):
        await waiting
    await flag.wait_async()  # already set: returns at once


def test_logger_carries_job_identity() -> None:
    ctx = ctx_with([])
    assert ctx.logger.extra == {"job_id": "j1", "job_kind": "k", "attempt": 1}
    assert ctx.logger is ctx.logger
