"""Smart dispatch against a real node: weights, tag rules, fairness strategies, live policy changes.

Workers are raw wire clients (tests/rawclient.py) that ack every pushed job at once and record
the order in which jobs reached them, so each assertion is about what the node decided.
"""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

from tests.waiting import wait_until
from tests.workers import Served, worker
from worcr_node.dispatch.fairness import Strategy
from worcr_node.dispatch.rules import parse_rule
from worcr_node.node import Node


async def enqueue(node: Node, specs: list[dict[str, Any]]) -> None:
    for i in range(0, len(specs), 1000):
        await node.manager.enqueue(specs[i : i + 1000])


async def policy_applied(node: Node, version_before: int) -> None:
    async def moved() -> bool:
        return node.dispatcher.policy.version > version_before

    await wait_until(moved, timeout=5)


async def add_rule(node: Node, body: dict[str, Any]) -> None:
    before = node.dispatcher.policy.version
    await node.policy_store.rule_create(parse_rule(body))
    await policy_applied(node, before)


async def set_fairness(node: Node, default: Strategy, **kinds: Strategy) -> None:
    before = node.dispatcher.policy.version
    await node.policy_store.fairness_set(default, kinds)
    await policy_applied(node, before)


async def test_a_times_ten_rule_gives_ten_to_one_over_10000_dispatches(node: Node) -> None:
    await add_rule(node, {"name": "boost", "match": {"kinds": ["heavy"]},
                          "action": "multiply", "factor": 10})  # fmt: skip
    await enqueue(node, [{"kind": k} for k in ("heavy", "light") for _ in range(10_000)])
    served = Served()
    async with worker(node, served, capacity=32, kinds=["heavy", "light"]):

        async def enough() -> bool:
            return len(served.jobs) >= 10_000

        await wait_until(enough, timeout=120)
    first = Counter(j["kind"] for j in served.jobs[:10_000])
    assert first["light"] > 0  # proportional, not strict priority
    assert 9.0 <= first["heavy"] / first["light"] <= 11.0, first


async def test_the_premium_example_as_documented(node: Node) -> None:
    await add_rule(node, {
        "name": "premium x10",
        "match": {"job_tags": {"all": ["premium"]}, "worker_tags": {"all": ["premium"]}},
        "action": "multiply", "factor": 10,
    })  # fmt: skip
    await add_rule(node, {
        "name": "premium workers only run premium jobs",
        "match": {"job_tags": {"none": ["premium"]}, "worker_tags": {"all": ["premium"]}},
        "action": "forbid",
    })  # fmt: skip
    await enqueue(node, [{"kind": "render", "tags": ["premium"]} for _ in range(300)]
                  + [{"kind": "render", "tags": ["basic"]} for _ in range(300)])  # fmt: skip
    premium, premium2, plain = Served(), Served(), Served()
    async with worker(node, premium, capacity=4, tags=["premium", "host:a"]), \
            worker(node, premium2, capacity=4, tags=["premium", "host:b"]), \
            worker(node, plain, capacity=4, tags=["cpu"]):  # fmt: skip
        # host tags no rule mentions do not split workers into separate pick structures
        assert set(node.dispatcher.classes) == {
            (frozenset(), frozenset({"premium"})), (frozenset(), frozenset()),
        }  # fmt: skip

        async def all_done() -> bool:
            return len(premium.jobs) + len(premium2.jobs) + len(plain.jobs) >= 600

        await wait_until(all_done, timeout=60)
    premium.jobs += premium2.jobs
    assert all(j["tags"] == ["premium"] for j in premium.jobs)
    assert len(premium.jobs) > 0
    assert any(j["tags"] == ["basic"] for j in plain.jobs)


async def test_a_job_no_worker_may_run_waits_and_runs_once_allowed(node: Node) -> None:
    await add_rule(
        node,
        {
            "name": "no gpu jobs on cpu",
            "action": "forbid",
            "match": {"job_tags": {"all": ["gpu"]}, "worker_tags": {"none": ["gpu"]}},
        },
    )
    await enqueue(node, [{"kind": "train", "tags": ["gpu"]}, {"kind": "train"}])
    cpu, gpu = Served(), Served()
    async with worker(node, cpu, capacity=4):

        async def plain_ran() -> bool:
            return len(cpu.jobs) == 1

        await wait_until(plain_ran)
        assert cpu.jobs[0]["tags"] == []
        async with worker(node, gpu, capacity=4, tags=["gpu"]):

            async def gpu_ran() -> bool:
                return len(gpu.jobs) == 1

            await wait_until(gpu_ran)
    assert gpu.jobs[0]["tags"] == ["gpu"]
    assert len(cpu.jobs) == 1


