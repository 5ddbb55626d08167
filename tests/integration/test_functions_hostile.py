"""Hostile functions while jobs flow: a node running functions that loop forever, allocate without
bound, try to reach files, processes or modules, build huge strings or play prototype tricks keeps
dispatching, never loses a job, records each failure where an operator sees it, and a slow or
crashing function does not stall the lanes it does not judge.
"""

from __future__ import annotations

import asyncio
import json
import os.path
import time
import uuid

import aiohttp
import pytest

from tests.integration.test_functions_hooks import add_rule, applied, put_function
from tests.waiting import wait_until
from tests.workers import Served, worker
from worcr_node.limits.model import parse_limit
from worcr_node.limits.store import LimitStore
from worcr_node.node import Node

# hook -> language -> hostile sources (each must fail, never escape, never hang the node)
HOSTILE: dict[str, dict[str, list[str]]] = {
    "weight": {
        "lua": [
            "function weight(job, worker) while true do end end",
            "function weight(job, worker) local t = {} while true do t[#t + 1] = {} end end",
            "function weight(job, worker) return #string.rep('x', 2^31) end",
            "function weight(job, worker) os.execute('touch /tmp/worcr-pwned') return 1 end",
            "function weight(job, worker) return io.open('/etc/passwd'):read('a') end",
            "function weight(job, worker) return require('os').time() end",
            "function weight(job, worker) return load(string.dump(function() end))() end",
            "function weight(job, worker) while true do pcall(function() while true do end end) "
            "end end",
        ],
        "javascript": [
            "function weight(job, worker) { while (true) {} }",
            "function weight() { const a = []; for (;;) a.push(new Array(1e6).fill(1)); }",
            "function weight() { let s = 'x'; for (;;) s = s + s; }",
            "function weight() { const a = []; for (;;) a.push(new Array(1000).fill(0)); }",
            "function weight() { return require('fs').readFileSync('/etc/passwd') }",
            "function weight() { return std.loadFile('/etc/passwd') }",
            "function weight() { Object.prototype.toJSON = () => 5; "
            "Object.defineProperty(Object.prototype, 'x', {get() { for(;;){} }}); "
            "return { get weight() { for (;;) {} } } }",
            "function weight() { for (;;) { try { for (;;) {} } catch (e) {} } }",
            "function weight() { return weight() }",
        ],
    },
}


async def test_hostile_weight_functions_while_jobs_flow(node: Node) -> None:
    """Each hostile weight function judges lane 'victim' in turn; jobs of 'victim' and of an
    unjudged lane all run exactly once; every failure is on record; the node answers HTTP."""
    total = 0
    served = Served()
    async with worker(node, served, capacity=8), aiohttp.ClientSession(node.http_address) as http:
        for language, sources in HOSTILE["weight"].items():
            for i, source in enumerate(sources):
                name = f"hostile_{language}_{i}"
                await put_function(node, name, language, "weight", source)
                await add_rule(node, {"name": name, "action": "multiply", "function": name,
                                      "match": {"kinds": ["victim"]}})  # fmt: skip
                specs = [{"kind": k, "args": [name]} for k in ("victim", "bystander")]
                await node.manager.enqueue(specs * 10)
                total += 20
                async with http.get("/healthz") as resp:  # the node stays responsive
                    assert resp.status == 200

                async def flowed(n: int = total) -> bool:
                    return len(served.jobs) >= n

                await wait_until(flowed, timeout=30)
    ids = [j["id"] for j in served.jobs]
    assert len(ids) == len(set(ids)) == total  # each job once, none lost
    await node.function_errors.flush()
    rows = await node.store.run(lambda c: c.fetch(
        "SELECT name, kind, message FROM worcr_function_errors"))  # fmt: skip
    failed = {r["name"] for r in rows}
    every = {f"hostile_{lang}_{i}" for lang, s in HOSTILE["weight"].items() for i in range(len(s))}
    assert failed == every, every - failed
    kinds = {r["kind"] for r in rows}
    assert {"timeout", "memory", "error"} <= kinds, kinds
    assert not await asyncio.to_thread(os.path.exists, "/tmp/worcr-pwned")


