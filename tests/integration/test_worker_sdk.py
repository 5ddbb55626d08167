"""The Python SDK against a real node: `worcr.Worker` in-process and as the `python -m worcr.worker`
subprocess, `worcr.Client` and `worcr.SyncClient`.

What is checked is what lands in PostgreSQL (job rows and `worcr_attempts`), not what the SDK
believes. Workers in subprocesses announce on stdout that a job started (see
tests/integration/jobs/sample.py), so the tests await that line instead of sleeping.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import asyncpg
import msgpack
import pytest

import worcr
from tests.conftest import NodeFactory
from tests.rawclient import RawClient
from tests.waiting import wait_until
from tests.workers import SpawnWorker
from worcr_node.node import Node

# -- helpers -----------------------------------------------------------------------------------


async def job_row(node: Node, job_id: str) -> asyncpg.Record:
    row = await node.store.job_get(uuid.UUID(job_id))
    assert row is not None, f"job {job_id} is not stored"
    return row


async def wait_state(node: Node, job_id: str, state: str, timeout: float = 15.0) -> asyncpg.Record:
    async def reached() -> bool:
        row = await job_row(node, job_id)
        return bool(row["state"] == state)

    try:
        await wait_until(reached, timeout)
    except AssertionError:
        row = await job_row(node, job_id)
        raise AssertionError(f"job {job_id} is {row['state']}, not {state}") from None
    return await job_row(node, job_id)


async def attempts(node: Node, job_id: str) -> list[asyncpg.Record]:
    return await node.store.attempts_of_job(uuid.UUID(job_id))


async def outcomes(node: Node, job_id: str) -> list[str]:
    return [a["outcome"] for a in await attempts(node, job_id)]


def result_of(row: asyncpg.Record) -> Any:
    data = row["result"]
    return None if data is None else msgpack.unpackb(data, raw=False)


def make_worker(node: Node, **options: Any) -> worcr.Worker:
    options.setdefault("concurrency", 4)
    options.setdefault("shutdown_timeout", 2.0)
    return worcr.Worker(nodes=[node.worker_address], **options)


@asynccontextmanager
async def running(worker: worcr.Worker) -> AsyncIterator[worcr.Worker]:
    """Run an in-process worker until the block ends, then stop it gracefully."""
    task = asyncio.create_task(worker.run(install_signal_handlers=False))
    ready = asyncio.create_task(worker.ready.wait())
    try:
        await asyncio.wait([task, ready], timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # raises why it stopped
            raise AssertionError("the worker stopped before it connected")
        assert worker.ready.is_set(), "the worker did not connect in time"
        yield worker
    finally:
        ready.cancel()
        await asyncio.gather(ready, return_exceptions=True)
        worker.stop()
        code = await asyncio.wait_for(task, 15)
    assert code == 0


# -- in-process worker, Client, SyncClient -------------------------------------------------------


async def test_async_and_plain_handlers_complete_with_list_and_dict_args(node: Node) -> None:
    worker = make_worker(node)
    threads: dict[str, str] = {}

    @worker.job("sdk.add")
    async def add(ctx: worcr.JobContext, a: int, b: int) -> int:
        threads[ctx.id] = threading.current_thread().name
        return a + b

    @worker.job("sdk.greet")
    def greet(ctx: worcr.JobContext, name: str, punctuation: str = "!") -> dict[str, Any]:
        threads[ctx.id] = threading.current_thread().name
        return {"greeting": f"hello {name}{punctuation}", "attempt": ctx.attempt}

    async with running(worker), worcr.Client(node.worker_address) as client:
        added = await client.enqueue("sdk.add", 2, 3)
        by_dict = await client.enqueue("sdk.greet", args={"name": "bob", "punctuation": "?"})
        by_list = await client.enqueue("sdk.greet", args=["ann"])
        for res in (added, by_dict, by_list):
            assert (res.state, res.duplicate) == ("queued", False)
        rows = [await wait_state(node, r.id, "completed") for r in (added, by_dict, by_list)]

    assert [result_of(r) for r in rows] == [
        5,
        {"greeting": "hello bob?", "attempt": 1},
        {"greeting": "hello ann!", "attempt": 1},
    ]
    for row in rows:
        assert row["worker_id"] == worker.worker_id
        assert row["attempt"] == 1
        assert await outcomes(node, str(row["id"])) == ["completed"]
    # async handlers run on the worker's loop, plain functions in its thread pool
    assert threads[added.id] == threading.current_thread().name
    assert threads[by_dict.id].startswith("worcr-job")
    assert threads[by_list.id].startswith("worcr-job")


async def test_raising_handler_leaves_job_retrying_with_error_and_backtrace(node: Node) -> None:
    worker = make_worker(node)

    @worker.job("sdk.flaky")
    async def flaky(ctx: worcr.JobContext) -> None:
        raise ValueError(f"boom on attempt {ctx.attempt}")

    async with running(worker), worcr.Client(node.worker_address) as client:
        job = await client.enqueue("sdk.flaky", max_attempts=3, backoff={"base": 3600, "jitter": 0})
        row = await wait_state(node, job.id, "retrying")

    assert row["attempt"] == 1
    assert row["last_error"] == "ValueError: boom on attempt 1"
    assert row["run_at"] - row["updated_at"] > timedelta(minutes=50)  # the backoff policy
    [attempt] = await attempts(node, job.id)
    assert attempt["outcome"] == "failed"
    assert attempt["attempt"] == 1
    assert attempt["worker_id"] == worker.worker_id
    assert attempt["error"] == "ValueError: boom on attempt 1"
    backtrace = attempt["backtrace"]
    assert backtrace.startswith("Traceback (most recent call last)")
    assert "in flaky" in backtrace
    assert 'raise ValueError(f"boom on attempt {ctx.attempt}")' in backtrace


async def test_raising_plain_handler_is_dead_after_its_last_attempt(
    node_factory: NodeFactory,
) -> None:
    node = await node_factory(duty_periods={"promote": 0.05})
    worker = make_worker(node)

    @worker.job("sdk.broken")
    def broken(ctx: worcr.JobContext) -> None:
        raise RuntimeError(f"attempt {ctx.attempt}/{ctx.max_attempts}")

    async with running(worker), worcr.Client(node.worker_address) as client:
        backoff = {"base": 0.05, "jitter": 0.0}
        job = await client.enqueue("sdk.broken", max_attempts=2, backoff=backoff)
        row = await wait_state(node, job.id, "dead")

    assert row["attempt"] == 2
    assert row["last_error"] == "RuntimeError: attempt 2/2"
    assert row["finished_at"] is not None
    history = await attempts(node, job.id)
    assert [(a["attempt"], a["outcome"], a["error"]) for a in history] == [
        (1, "failed", "RuntimeError: attempt 1/2"),
        (2, "failed", "RuntimeError: attempt 2/2"),
    ]
    assert all("in broken" in a["backtrace"] for a in history)


class NotWorthRetrying(Exception):
    retryable = False


@pytest.mark.parametrize(
    ("exc", "error"),
    [
        (worcr.Permanent("no such user"), "Permanent: no such user"),
        (NotWorthRetrying("bad input"), "NotWorthRetrying: bad input"),
    ],
)
async def test_permanent_error_is_dead_at_once(node: Node, exc: Exception, error: str) -> None:
    worker = make_worker(node)

    @worker.job("sdk.permanent")
    async def permanent(ctx: worcr.JobContext) -> None:
        raise exc

    async with running(worker), worcr.Client(node.worker_address) as client:
        job = await client.enqueue("sdk.permanent")  # default max_attempts: 25
        row = await wait_state(node, job.id, "dead")

    assert row["attempt"] == 1
    assert row["max_attempts"] == 25
    assert row["last_error"] == error
    history = await attempts(node, job.id)
    assert [(a["outcome"], a["error"]) for a in history] == [("failed", error)]
    assert history[0]["backtrace"]
    assert "in permanent" in history[0]["backtrace"]


async def test_arguments_that_do_not_fit_the_handler_are_dead_at_once(node: Node) -> None:
    worker = make_worker(node)

    @worker.job("sdk.one_arg")
    async def one_arg(ctx: worcr.JobContext, a: int) -> int:
        return a

    async with running(worker), worcr.Client(node.worker_address) as client:
        job = await client.enqueue("sdk.one_arg", 1, 2)
        row = await wait_state(node, job.id, "dead")
    assert row["attempt"] == 1
    assert row["last_error"].startswith("TypeError: arguments of job 'sdk.one_arg' do not match")


async def test_result_that_cannot_be_sent_fails_the_job_for_good(node: Node) -> None:
    worker = make_worker(node)

    @worker.job("sdk.odd_result")
    async def odd_result(ctx: worcr.JobContext) -> object:
        return {1, 2}  # a set is not a msgpack value

    async with running(worker), worcr.Client(node.worker_address) as client:
        job = await client.enqueue("sdk.odd_result")
        row = await wait_state(node, job.id, "dead")
    assert row["attempt"] == 1
    assert row["result"] is None
    assert "cannot be encoded as msgpack" in row["last_error"]


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (float("nan"), "NaN"),
        (msgpack.Timestamp(0), "extension type"),
        (functools.reduce(lambda inner, _: [inner], range(40), [1]), "deeper than 32"),
        (functools.reduce(lambda inner, _: [inner], range(30), [1]), None),  # 31 levels: fine
    ],
)
async def test_result_the_node_would_refuse_fails_only_its_job(
    node: Node, value: object, why: str | None
) -> None:
    """A result without a JSON form (the node refuses the whole ack request for one) fails its
    own job at the worker; the other jobs' acks, batched with it, are recorded."""
    worker = make_worker(node)

    @worker.job("sdk.result")
    async def result(ctx: worcr.JobContext, bad: bool) -> object:
        return value if bad else "fine"

    async with running(worker), worcr.Client(node.worker_address) as client:
        good = [await client.enqueue("sdk.result", False) for _ in range(5)]
        odd = await client.enqueue("sdk.result", True)
        row = await wait_state(node, odd.id, "completed" if why is None else "dead")
        for job in good:
            await wait_state(node, job.id, "completed")
    if why is not None:
        assert "cannot be stored" in row["last_error"]
        assert why in row["last_error"]


