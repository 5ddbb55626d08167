"""The dispatcher's memory per lane is bounded: lanes that have no ready work are forgotten once
there are more than `idle_lanes` of them (many tenants each make a lane), and a forgotten lane
that gets work again is learned again from PostgreSQL and dispatched as before."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.rawclient import RawClient
from tests.waiting import wait_until
from worcr_node.node import Node

TENANTS = 300


async def run_all(worker: RawClient, n: int) -> None:
    """Ack the next `n` jobs pushed."""
    done = 0
    while done < n:
        jobs = (await worker.next_notification("jobs", timeout=30))["jobs"]
        answer = await worker.call(
            "ack", {"jobs": [{"id": j["id"], "token": j["token"]} for j in jobs]}
        )
        assert answer["results"] == [None] * len(jobs)
        done += len(jobs)


async def test_idle_lanes_are_forgotten_and_learned_again(node: Node) -> None:
    node.dispatcher.idle_lanes = 50
    worker = await RawClient.connect(node.worker_address)
    await worker.hello(capacity=50, kinds=["k"])
    specs: list[dict[str, Any]] = [{"kind": "k", "tenant": f"t{i}"} for i in range(TENANTS)]
    await worker.call("enqueue", {"jobs": specs})
    await run_all(worker, TENANTS)

    async def drained() -> bool:
        return not node.dispatcher.lanes

    await wait_until(drained)
    assert node.dispatcher.remembered_lanes >= TENANTS  # every lane met is remembered, so far
    assert node.dispatcher.forget_idle_lanes() >= TENANTS
    assert node.dispatcher.remembered_lanes == 0
    assert all(not cls.verdicts for cls in node.dispatcher.classes.values())
    assert node.dispatcher.forget_idle_lanes() == 0  # under the bound: nothing to do

    await worker.call("enqueue", {"jobs": specs[:100]})  # the same lanes come back
    await asyncio.wait_for(run_all(worker, 100), 30)
    await worker.close()
