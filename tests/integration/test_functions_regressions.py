"""Regressions found by review of the functions change: limit_key answers that carried the
internal separator, the recount asking limit_key again, a tripped function's fallback kept in the
dispatcher's verdicts, and API requests that answered 500."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.integration.test_functions_hooks import add_rule, applied, put_function
from tests.waiting import wait_until
from tests.workers import Served, worker
from worcr_node.limits.model import parse_limit
from worcr_node.limits.store import LimitStore
from worcr_node.node import Node


async def limit_by(node: Node, source: str, limit: int = 100) -> None:
    await put_function(node, "keyfn", "lua", "limit_key", source)
    before = node.dispatcher.policy.version
    await LimitStore(node.policy_store).create(parse_limit(
        {"name": "per_key", "type": "concurrency", "limit": limit, "function": "keyfn",
         "match": {"kinds": ["sync"]}}))  # fmt: skip
    await applied(node, before)


async def test_a_key_with_a_control_character_is_refused_and_dispatch_goes_on(node: Node) -> None:
    # "2\x1fshop" once read back as key "shop" with limit 2; "shop\x1fa" broke every dispatch
    await limit_by(node, "function limit_key(job) return job.args.k end", limit=1)
    jobs = await node.manager.enqueue(
        [
            {"kind": "sync", "args": {"k": "2\x1fshop"}},
            {"kind": "sync", "args": {"k": "s\x1fa"}},
            {"kind": "other"},
        ]
    )
    for r in jobs[:2]:
        row = await node.store.job_get(r.id)
        assert row is not None
        lane = await node.store.lane_get_many([row["lane"]])
        assert '"!error"' in str(lane[0]["partition"])  # the fallback key, still limited
    served = Served(hold=True)
    async with worker(node, served, capacity=4):

        async def two() -> bool:  # the unrelated job and one of the two under "!error" (limit 1)
            return len(served.jobs) >= 2

        await wait_until(two)
    assert not node.crashed.is_set()
    assert sorted(j["kind"] for j in served.jobs) == ["other", "sync"]


async def test_the_recount_keeps_the_enqueue_time_key(node: Node) -> None:
    await limit_by(node, 'function limit_key(job) return "job:" .. job.id end', limit=1)
    (r,) = await node.manager.enqueue([{"kind": "sync"}])
    served = Served(hold=True)
    async with worker(node, served, capacity=1):

        async def running() -> bool:
            return len(served.jobs) == 1

        await wait_until(running)
        holds = node.index.hold_prefix + str(r.id)
        before = await node.index.redis.hgetall(holds)
        await node.rebuild.reconcile(full=True)
        after = await node.index.redis.hgetall(holds)
    assert before == after
    assert len(after) == 1


async def test_lanes_judged_while_a_function_was_tripped_are_judged_again(node: Node) -> None:
    """Three lanes make a match function hit its cap and trip; a lane judged meanwhile got the
    fallback (forbidden). Once the breaker closes, it is judged again and its jobs run."""
    await put_function(node, "judge", "javascript", "match", """
function match(job, worker) {
  if (job.tenant.startsWith("slow")) for (;;);
  return true;
}""")  # fmt: skip
    await add_rule(node, {"name": "judge", "action": "match", "function": "judge"})
    await node.manager.enqueue([{"kind": "k", "tenant": f"slow{i}"} for i in range(3)])
    await node.manager.enqueue([{"kind": "k", "tenant": "good"} for _ in range(5)])
    served = Served()
    async with worker(node, served, capacity=8):

        async def good_ran() -> bool:
            return sum(1 for j in served.jobs if j["tenant"] == "good") == 5

        await wait_until(good_ran, timeout=60)
    assert all(j["tenant"] == "good" for j in served.jobs)  # slow lanes: forbidden (fallback)


async def test_api_requests_that_answered_500(node: Node) -> None:
    lua = {"language": "lua", "hook": "weight", "source": "function weight(job, w) return 1 end"}
    deep: Any = 1
    for _ in range(40):
        deep = [deep]
    async with aiohttp.ClientSession(node.http_address) as http:
        async with http.put("/api/v1/functions/w", json=lua) as resp:
            assert resp.status == 201
        for path in ("/api/v1/functions/w/versions/%C2%B2", "/api/v1/functions/w/errors?limit=²",
                     "/api/v1/functions/w/errors?before=٣"):  # fmt: skip
            async with http.get(path) as resp:
                assert resp.status == 400, path
        trials = [
            ("w", {"job": {"x": deep}}),
            ("j", {"language": "javascript", "hook": "weight",
                   "source": 'function weight() { throw "\\ud800" }'}),
            ("j", {"language": "javascript", "hook": "weight",
                   "source": 'function weight() { throw new Error("e".repeat(600)) }'}),
        ]  # fmt: skip
        for name, body in trials:
            async with http.post(f"/api/v1/functions/{name}/try", json=body) as resp:
                answer = await resp.json()
                assert resp.status == 200, answer
                assert answer["fallback"] is True
                assert answer["error"]["kind"] in ("error", "result"), answer
        async with http.post("/api/v1/functions", json={**lua, "name": "boost\n"}) as resp:
            assert resp.status == 400