async def test_sync_client_from_a_thread_enqueues_idempotently(node: Node) -> None:
    worker = make_worker(node)

    @worker.job("sdk.times_ten")
    def times_ten(ctx: worcr.JobContext, x: int) -> int:
        return x * 10

    fixed = str(uuid.uuid4())

    def produce() -> list[worcr.EnqueueResult]:
        with worcr.SyncClient(node.worker_address) as client:
            first = client.enqueue("sdk.times_ten", 1, id=fixed)
            again = client.enqueue("sdk.times_ten", 1, id=fixed)
            many = client.enqueue_many(
                [{"kind": "sdk.times_ten", "args": [2]}, worcr.JobSpec("sdk.times_ten", args=[3])]
            )
        return [first, again, *many]

    first, again, two, three = await asyncio.to_thread(produce)
    assert (first.id, first.duplicate) == (fixed, False)
    assert (again.id, again.duplicate) == (fixed, True)
    assert len({first.id, two.id, three.id}) == 3
    async with running(worker):
        rows = [await wait_state(node, j.id, "completed") for j in (first, two, three)]
    assert [result_of(r) for r in rows] == [10, 20, 30]
    assert await outcomes(node, fixed) == ["completed"]


@pytest.mark.parametrize("plain", [False, True], ids=["async", "plain"])
async def test_cancel_of_a_running_job_stops_its_handler_and_refuses_its_late_ack(
    node: Node, plain: bool
) -> None:
    # One slot and no prefetch: the next job can only run if the cancel freed the slot on both
    # the worker's side and the node's (credit) side.
    worker = make_worker(node, concurrency=1, prefetch=0)
    loop = asyncio.get_running_loop()
    started: asyncio.Queue[worcr.JobContext] = asyncio.Queue()
    flag_seen: asyncio.Future[bool] = loop.create_future()

    async def slow_async(ctx: worcr.JobContext) -> str:
        started.put_nowait(ctx)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            flag_seen.set_result(ctx.cancelled.is_set())
            raise
        return "finished anyway"

    def slow_plain(ctx: worcr.JobContext) -> str:
        loop.call_soon_threadsafe(started.put_nowait, ctx)
        flagged = ctx.cancelled.wait(30)
        loop.call_soon_threadsafe(flag_seen.set_result, flagged)
        return "finished anyway"

    worker.register("sdk.slow", slow_plain if plain else slow_async)

    @worker.job("sdk.quick")
    async def quick(ctx: worcr.JobContext) -> str:
        return "quick"

    async with running(worker), worcr.Client(node.worker_address) as client:
        job = await client.enqueue("sdk.slow", reserve_for=30)
        ctx = await asyncio.wait_for(started.get(), 10)
        assert ctx.id == job.id
        assert await node.manager.cancel(uuid.UUID(job.id)) == (True, "running")
        assert await asyncio.wait_for(flag_seen, 10) is True
        after = await client.enqueue("sdk.quick")
        assert result_of(await wait_state(node, after.id, "completed")) == "quick"

        raw = await RawClient.connect(node.worker_address)
        try:
            await raw.hello()
            late = await raw.call("ack", {"jobs": [{"id": job.id, "token": ctx.token}]})
        finally:
            await raw.close()
    assert late["results"][0]["code"] == "STALE_TOKEN"
    row = await job_row(node, job.id)
    assert row["state"] == "cancelled"
    assert row["result"] is None
    assert "completed" not in await outcomes(node, job.id)