@pytest.mark.parametrize("language", ["lua", "javascript"])
async def test_hostile_job_hooks_never_lose_a_job(node: Node, language: str) -> None:
    """on_enqueue, retry and limit_key functions that loop, blow memory or escape: every job is
    stored as given, retried by its backoff, limited under the shared error key."""
    loop = {"lua": "while true do end", "javascript": "for (;;) {}"}[language]
    bomb = {
        "lua": "local t = {} while true do t[#t+1] = string.rep('y', 1e5) end",
        "javascript": "const a = []; for (;;) a.push('y'.repeat(1e5) + a.length);",
    }[language]
    escape = {"lua": "os.exit(1)", "javascript": "std.exit(1)"}[language]

    def body(hook: str, args: str, code: str) -> str:
        if language == "lua":
            return f"function {hook}({args}) {code} end"
        return f"function {hook}({args}) {{ {code} }}"

    await put_function(node, "enq", language, "on_enqueue", body("on_enqueue", "job", loop))
    await put_function(node, "keys", language, "limit_key", body("limit_key", "job", bomb))
    await put_function(node, "again", language, "retry", body("retry", "job, e, n", escape))
    before = node.dispatcher.policy.version
    await LimitStore(node.policy_store).create(parse_limit(
        {"name": "l", "type": "concurrency", "limit": 1000, "function": "keys"}))  # fmt: skip
    await applied(node, before)
    started = time.monotonic()
    results = await node.manager.enqueue([{"kind": "k", "args": [i]} for i in range(20)])
    took = time.monotonic() - started
    assert [r.state for r in results] == ["queued"] * 20
    served = Served()
    async with worker(node, served, capacity=20):

        async def all_ran() -> bool:
            return len(served.jobs) == 20

        await wait_until(all_ran, timeout=30)
    row = await node.store.job_get(uuid.UUID(str(results[0].id)))
    assert row is not None
    errors = json.loads(row["function_errors"])
    assert {e["hook"] for e in errors} >= {"on_enqueue"}
    assert {e["kind"] for e in errors} & {"timeout", "tripped"}
    # The breaker: after 3 capped failures in a row the function is skipped for a while, so 20
    # jobs did not cost 20 capped calls each.
    print(f"enqueue of 20 jobs with looping hooks took {took:.2f} s")
    assert node.functions.calls < 20 * 2


@pytest.mark.parametrize(
    ("language", "source"),
    [
        ("lua", "function weight(j, w) while true do end end"),
        ("javascript", "function weight(j, w) { throw new Error('crash') }"),
    ],
)
async def test_a_slow_or_crashing_function_does_not_stall_other_lanes(
    node: Node, language: str, source: str
) -> None:
    """Lane 'slow' is judged by a function that always hits its CPU cap (or throws); 2,000 jobs
    of 'fast' lanes beside it all run, and the function was called a bounded number of times
    (its answers are cached per lane and worker class), not once per dispatch."""
    await put_function(node, "slow", language, "weight", source)
    await add_rule(node, {"name": "slow", "action": "multiply", "function": "slow",
                          "match": {"kinds": ["slow"]}})  # fmt: skip
    await node.manager.enqueue([{"kind": "slow"} for _ in range(200)])
    for t in range(4):
        await node.manager.enqueue([{"kind": "fast", "tenant": f"t{t}"} for _ in range(500)])
    served, other = Served(), Served()
    started = time.monotonic()
    async with worker(node, served, capacity=16), worker(node, other, capacity=16, tags=["x"]):

        async def done() -> bool:
            return len(served.jobs) + len(other.jobs) >= 2200

        await wait_until(done, timeout=60)
    took = time.monotonic() - started
    jobs = served.jobs + other.jobs
    assert len({j["id"] for j in jobs}) == len(jobs) == 2200  # the slow lane ran too (weight 1)
    # two worker classes x one judged lane, each capped call cached; then the breaker
    assert node.functions.calls <= 2, node.functions.calls
    print(f"2,000 fast jobs beside a looping function: {took:.2f} s, "
          f"{node.functions.calls} capped call(s)")  # fmt: skip
