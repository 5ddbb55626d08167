"""The dispatcher survives worker connections vanishing at any point of its rounds.

Workers over raw TCP take and ack jobs while a chaos task cuts connections at random moments
(and opens new ones): no dispatch round fails, and every job completes exactly once (the jobs
of a cut connection come back when their leases lapse; an ack whose answer was cut off still
completed its jobs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

import asyncpg
import pytest

from tests.rawclient import RawClient
from tests.waiting import wait_until
from worcr_node.node import Node

JOBS = 1500


async def serve(client: RawClient, acked: list[str]) -> None:
    """Ack every job pushed, until the connection is cut."""
    with contextlib.suppress(ConnectionError, TimeoutError, OSError):
        while not client.closed.is_set():
            jobs = (await client.next_notification("jobs", timeout=30))["jobs"]
            await asyncio.sleep(random.random() * 0.005)
            answer = await client.call(
                "ack", {"jobs": [{"id": j["id"], "token": j["token"]} for j in jobs]}
            )
            acked += [j["id"] for j, r in zip(jobs, answer["results"], strict=True) if r is None]


@pytest.mark.timeout(180)
async def test_connections_cut_during_rounds_break_no_round(
    node: Node, caplog: pytest.LogCaptureFixture, database_url: str
) -> None:
    caplog.set_level(logging.ERROR, logger="worcr_node")
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    producer = await RawClient.connect(node.worker_address)
    await producer.hello()
    for start in range(0, JOBS, 500):
        specs = [{"kind": "k", "args": [i], "reserve_for": 1, "tenant": f"t{i % 7}"}
                 for i in range(start, start + 500)]  # fmt: skip
        await producer.call("enqueue", {"jobs": specs})
    acked: list[str] = []
    live: list[tuple[RawClient, asyncio.Task[None]]] = []

    async def join() -> None:
        client = await RawClient.connect(node.worker_address)
        await client.hello(capacity=rng.choice([1, 4, 16]), kinds=["k"])
        live.append((client, asyncio.create_task(serve(client, acked))))

    for _ in range(8):
        await join()
    cuts = 0
    while len(acked) < JOBS * 0.9 and cuts < 300:
        await asyncio.sleep(rng.random() * 0.01)  # a random point of a round
        victim, task = live.pop(rng.randrange(len(live)))
        victim.writer.transport.abort()  # gone at once, mid-whatever
        task.cancel()
        cuts += 1
        await join()

    async def states() -> dict[str, int]:
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch("SELECT state, count(*) FROM worcr_jobs GROUP BY state")
        finally:
            await conn.close()
        return {r["state"]: r["count"] for r in rows}

    async def all_done() -> bool:
        return await states() == {"completed": JOBS}

    try:
        await wait_until(all_done, timeout=120)
    except AssertionError:
        raise AssertionError(f"seed {seed}: {await states()}") from None
    finally:
        for client, task in live:
            task.cancel()
            await client.close()
        await producer.close()
    failed = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not failed, f"seed {seed}: {failed[:5]}"
    assert len(acked) == len(set(acked)), f"seed {seed}: a job was acked twice"
    assert cuts > 0
