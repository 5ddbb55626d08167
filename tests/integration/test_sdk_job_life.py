"""The Python SDK's side of long jobs, against a real node: `ctx.checkpoint`, `ctx.checkpoints`,
`ctx.progress`, `ctx.log`, captured logging and print output, and yielding when the node asks.

What is checked is what the node stored (job rows, `worcr_logs`, `worcr_attempts`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import uuid
from typing import Any

import msgpack

import worcr
from tests.integration.test_worker_sdk import make_worker, outcomes, running, wait_state
from worcr_node.node import Node


async def _lines(node: Node, job_id: str) -> list[Any]:
    return await node.life_store.logs_of_job(uuid.UUID(job_id), 0, None, 1000)


async def test_checkpoints_progress_and_logs_from_async_and_thread_handlers(node: Node) -> None:
    worker = make_worker(node)
    app_log = logging.getLogger("tests.app")
    app_log.setLevel(logging.INFO)

    @worker.job("life.async")
    async def run_async(ctx: worcr.JobContext, n: int) -> int:
        start = ctx.checkpoints.get("i", 0)
        for i in range(start, n):
            await ctx.checkpoint("i", i + 1)
            await ctx.progress("items", i + 1, n)
        ctx.log("done with the items")
        app_log.warning("a record from the app's own logger")
        print("printed by the handler")
        if ctx.attempt == 1:
            raise RuntimeError("fail once, resume from the checkpoint")
        return start

    @worker.job("life.thread")
    def run_thread(ctx: worcr.JobContext, n: int) -> str:
        for i in range(n):
            ctx.checkpoint_sync("i", i + 1)
            ctx.progress_sync("items", i + 1, n)
        ctx.log("from a thread", level="warning")
        print("partial line without newline", end="")
        return threading.current_thread().name

    async with running(worker), worcr.Client(node.worker_address) as client:
        a = await client.enqueue("life.async", 5, backoff={"base": 0.05})
        t = await client.enqueue("life.thread", 4)
        row_a = await wait_state(node, a.id, "completed")
        row_t = await wait_state(node, t.id, "completed")

    assert await outcomes(node, a.id) == ["failed", "completed"]
    assert msgpack.unpackb(row_a["checkpoints"]) == {"i": 5}
    assert msgpack.unpackb(row_a["result"]) == 5  # the retry resumed after the last item
    progress = json.loads(row_a["progress"])["items"]
    assert (progress["current"], progress["total"]) == (5, 5)
    lines = await _lines(node, a.id)
    by_attempt: dict[int, list[tuple[str, str]]] = {}
    for line in lines:
        by_attempt.setdefault(line["attempt"], []).append((line["level"], line["message"]))
    expected = [
        ("info", "done with the items"),
        ("warning", "tests.app: a record from the app's own logger"),
        ("stdout", "printed by the handler"),
    ]
    assert by_attempt == {1: expected, 2: expected}

    assert msgpack.unpackb(row_t["checkpoints"]) == {"i": 4}
    assert json.loads(row_t["progress"])["items"]["current"] == 4
    assert [(x["level"], x["message"]) for x in await _lines(node, t.id)] == [
        ("warning", "from a thread"),
        ("stdout", "partial line without newline"),  # sent at the job's end
    ]


async def test_output_outside_jobs_and_with_capture_off_is_not_sent(node: Node) -> None:
    worker = make_worker(node, capture_output=False)

    @worker.job("life.quiet")
    async def quiet(ctx: worcr.JobContext) -> None:
        print("not captured")
        ctx.log("explicit lines still are")

    async with running(worker), worcr.Client(node.worker_address) as client:
        job = await client.enqueue("life.quiet")
        await wait_state(node, job.id, "completed")
    assert [x["message"] for x in await _lines(node, job.id)] == ["explicit lines still are"]


async def test_a_job_asked_to_yield_by_the_node_resumes_from_its_checkpoint(node: Node) -> None:
    worker = make_worker(node, concurrency=3, yield_timeout=0.3)
    await node.life_store.kind_put("life.slices", 1.0, None)
    rounds: list[tuple[str, int]] = []

    @worker.job("life.slices")
    async def slices(ctx: worcr.JobContext, total: int) -> int:
        done = ctx.checkpoints.get("done", 0)
        rounds.append(("async", done))
        while done < total:
            await asyncio.sleep(0.05)  # a slice of work; cancelled here when asked to yield
            done += 1
            await ctx.checkpoint("done", done)
        return done

    @worker.job("life.slices.polite")
    async def polite_slices(ctx: worcr.JobContext, total: int) -> int:
        done = ctx.checkpoints.get("done", 0)
        rounds.append(("polite", done))
        while done < total:
            if ctx.yield_requested:
                raise worcr.Yield()  # a safe point: the last item's checkpoint was answered
            await asyncio.sleep(0.05)
            done += 1
            await ctx.checkpoint("done", done)
        return done

    @worker.job("life.slices.thread")
    def thread_slices(ctx: worcr.JobContext, total: int) -> int:
        done = ctx.checkpoints.get("done", 0)
        rounds.append(("thread", done))
        while done < total:
            if ctx.yield_requested:
                raise worcr.Yield()
            ctx.cancelled.wait(0.05)
            done += 1
            ctx.checkpoint_sync("done", done)
        return done

    async with running(worker), worcr.Client(node.worker_address) as client:
        a = await client.enqueue("life.slices", 60)  # ~3 s of work: at least one yield
        t = await client.enqueue("life.slices.thread", 60, max_run_time=1)
        p = await client.enqueue("life.slices.polite", 60, max_run_time=1)
        row_a = await wait_state(node, a.id, "completed")
        row_t = await wait_state(node, t.id, "completed")
        row_p = await wait_state(node, p.id, "completed")

    for row, job in ((row_a, a), (row_t, t), (row_p, p)):
        history = await outcomes(node, job.id)
        assert history[-1] == "completed"
        assert set(history[:-1]) == {"yielded"}, history
        assert row["attempt"] == 1  # yields are not attempts
        assert msgpack.unpackb(row["checkpoints"]) == {"done": 60}
    # every later round started where the last one's checkpoint was
    for kind in ("async", "thread", "polite"):
        starts = [done for k, done in rounds if k == kind]
        assert starts[0] == 0
        assert len(starts) >= 2, (kind, starts)
        assert starts == sorted(starts), (kind, starts)