# -- worker subprocesses: kill -9 and SIGTERM ----------------------------------------------------


async def test_worker_killed_mid_job_its_job_runs_again_once_elsewhere(
    node: Node, spawn_worker: SpawnWorker
) -> None:
    victim = await spawn_worker(node, "--concurrency", "1")
    async with worcr.Client(node.worker_address) as client:
        job = await client.enqueue("sample.block", reserve_for=1.0)
    job_id, attempt, token = await victim.started()
    assert (job_id, attempt) == (job.id, 1)
    row = await job_row(node, job.id)
    assert (row["state"], row["lease_token"]) == ("running", token)

    victim.proc.send_signal(signal.SIGKILL)
    assert await victim.wait(10) == -signal.SIGKILL

    rescuer = make_worker(node, concurrency=1)
    runs: list[tuple[int, int]] = []

    @rescuer.job("sample.block")
    async def quick(ctx: worcr.JobContext, seconds: float = 0.0) -> str:
        runs.append((ctx.attempt, ctx.token))
        return "rescued"

    async with running(rescuer):
        row = await wait_state(node, job.id, "completed")

    assert result_of(row) == "rescued"
    assert row["worker_id"] == rescuer.worker_id
    assert row["lease_token"] > token
    assert runs == [(2, row["lease_token"])]  # the lost lease counted as an attempt
    history = await attempts(node, job.id)
    assert [(a["outcome"], a["lease_token"]) for a in history] == [
        ("lease_expired", token),
        ("completed", row["lease_token"]),
    ]
    assert sum(a["outcome"] == "completed" for a in history) == 1