async def test_rule_changes_apply_to_connected_workers_without_restart(node: Node) -> None:
    served = Served()
    async with worker(node, served, capacity=2, tags=["spot"]):
        rule = parse_rule(
            {
                "name": "no batch on spot",
                "action": "forbid",
                "match": {"kinds": ["batch"], "worker_tags": {"all": ["spot"]}},
            }
        )
        before = node.dispatcher.policy.version
        created = await node.policy_store.rule_create(rule)
        await policy_applied(node, before)
        await enqueue(node, [{"kind": "batch"} for _ in range(5)] + [{"kind": "web"}])

        async def web_ran() -> bool:
            return len(served.jobs) >= 1

        await wait_until(web_ran)
        assert [j["kind"] for j in served.jobs] == ["web"]
        before = node.dispatcher.policy.version
        await node.policy_store.rule_delete(uuid.UUID(created.id))
        await policy_applied(node, before)

        async def batch_ran() -> bool:
            return len(served.jobs) == 6

        await wait_until(batch_ran)


async def test_round_robin_serves_small_tenants_while_a_big_one_is_backlogged(node: Node) -> None:
    await set_fairness(node, Strategy.ROUND_ROBIN)
    await enqueue(node, [{"kind": "k", "tenant": "big"} for _ in range(5000)])
    await enqueue(node, [{"kind": "k", "tenant": f"s{i}"} for i in range(5) for _ in range(20)])
    served = Served()
    async with worker(node, served, capacity=4):

        async def small_done() -> bool:
            return sum(1 for j in served.jobs if j["tenant"] != "big") == 100

        await wait_until(small_done, timeout=60)
        last_small = max(i for i, j in enumerate(served.jobs) if j["tenant"] != "big")
    big_before = sum(1 for j in served.jobs[:last_small] if j["tenant"] == "big")
    assert big_before < 200, big_before  # about 1/6 of the first 120, not 5000


async def test_fifo_runs_the_oldest_backlog_first(node: Node) -> None:
    await set_fairness(node, Strategy.FIFO)
    await enqueue(node, [{"kind": "k", "tenant": "big"} for _ in range(600)])
    await enqueue(node, [{"kind": "k", "tenant": f"s{i}"} for i in range(3) for _ in range(10)])
    served = Served()
    async with worker(node, served, capacity=4):

        async def done() -> bool:
            return len(served.jobs) == 630

        await wait_until(done, timeout=60)
    assert {j["tenant"] for j in served.jobs[:600]} == {"big"}


async def test_weighted_fair_shares_by_tenant_weight(node: Node) -> None:
    await set_fairness(node, Strategy.WEIGHTED_FAIR)
    before = node.dispatcher.policy.version
    await node.policy_store.tenant_weight_set("gold", 3.0)
    await policy_applied(node, before)
    await enqueue(node, [{"kind": "k", "tenant": t} for t in ("gold", "tin") for _ in range(3000)])
    served = Served()
    async with worker(node, served, capacity=4):

        async def enough() -> bool:
            return len(served.jobs) >= 2000

        await wait_until(enough, timeout=60)
    first = Counter(j["tenant"] for j in served.jobs[:2000])
    assert 2.7 <= first["gold"] / first["tin"] <= 3.3, first


async def test_fewest_running_gives_the_next_slot_to_the_idle_tenant(node: Node) -> None:
    await set_fairness(node, Strategy.FEWEST_RUNNING)
    busy = Served(hold=True)
    await enqueue(node, [{"kind": "k", "tenant": "A"} for _ in range(20)])
    async with worker(node, busy, capacity=4):

        async def holding() -> bool:
            return len(busy.jobs) == 4

        await wait_until(holding)
        await enqueue(node, [{"kind": "k", "tenant": "B"} for _ in range(3)])
        second = Served(hold=True)
        async with worker(node, second, capacity=1):

            async def got_one() -> bool:
                return len(second.jobs) == 1

            await wait_until(got_one)
    # A's jobs are older, but A has 4 running and B none
    assert second.jobs[0]["tenant"] == "B"
