"""Property tests against a real node (hypothesis): random rules, job tags, tenants, weights,
worker tags and fairness strategies. A forbidden (job, worker) pair is never dispatched; every job
that some connected worker may run is dispatched, whatever its weight (no starvation).

Each example runs its own node on a fresh database and Redis prefix, in its own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import create_database
from tests.integration.test_dispatch import Served, worker
from tests.waiting import wait_until
from worcr_node.config import Config, HostPort
from worcr_node.dispatch.fairness import Strategy
from worcr_node.dispatch.rules import TagSet, evaluate, parse_rule
from worcr_node.embedded import PostgresServer, RedisServer
from worcr_node.node import Node

_examples = itertools.count()
TAGS = ["premium", "gpu", "spot", "region:eu", "region:us"]
_tags = st.lists(st.sampled_from(TAGS), max_size=3, unique=True)
_rule = st.fixed_dictionaries(
    {
        "action": st.sampled_from(["multiply", "forbid"]),
        "factor": st.sampled_from([0.01, 0.5, 3.0, 100.0]),
        "job_tags": st.fixed_dictionaries({"all": _tags, "none": _tags}),
        "worker_tags": st.fixed_dictionaries({"all": _tags, "none": _tags}),
        "tenants": st.lists(st.sampled_from(["a", "b"]), max_size=1),
        "differ": st.lists(st.just("region"), max_size=1),
    }
)
_job = st.tuples(_tags, st.sampled_from(["a", "b", "c"]), st.sampled_from([0.001, 1.0, 50.0]))


def _rule_body(i: int, r: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": f"r{i}",
        "action": r["action"],
        "match": {"job_tags": r["job_tags"], "worker_tags": r["worker_tags"],
                  "tenants": r["tenants"], "differ": r["differ"]},
    }  # fmt: skip
    if r["action"] == "multiply":
        body["factor"] = r["factor"]
    return body


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    rules=st.lists(_rule, max_size=4),
    workers=st.lists(_tags, min_size=1, max_size=3),
    jobs=st.lists(_job, min_size=1, max_size=25),
    strategy=st.sampled_from(list(Strategy)),
)
def test_forbidden_never_runs_and_allowed_always_does(
    pg_server: PostgresServer,
    redis_server: RedisServer,
    rules: list[dict[str, Any]],
    workers: list[list[str]],
    jobs: list[tuple[list[str], str, float]],
    strategy: Strategy,
) -> None:
    asyncio.run(_scenario(pg_server, redis_server, rules, workers, jobs, strategy))


async def _scenario(
    pg: PostgresServer,
    redis: RedisServer,
    rule_specs: list[dict[str, Any]],
    worker_tags: list[list[str]],
    jobs: list[tuple[list[str], str, float]],
    strategy: Strategy,
) -> None:
    n = next(_examples)
    config = Config(
        database_url=await create_database(pg.dsn),
        redis_url=redis.url,
        http=HostPort("127.0.0.1", 0),
        listen=HostPort("127.0.0.1", 0),
        node_id="prop",
        redis_prefix=f"prop{n}",
        heartbeat_ms=200,
    )
    node = Node(config)
    await node.start()
    try:
        rules = [parse_rule(_rule_body(i, r)) for i, r in enumerate(rule_specs)]
        for rule in rules:
            await node.policy_store.rule_create(rule)
        await node.policy_store.fairness_set(strategy, {})
        version = await node.policy_store.version()

        async def applied() -> bool:
            return node.dispatcher.policy.version == version

        await wait_until(applied, timeout=10)
        specs = [{"kind": "k", "tags": t, "tenant": ten, "weight": w} for t, ten, w in jobs]
        results = await node.manager.enqueue(specs)
        ids = [str(r.id) for r in results]
        allowed = {
            (ids[j], w)
            for j, (tags, tenant, _) in enumerate(jobs)
            for w, wtags in enumerate(worker_tags)
            if evaluate(rules, "k", tenant, TagSet(tags), TagSet(wtags)).allowed
        }
        runnable = {jid for jid, _ in allowed}
        served = [Served() for _ in worker_tags]
        async with contextlib.AsyncExitStack() as stack:
            for i, (s, tags) in enumerate(zip(served, worker_tags, strict=True)):
                await stack.enter_async_context(
                    worker(node, s, capacity=2, kinds=["k"], tags=tags, worker_id=f"w{i}")
                )

            async def all_runnable_ran() -> bool:
                return {j["id"] for s in served for j in s.jobs} >= runnable

            await wait_until(all_runnable_ran, timeout=30)
        for w, s in enumerate(served):
            for j in s.jobs:
                assert (j["id"], w) in allowed, f"job {j} went to forbidden worker {w}"
        got = [j["id"] for s in served for j in s.jobs]
        assert len(got) == len(set(got))  # each job once
    finally:
        await node.stop()
