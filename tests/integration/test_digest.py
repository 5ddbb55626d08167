"""The digest scenario: a resumable job survives SIGKILLs and a SIGTERM without re-sending.

A job "sends" 10,000 e-mails (appends each index to a side-effect file), checkpointing the next
index after each. Its worker process is killed with SIGKILL at three random points and stopped
with SIGTERM once; a new worker takes over each time. At the end every e-mail was sent, exactly
once except at most one per SIGKILL: the e-mail sent after the last durable checkpoint and
before the next (the window between a side effect and its checkpoint, which no job server can
close for a non-idempotent side effect). A SIGTERM re-sends nothing: the worker yields the job
after its last checkpoint is stored. Every checkpoint the node acknowledged was still there for
the next attempt (it resumed exactly at or after the last acknowledged index), the job is
completed, and its progress reads 10000/10000. When the *node* is killed instead, the worker
fails over to another node and nothing at all is sent twice.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack

from tests.nodes import SpawnNode
from tests.rawclient import RawClient
from tests.workers import SpawnWorker, WorkerProcess
from worcr_node.node import Node

COUNT = 10_000


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def _started(acked: Path, n: int, worker: WorkerProcess) -> None:
    """Wait until the job has started `n` times (each attempt writes a "start" line)."""
    while sum(x.startswith("start") for x in _lines(acked)) < n:
        if worker.proc.returncode is not None:
            raise AssertionError(f"the worker exited early; its log:\n{worker.log()}")
        await asyncio.sleep(0.02)  # polling a file written by another process


async def _sent_at_least(path: Path, n: int, worker: WorkerProcess) -> None:
    """Wait until `n` e-mails were sent (the side-effect file grows as the job runs)."""
    while len(_lines(path)) < n:
        if worker.proc.returncode is not None:
            raise AssertionError(f"the worker exited early; its log:\n{worker.log()}")
        await asyncio.sleep(0.02)  # polling a file written by another process


async def test_digest_survives_sigkill_and_sigterm(
    node: Node, spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    sent, acked = tmp_path / "sent.log", tmp_path / "acked.log"
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    stops = [signal.SIGKILL, signal.SIGKILL, signal.SIGKILL, signal.SIGTERM]
    rng.shuffle(stops)
    # each worker is stopped after sending a random number of e-mails (at most 8,800 in all)
    spans = [rng.randrange(100, 2200) for _ in stops]

    producer = await RawClient.connect(node.worker_address)
    await producer.hello()
    spec = {"kind": "sample.digest", "reserve_for": 1.0, "max_attempts": 10,
            "args": {"count": COUNT, "sent": str(sent), "acked": str(acked)}}  # fmt: skip
    job_id = uuid.UUID((await producer.call("enqueue", {"jobs": [spec]}))["jobs"][0]["id"])

    options = ("--concurrency", "1", "--shutdown-timeout", "0.2")
    for n, (stop, span) in enumerate(zip(stops, spans, strict=True)):
        worker = await spawn_worker(node, *options)
        await _started(acked, n + 1, worker)  # this worker runs the job now ...
        await _sent_at_least(sent, len(_lines(sent)) + span, worker)  # ... and sent `span` more
        worker.proc.send_signal(stop)
        await worker.wait(30)
        # whatever the node acknowledged is what the next attempt starts from (or later)
        row = await node.store.job_get(job_id)
        assert row is not None
        stored = msgpack.unpackb(row["checkpoints"])["next"]
        promised = max(int(x) for x in _lines(acked) if not x.startswith("start"))
        assert stored >= promised, (seed, stop, stored, promised)

    worker = await spawn_worker(node, *options)
    row = await _finished(node, job_id)
    assert row["state"] == "completed", (seed, row["state"])

    sends = Counter(int(x) for x in _lines(sent))
    assert set(sends) == set(range(COUNT)), seed  # every e-mail was sent
    twice = {i: n for i, n in sends.items() if n > 1}
    kills = stops.count(signal.SIGKILL)
    assert all(n == 2 for n in twice.values()), (seed, twice)
    assert len(twice) <= kills, (seed, twice)

    # each attempt resumed exactly where the previous one's last durable checkpoint was
    starts = [int(x.split()[1]) for x in _lines(acked) if x.startswith("start")]
    assert starts[0] == 0
    assert len(starts) == len(stops) + 1, (seed, starts)
    # a re-sent e-mail is the one a SIGKILL interrupted: where the next attempt resumed
    after_kill = {starts[j + 1] for j, stop in enumerate(stops) if stop == signal.SIGKILL}
    assert set(twice) <= after_kill, (seed, twice, starts)
    after_term = [starts[j + 1] for j, stop in enumerate(stops) if stop == signal.SIGTERM]
    assert all(sends[s] == 1 for s in after_term), (seed, after_term)  # a yield re-sends nothing
    progress = json.loads(row["progress"])["emails"]
    assert (progress["current"], progress["total"]) == (COUNT, COUNT)
    outcomes = [a["outcome"] for a in await node.store.attempts_of_job(job_id)]
    assert sorted(outcomes) == sorted(
        ["lease_expired"] * kills + ["yielded"] * stops.count(signal.SIGTERM) + ["completed"]
    ), (seed, outcomes)
    assert row["attempt"] == 1 + kills  # lost leases count as attempts, the yield does not
    await worker.close()
    await producer.close()


async def test_digest_loses_and_repeats_nothing_when_its_node_is_killed(
    node: Node, spawn_node: SpawnNode, spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    """kill -9 of the node the worker talks to: the worker (alive) fails over to another node,
    sends its unanswered checkpoint there again, and goes on. Nothing is sent twice."""
    count = 3000
    sent, acked = tmp_path / "sent.log", tmp_path / "acked.log"
    a, b = await spawn_node("node-a"), await spawn_node("node-b")
    point = random.Random().randrange(300, count - 1000)
    producer = await RawClient.connect(node.worker_address)
    await producer.hello()
    spec = {"kind": "sample.digest", "reserve_for": 5.0,
            "args": {"count": count, "sent": str(sent), "acked": str(acked)}}  # fmt: skip
    job_id = uuid.UUID((await producer.call("enqueue", {"jobs": [spec]}))["jobs"][0]["id"])
    worker = await spawn_worker(f"{a.worker_address},{b.worker_address}", "--concurrency", "1")
    await _sent_at_least(sent, point, worker)
    a.kill()
    row = await _finished(node, job_id)
    assert row["state"] == "completed", (point, worker.log())
    served = worker.log_path.read_text()
    assert "serving node node-a" in served  # the kill hit the node the worker used ...
    assert "serving node node-b" in served  # ... and it went on through the other
    sends = Counter(int(x) for x in _lines(sent))
    assert set(sends) == set(range(count))
    assert max(sends.values()) == 1, (point, {i: n for i, n in sends.items() if n > 1})
    starts = [x for x in _lines(acked) if x.startswith("start")]
    assert len(starts) == 1  # one attempt throughout: the lease was adopted by node b
    assert [a["outcome"] for a in await node.store.attempts_of_job(job_id)] == ["completed"]
    progress = json.loads(row["progress"])["emails"]
    assert (progress["current"], progress["total"]) == (count, count)
    await worker.close()
    await producer.close()


async def _finished(node: Node, job_id: uuid.UUID, timeout: float = 90.0) -> Any:
    """The job's row once it left queued/running (polling PostgreSQL: no event to await)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        row = await node.store.job_get(job_id)
        assert row is not None
        if row["state"] not in ("queued", "running") or loop.time() > end:
            return row
        await asyncio.sleep(0.1)