async def test_sigterm_yields_running_jobs_and_exits_zero(
    node: Node, spawn_worker: SpawnWorker
) -> None:
    # concurrency 2, prefetch 1: two jobs run, the third waits in the worker
    worker = await spawn_worker(
        node, "--concurrency", "2", "--prefetch", "1", "--shutdown-timeout", "0.5"
    )
    async with worcr.Client(node.worker_address) as client:
        jobs = [(await client.enqueue("sample.block", reserve_for=30)).id for _ in range(3)]
    first = await worker.started()
    second = await worker.started()
    running_ids = {first[0], second[0]}
    assert running_ids < set(jobs)
    tokens = {first[0]: first[2], second[0]: second[2]}
    [waiting] = set(jobs) - running_ids

    async def all_held() -> bool:
        return [(await job_row(node, j))["state"] for j in jobs] == ["running"] * 3

    await wait_until(all_held)
    for j in jobs:
        tokens.setdefault(j, (await job_row(node, j))["lease_token"])

    worker.proc.send_signal(signal.SIGTERM)
    assert await worker.wait(15) == 0

    for j in jobs:
        row = await job_row(node, j)
        assert row["state"] == "queued", (j, row["state"])
        assert row["attempt"] == 0  # a yield is not an attempt
        history = await attempts(node, j)
        assert [(a["outcome"], a["attempt"], a["lease_token"]) for a in history] == [
            ("yielded", 1, tokens[j])
        ]

    finisher = make_worker(node, concurrency=3)
    runs: dict[str, int] = {}

    @finisher.job("sample.block")
    async def quick(ctx: worcr.JobContext, seconds: float = 0.0) -> str:
        runs[ctx.id] = ctx.attempt
        return "done"

    async with running(finisher):
        for j in jobs:
            await wait_state(node, j, "completed")
    assert runs == {j: 1 for j in jobs}
    for j in jobs:
        assert await outcomes(node, j) == ["yielded", "completed"]
    assert waiting in runs


async def test_after_shutting_down_the_worker_goes_to_the_next_node_at_once(
    node_factory: NodeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A stopping node is not tried again: the worker's next hello goes to the next node."""
    caplog.set_level(logging.INFO, logger="worcr.session")
    a, b = await node_factory(), await node_factory()
    worker = worcr.Worker(
        nodes=[a.worker_address, b.worker_address], concurrency=2, shutdown_timeout=2.0
    )
    worker.job("noop")(lambda ctx: None)

    def serving(node: Node) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return any(s.worker_id == worker.worker_id for s in node.hub.sessions)

        return check

    async with running(worker):
        await wait_until(serving(a))
        caplog.clear()
        await a.stop()
        await wait_until(serving(b))
    tried_a = [r.getMessage() for r in caplog.records if a.worker_address in r.getMessage()]
    assert tried_a == [f"connection to node {a.worker_address} closed"], tried_a
