"""The worker runtime against the in-process fake node: run, report, cancel, reconnect, stop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import pytest

from worcr import JobContext, Permanent, RemoteError, Worker
from worcr.backoff import Backoff

if TYPE_CHECKING:
    from conftest import FakeNode

StartWorker = Callable[[Worker], "asyncio.Task[int]"]


async def unused(ctx: JobContext) -> None: ...


def make_worker(node: FakeNode, **kwargs: Any) -> Worker:
    kwargs.setdefault("backoff", Backoff(base=0.001, cap=0.01, jitter=0))
    worker = Worker([node.address], worker_id="w1", **kwargs)
    worker.register("unused", unused)
    return worker


@pytest.fixture
async def start() -> AsyncIterator[Callable[[Worker], Any]]:
    running: list[tuple[Worker, asyncio.Task[int]]] = []

    async def start_worker(worker: Worker) -> asyncio.Task[int]:
        task = asyncio.create_task(worker.run(install_signal_handlers=False))
        running.append((worker, task))
        ready = asyncio.create_task(worker.ready.wait())
        await asyncio.wait([ready, task], timeout=5, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if task.done():
            task.result()
        assert worker.ready.is_set()
        return task

    yield start_worker
    for worker, task in running:
        worker.stop()
        async with asyncio.timeout(10):
            await asyncio.gather(task, return_exceptions=True)


def ids(items: list[dict[str, Any]]) -> list[str]:
    return [item["id"] for item in items]


async def test_async_and_thread_handlers_are_acked(fake_node: FakeNode, start: Any) -> None:
    worker = make_worker(fake_node, tags=["gpu"], concurrency=3, prefetch=1)
    threads: list[str] = []

    @worker.job("add")
    async def add(ctx: JobContext, a: int, b: int) -> int:
        return a + b

    @worker.job("greet")
    def greet(ctx: JobContext, name: str, punct: str = "!") -> str:
        threads.append(threading.current_thread().name)
        return f"hi {name}{punct}"

    @worker.job("noop")
    async def noop(ctx: JobContext) -> None:
        return None

    await start(worker)
    hello = fake_node.calls("hello")[0]
    assert (hello["capacity"], hello["kinds"], hello["tags"]) == (
        4,
        ["add", "greet", "noop", "unused"],
        ["gpu"],
    )
    assert hello["worker_id"] == "w1"
    assert "running" not in hello
    a = fake_node.add_job("add", [2, 3])
    g = fake_node.add_job("greet", {"name": "bob"})
    n = fake_node.add_job("noop")
    await fake_node.wait_for(lambda: len(fake_node.items("ack")) == 3)
    acks = {item["id"]: item for item in fake_node.items("ack")}
    assert acks[a]["result"] == 5
    assert acks[g]["result"] == "hi bob!"
    assert "result" not in acks[n]
    assert threads
    assert threads[0].startswith("worcr-job")
    assert all(item["token"] == fake_node.jobs[item["id"]]["token"] for item in acks.values())


async def test_many_jobs_flow_through_batched_acks(fake_node: FakeNode, start: Any) -> None:
    worker = make_worker(fake_node, concurrency=20)

    @worker.job("noop")
    async def noop(ctx: JobContext) -> None:
        return None

    await start(worker)
    for _ in range(500):
        fake_node.add_job("noop")
    await fake_node.wait_for(lambda: len(fake_node.items("ack")) == 500)
    assert len(set(ids(fake_node.items("ack")))) == 500
    assert len(fake_node.calls("ack")) < 500  # batched


async def test_failures_are_reported_with_retryability(fake_node: FakeNode, start: Any) -> None:
    worker = make_worker(fake_node)

    @worker.job("boom")
    async def boom(ctx: JobContext) -> None:
        raise ValueError("boom")

    @worker.job("bad")
    def bad(ctx: JobContext) -> None:
        raise Permanent("bad input")

    @worker.job("strict")
    async def strict(ctx: JobContext, only: int) -> None: ...

    @worker.job("unencodable")
    async def unencodable(ctx: JobContext) -> object:
        return object()

    await start(worker)
    jobs = {
        kind: fake_node.add_job(kind, args)
        for kind, args in [
            ("boom", []),
            ("bad", []),
            ("strict", [1, 2]),
            ("unencodable", []),
            ("nobody", []),
        ]
    }
    await fake_node.wait_for(lambda: len(fake_node.items("fail")) == 5)
    fails = {item["id"]: item for item in fake_node.items("fail")}
    boom_fail = fails[jobs["boom"]]
    assert boom_fail["error"] == "ValueError: boom"
    assert "retryable" not in boom_fail
    assert "Traceback" in boom_fail["backtrace"]
    assert "raise ValueError" in boom_fail["backtrace"]
    assert fails[jobs["bad"]]["error"] == "Permanent: bad input"
    assert fails[jobs["bad"]]["retryable"] is False
    assert "do not match handler" in fails[jobs["strict"]]["error"]
    assert fails[jobs["strict"]]["retryable"] is False
    assert "cannot be encoded as msgpack" in fails[jobs["unencodable"]]["error"]
    assert "no handler for job kind 'nobody'" in fails[jobs["nobody"]]["error"]
    assert fails[jobs["nobody"]]["retryable"] is False


async def test_concurrency_limits_running_jobs_and_prefetch_waits(
    fake_node: FakeNode, start: Any
) -> None:
    worker = make_worker(fake_node, concurrency=2, prefetch=2)
    release = asyncio.Event()
    running = 0
    peak = 0

    @worker.job("slow")
    async def slow(ctx: JobContext) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1

    await start(worker)
    for _ in range(10):
        fake_node.add_job("slow")
    await fake_node.wait_for(lambda: running == 2 and worker.held == 4)
    assert len(fake_node.queue) == 6
    release.set()
    await fake_node.wait_for(lambda: len(fake_node.items("ack")) == 10)
    assert peak == 2


async def test_cancel_stops_the_job_frees_the_slot_and_reports_nothing(
    fake_node: FakeNode, start: Any
) -> None:
    worker = make_worker(fake_node, concurrency=1, prefetch=0)
    started = asyncio.Event()
    seen: list[str] = []

    @worker.job("forever")
    async def forever(ctx: JobContext) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append(f"cancelled={ctx.cancelled.is_set()}")
            raise

    @worker.job("quick")
    async def quick(ctx: JobContext) -> str:
        return "done"

    await start(worker)
    victim = fake_node.add_job("forever")
    after = fake_node.add_job("quick")
    async with asyncio.timeout(5):
        await started.wait()
    fake_node.cancel(victim)
    await fake_node.wait_for(lambda: ids(fake_node.items("ack")) == [after])
    assert seen == ["cancelled=True"]
    assert victim not in ids(fake_node.items("fail")) + ids(fake_node.items("yield"))


async def test_heartbeats_follow_the_hello_interval(fake_node: FakeNode, start: Any) -> None:
    fake_node.heartbeat_ms = 10
    await start(make_worker(fake_node))
    await fake_node.wait_for(lambda: len(fake_node.calls("heartbeat")) >= 3)


async def test_reconnect_lists_running_jobs_and_reports_there(
    fake_node: FakeNode, start: Any
) -> None:
    worker = make_worker(fake_node)
    release = threading.Event()
    started = threading.Event()

    @worker.job("blocking")
    def blocking(ctx: JobContext) -> str:
        started.set()
        release.wait(5)
        return "ok"

    await start(worker)
    job = fake_node.add_job("blocking")
    await asyncio.to_thread(started.wait, 5)
    fake_node.drop_connections()
    await fake_node.wait_for(lambda: len(fake_node.calls("hello")) == 2)
    running = fake_node.calls("hello")[1]["running"]
    assert running == [{"id": job, "token": fake_node.jobs[job]["token"]}]
    release.set()
    await fake_node.wait_for(lambda: ids(fake_node.items("ack")) == [job])


async def test_an_ack_lost_with_the_connection_is_sent_again(
    fake_node: FakeNode, start: Any
) -> None:
    worker = make_worker(fake_node)

    @worker.job("noop")
    async def noop(ctx: JobContext) -> None:
        return None

    await start(worker)
    fake_node.drop_on = "ack"  # the node reads the ack, then the connection dies unanswered
    job = fake_node.add_job("noop")
    await fake_node.wait_for(lambda: fake_node.finished == [("ack", job)])
    assert len(fake_node.calls("ack")) == 2
    assert len(fake_node.calls("hello")) == 2


async def test_worker_rotates_past_an_unreachable_node(fake_node: FakeNode, start: Any) -> None:
    worker = Worker(
        ["127.0.0.1:1", fake_node.address], backoff=Backoff(base=0.001, jitter=0), worker_id="w"
    )
    worker.register("unused", unused)
    await start(worker)
    assert worker.node_id == "fake"


async def test_graceful_stop_finishes_running_yields_waiting_and_says_bye(
    fake_node: FakeNode, start: Any
) -> None:
    worker = make_worker(fake_node, concurrency=1, prefetch=3)
    release = asyncio.Event()
    started = asyncio.Event()

    @worker.job("slow")
    async def slow(ctx: JobContext) -> str:
        started.set()
        await release.wait()
        return "finished"

    task = await start(worker)
    jobs = [fake_node.add_job("slow") for _ in range(4)]
    async with asyncio.timeout(5):
        await started.wait()
    worker.stop()
    await fake_node.wait_for(lambda: len(fake_node.items("yield")) == 3)
    assert fake_node.calls("capacity") == [{"capacity": 0}]
    assert not task.done()
    release.set()
    async with asyncio.timeout(5):
        assert await task == 0
    assert ids(fake_node.items("ack")) == jobs[:1]
    assert sorted(ids(fake_node.items("yield"))) == sorted(jobs[1:])
    assert [name for name, _ in fake_node.received][-1] == "bye"


async def test_shutdown_timeout_cancels_and_yields_running_jobs(
    fake_node: FakeNode, start: Any
) -> None:
    worker = make_worker(fake_node, shutdown_timeout=0.05)
    started = asyncio.Event()
    flags: list[JobContext] = []

    @worker.job("stuck")
    async def stuck(ctx: JobContext) -> None:
        flags.append(ctx)
        started.set()
        await asyncio.Event().wait()

    task = await start(worker)
    job = fake_node.add_job("stuck")
    async with asyncio.timeout(5):
        await started.wait()
    worker.stop()
    async with asyncio.timeout(5):
        assert await task == 0
    assert ids(fake_node.items("yield")) == [job]
    assert fake_node.items("fail") == []
    assert fake_node.items("ack") == []
    assert flags[0].cancelled.is_set()


async def test_bad_token_makes_run_fail(fake_node: FakeNode) -> None:
    worker = make_worker(fake_node, token="bad")
    with pytest.raises(RemoteError, match="UNAUTHORIZED"):
        async with asyncio.timeout(5):
            await worker.run(install_signal_handlers=False)


async def test_stop_before_run_returns_at_once(fake_node: FakeNode) -> None:
    worker = make_worker(fake_node)
    worker.stop()
    async with asyncio.timeout(5):
        assert await worker.run(install_signal_handlers=False) == 0


async def test_a_worker_without_handlers_refuses_to_run() -> None:
    with pytest.raises(ValueError, match="no job handler"):
        await Worker().run(install_signal_handlers=False)


def test_configuration_defaults_and_mistakes() -> None:
    worker = Worker(concurrency=4)
    assert (worker.prefetch, worker.threads, worker.capacity) == (4, 4, 8)
    worker.configure(concurrency=6, prefetch=0, tags=["a"])
    assert (worker.capacity, worker.threads, worker.tags) == (6, 6, ["a"])
    with pytest.raises(ValueError, match="concurrency"):
        worker.configure(concurrency=0)
    with pytest.raises(TypeError, match="did you mean"):
        worker.configure(tags="gpu")
