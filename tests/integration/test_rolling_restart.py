"""A rolling restart under load loses nothing and runs nothing twice.

Three node processes share PostgreSQL and Redis; three worker processes each know all three
nodes. A deep backlog of `max_attempts: 1` jobs, each appending one line per execution to a
file, flows while the nodes are stopped with SIGTERM and started again on the same addresses, one
after the other, several times. A job a stopping node had claimed but not yet handed out must come
back at once without using its only attempt (before, it waited for its 30-s claim lease and then
died as `lease_expired` without ever running).
"""

from __future__ import annotations

import asyncio
import collections
import signal
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.conftest import NodeFactory
from tests.nodes import NodeProcess, SpawnNode
from tests.rawclient import RawClient
from tests.waiting import wait_until
from tests.workers import SpawnWorker

JOBS = 20000
RESTARTS = 6


async def enqueue(address: str, side_effects: Path) -> list[str]:
    client = await RawClient.connect(address)
    await client.hello()
    ids: list[str] = []
    for start in range(0, JOBS, 500):
        specs = [
            {"kind": "sample.record", "args": [str(side_effects), 0.05], "max_attempts": 1,
             "tenant": f"t{i % 5}"}
            for i in range(start, min(JOBS, start + 500))
        ]  # fmt: skip
        answer = await client.call("enqueue", {"jobs": specs})
        ids += [j["id"] for j in answer["jobs"]]
    await client.close()
    return ids


async def stop(node: NodeProcess) -> int:
    node.proc.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(node.proc.wait(), 60)


@pytest.mark.timeout(300)
async def test_rolling_restart_under_load_completes_every_job_exactly_once(
    spawn_node: SpawnNode, spawn_worker: SpawnWorker, database_url: str, tmp_path: Path
) -> None:
    nodes = [await spawn_node(f"n{i}") for i in range(3)]
    addresses = [n.worker_address for n in nodes]
    for i in range(3):  # each worker starts on a different node of the same list
        rotated = addresses[i:] + addresses[:i]
        await spawn_worker(",".join(rotated), "--concurrency", "16")
    side_effects = tmp_path / "side-effects"
    ids = await enqueue(addresses[0], side_effects)
    db = await asyncpg.connect(database_url)
    try:

        async def counts() -> dict[str, int]:
            rows = await db.fetch("SELECT state, count(*) AS n FROM worcr_jobs GROUP BY state")
            return {r["state"]: r["n"] for r in rows}

        async def started_some() -> bool:
            return side_effects.exists() and side_effects.stat().st_size > 0

        await wait_until(started_some, timeout=60)
        for turn in range(RESTARTS):
            # under load: the backlog is still deep when the next node goes
            assert (await counts()).get("queued", 0) > 0, "the jobs ran out before the restarts"
            i = turn % 3
            old = nodes[i]
            assert await stop(old) == 0, old.log()
            nodes[i] = await spawn_node(
                f"n{i}", listen=old.worker_address, http=old.http_address.removeprefix("http://")
            )

        async def all_final() -> bool:
            states = await counts()
            return sum(states.get(s, 0) for s in ("completed", "dead")) == JOBS

        await wait_until(all_final, timeout=180)
        states = await counts()
        outcomes = {
            r["outcome"]: r["n"]
            for r in await db.fetch(
                "SELECT outcome, count(*) AS n FROM worcr_attempts GROUP BY outcome"
            )
        }
        dead = await db.fetch(
            "SELECT j.id, a.outcome, a.error FROM worcr_jobs j JOIN worcr_attempts a"
            " ON a.job_id = j.id WHERE j.state = 'dead' LIMIT 5"
        )
    finally:
        await db.close()
    assert states == {"completed": JOBS}, (states, outcomes, [dict(r) for r in dead])
    assert "lease_expired" not in outcomes, outcomes  # no worker died: no lease ran out
    runs = collections.Counter(line.split()[0] for line in side_effects.read_text().splitlines())
    assert set(runs) == set(ids)
    twice = {job: n for job, n in runs.items() if n != 1}
    assert not twice, f"{len(twice)} jobs ran more than once, e.g. {list(twice.items())[:3]}"
    assert all(uuid.UUID(i) for i in ids)


@pytest.mark.parametrize("drain", ["in time", "cut short"])
async def test_jobs_claimed_when_a_node_stops_reach_the_worker_or_come_back_at_once(
    drain: str, node_factory: NodeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim is under way (written to PostgreSQL, not yet pushed) when the node is told to
    stop. Either the stop waits for it and the worker gets the jobs before its connection
    closes, or (the stop cannot wait that long) the jobs go back at once as `yielded`, their
    attempt given back: in both cases none is left `running` for a worker that never saw it."""
    a, b = await node_factory(), await node_factory()
    if drain == "cut short":
        a.drain_timeout = 0.3
    written = asyncio.Event()
    claim = a.manager.claim

    async def slow_claim(*args: Any, **kwargs: Any) -> Any:
        jobs = await claim(*args, **kwargs)
        written.set()
        await asyncio.sleep(1.5)  # the injected fault: a slow push, not a synchronisation
        return jobs

    monkeypatch.setattr(a.manager, "claim", slow_claim)
    worker = await RawClient.connect(a.worker_address)
    await worker.hello(capacity=10, worker_id="w", kinds=["k"])
    answer = await worker.call(
        "enqueue", {"jobs": [{"kind": "k", "max_attempts": 1} for _ in range(10)]}
    )
    ids = {j["id"] for j in answer["jobs"]}
    await asyncio.wait_for(written.wait(), 10)
    await a.stop()
    received = []
    while not worker.notifications.empty():
        msg = worker.notifications.get_nowait()
        if msg[1] == "jobs":
            received += msg[2]["jobs"]
    await worker.close()
    # the worker carries on at the other node with what it holds, and takes what comes back
    worker = await RawClient.connect(b.worker_address)
    running = [{"id": j["id"], "token": j["token"]} for j in received]
    await worker.hello(capacity=10, worker_id="w", kinds=["k"], running=running)
    if drain == "in time":
        assert {j["id"] for j in received} == ids  # pushed before the connection closed
        held = received
    else:
        assert not received
        held = await worker.jobs(10)  # given back at once: dispatched again by b
    done = await worker.call("ack", {"jobs": [{"id": j["id"], "token": j["token"]} for j in held]})
    assert done["results"] == [None] * 10
    await worker.close()
    for job_id in ids:
        outcomes = [r["outcome"] for r in await b.store.attempts_of_job(uuid.UUID(job_id))]
        expected = ["completed"] if drain == "in time" else ["yielded", "completed"]
        assert outcomes == expected, (job_id, outcomes)
