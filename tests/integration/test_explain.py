"""GET /api/v1/dispatch/explain against real nodes: rules that matched and why others did not,
the effective weight, the fairness position, workers on this node, on another node, or ad hoc."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.conftest import NodeFactory
from tests.premium import PREMIUM_ONLY, PREMIUM_X10
from tests.rawclient import RawClient
from tests.waiting import wait_until
from worcr_node.dispatch.rules import parse_rule
from worcr_node.limits.model import parse_limit
from worcr_node.limits.store import LimitStore
from worcr_node.node import Node

EXPLAIN = "/api/v1/dispatch/explain"
NOJOB = "00000000-0000-0000-0000-000000000000"
BOOST, ONLY = PREMIUM_X10, PREMIUM_ONLY


@pytest.fixture
async def http(node: Node) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(node.http_address) as session:
        yield session


async def with_rules(node: Node) -> None:
    before = node.dispatcher.policy.version
    await node.policy_store.rule_create(parse_rule(BOOST))
    await node.policy_store.rule_create(parse_rule(ONLY))

    async def applied() -> bool:
        return node.dispatcher.policy.version >= before + 2

    await wait_until(applied)


async def explain(http: aiohttp.ClientSession, **params: str) -> tuple[int, Any]:
    async with http.get(EXPLAIN, params=params) as resp:
        return resp.status, await resp.json()


async def test_a_connected_premium_worker_and_a_premium_job(node: Node, http: Any) -> None:
    await with_rules(node)
    (basic,) = await node.manager.enqueue([{"kind": "render", "tags": ["basic"]}])
    w = await RawClient.connect(node.worker_address)
    try:
        # capacity 1, held: the first premium job runs, the second stays queued
        await w.hello(worker_id="w-prem", capacity=1, tags=["premium"], kinds=["render"])
        await node.manager.enqueue([{"kind": "render", "tags": ["premium"]}])
        await w.jobs(1)
        (premium,) = await node.manager.enqueue([{"kind": "render", "tags": ["premium"]}])

        async def lanes_known() -> bool:
            return len(node.dispatcher.lanes) == 2

        await wait_until(lanes_known)
        status, body = await explain(http, job=str(premium.id), worker="w-prem")
        assert status == 200
        assert body["allowed"] is True
        assert body["dispatchable_now"] is True
        assert body["effective_weight"] == 10.0
        assert body["worker"]["source"] == "connected to this node"
        matched = {r["name"]: r for r in body["rules"]}
        assert matched["premium x10"]["matched"] is True
        assert matched[ONLY["name"]]["matched"] is False
        assert matched[ONLY["name"]]["why_not"] == "job has premium"
        fair = body["fairness"]
        assert fair["strategy"] == "round_robin"
        assert fair["worker_class"].startswith("live")
        assert fair["position"]["lane_position"]["rank"] == 0

        status, body = await explain(http, job=str(basic.id), worker="w-prem")
        assert status == 200
        assert body["allowed"] is False
        assert body["effective_weight"] is None
        assert body["reasons"] == [f"forbidden by rule {ONLY['name']!r}"]
    finally:
        await w.close()


async def test_ad_hoc_tags_and_kinds(node: Node, http: Any) -> None:
    await with_rules(node)
    (job,) = await node.manager.enqueue([{"kind": "render", "tags": ["premium"]}])
    status, body = await explain(http, job=str(job.id), tags="premium,gpu")
    assert status == 200
    assert body["effective_weight"] == 10.0
    assert body["worker"]["source"] == "ad hoc"
    assert body["fairness"]["worker_class"].startswith("built for this answer")
    status, body = await explain(http, job=str(job.id), tags="cpu")
    assert body["allowed"] is True
    assert body["effective_weight"] == 1.0
    status, body = await explain(http, job=str(job.id), tags="", kinds="email,resize")
    assert body["allowed"] is False
    assert "does not run kind 'render'" in body["reasons"][0]


async def test_a_worker_connected_to_another_node(node_factory: NodeFactory) -> None:
    a = await node_factory()
    b = await node_factory()
    await with_rules(a)
    (job,) = await a.manager.enqueue([{"kind": "render"}])
    w = await RawClient.connect(b.worker_address)
    try:
        await w.hello(worker_id="w-far", capacity=1, tags=["premium"], kinds=["render"])
        async with aiohttp.ClientSession(a.http_address) as http:

            async def registered() -> bool:
                return (await explain(http, job=str(job.id), worker="w-far"))[0] == 200

            await wait_until(registered)
            _, body = await explain(http, job=str(job.id), worker="w-far")
        assert body["worker"]["source"] == "registered by node node-2"
        assert body["reasons"] == [f"forbidden by rule {ONLY['name']!r}"]
    finally:
        await w.close()


async def test_a_finished_job_is_explained_but_not_dispatchable(node: Node, http: Any) -> None:
    (job,) = await node.manager.enqueue([{"kind": "k", "run_in": 3600}])
    status, body = await explain(http, job=str(job.id), tags="x")
    assert status == 200
    assert body["allowed"] is True
    assert body["dispatchable_now"] is False
    assert "scheduled" in body["reasons"][0]


@pytest.mark.parametrize(
    ("params", "status", "message"),
    [
        ({}, 400, "job"),
        ({"job": "nope", "tags": "a"}, 400, "job"),
        ({"job": NOJOB}, 400, "worker"),
        ({"job": NOJOB, "worker": "w", "tags": "a"}, 400, "not both"),
        ({"job": NOJOB, "tags": "a", "colour": "red"}, 400, "colour"),
        ({"job": NOJOB, "tags": "a"}, 404, "no job"),
        ({"job": NOJOB, "worker": "ghost"}, 404, "ghost"),
    ],
)  # fmt: skip
async def test_bad_questions_get_clear_errors(
    http: Any, params: dict[str, str], status: int, message: str
) -> None:
    got, body = await explain(http, **params)
    assert got == status
    assert message in body["error"]["message"]


async def test_a_full_limit_is_a_reason_and_shows_its_key_and_usage(node: Node, http: Any) -> None:
    store = LimitStore(node.policy_store)
    await store.create(parse_limit({"name": "per-customer", "type": "concurrency", "limit": 1,
                                    "key": "c-{args.customer}"}))  # fmt: skip
    await store.create(parse_limit({"name": "gpu-only", "type": "concurrency", "limit": 9,
                                    "match": {"worker_tags": {"all": ["gpu"]}}}))  # fmt: skip

    async def loaded() -> bool:
        return len(node.dispatcher.limits.job) == 2

    await wait_until(loaded)
    w = await RawClient.connect(node.worker_address)
    try:
        await w.hello(worker_id="w1", capacity=5)
        await node.manager.enqueue([{"kind": "sync", "args": {"customer": 7}}])
        await w.jobs(1)  # holds the customer's one unit
        (waiting,) = await node.manager.enqueue([{"kind": "sync", "args": {"customer": 7}}])
        status, body = await explain(http, job=str(waiting.id), worker="w1")
        assert status == 200
        assert body["allowed"] is True
        assert body["dispatchable_now"] is False
        limits = {e["name"]: e for e in body["limits"]}
        assert limits["per-customer"]["applies"] is True
        assert limits["per-customer"]["key"] == "c-7"
        assert limits["per-customer"]["used"] == 1
        assert limits["per-customer"]["available"] == 0
        assert limits["gpu-only"] == {"name": "gpu-only", "type": "concurrency", "limit": 9,
                                      "applies": False, "why_not": "worker lacks gpu"}  # fmt: skip
        assert any("'per-customer' is full for key 'c-7'" in r for r in body["reasons"])
    finally:
        await w.close()
