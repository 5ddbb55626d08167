"""Embedded functions at every hook, against a real node (PostgreSQL, Redis, raw wire workers):
on_enqueue, weight and match rules, load shedding (hold, discard, shed), limit_key with a dynamic
limit, retry; each in Lua and in JavaScript where the language matters.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from typing import Any

import aiohttp
import pytest

from tests.rawclient import RawClient
from tests.waiting import wait_until
from tests.workers import Served, worker
from worcr_node.dispatch.rules import parse_rule
from worcr_node.functions.model import parse_function
from worcr_node.functions.store import FunctionStore
from worcr_node.jobspec import SpecError
from worcr_node.limits.model import parse_limit
from worcr_node.limits.store import LimitStore
from worcr_node.node import Node

DIGEST = {
    "lua": """
function on_enqueue(job)
  job.expires_at = job.enqueued_at + 12 * 3600
  return job
end
""",
    "javascript": """
function on_enqueue(job) {
  return { expires_at: job.enqueued_at + 12 * 3600 };
}
""",
}
PREMIUM_EMAIL = {
    "lua": """
local function has(tags, want)
  for _, t in ipairs(tags) do if t == want then return true end end
  return false
end
function match(job, worker)
  return has(worker.tags, "premium") and not has(worker.tags, "disallow-email")
end
""",
    "javascript": """
function match(job, worker) {
  return worker.tags.includes("premium") && !worker.tags.includes("disallow-email");
}
""",
}


async def applied(node: Node, before: int) -> None:
    async def moved() -> bool:
        return node.dispatcher.policy.version > before

    await wait_until(moved, timeout=5)


async def put_function(node: Node, name: str, language: str, hook: str, source: str,
                       **more: Any) -> None:  # fmt: skip
    before = node.dispatcher.policy.version
    body = {"language": language, "hook": hook, "source": source, **more}
    await FunctionStore(node.policy_store).put(parse_function(body, name))
    await applied(node, before)


async def add_rule(node: Node, body: dict[str, Any]) -> str:
    before = node.dispatcher.policy.version
    rule = await node.policy_store.rule_create(parse_rule(body))
    await applied(node, before)
    return rule.id


async def job_row(node: Node, job_id: Any) -> Any:
    row = await node.store.job_get(uuid.UUID(str(job_id)))
    assert row is not None
    return row


@pytest.mark.parametrize("language", ["lua", "javascript"])
async def test_a_daily_digest_expires_12_hours_after_it_was_enqueued(
    node: Node, language: str
) -> None:
    await put_function(node, "digest_expiry", language, "on_enqueue", DIGEST[language],
                       match={"kinds": ["daily_digest"]})  # fmt: skip
    digest, other = await node.manager.enqueue([{"kind": "daily_digest"}, {"kind": "report"}])
    row = await job_row(node, digest.id)
    lived = (row["expires_at"] - row["enqueued_at"]).total_seconds()
    assert abs(lived - 12 * 3600) < 5, lived
    assert (await job_row(node, other.id))["expires_at"] is None  # its match left it alone
    assert row["function_errors"] is None


async def test_on_enqueue_changes_tags_tenant_weight_and_chains_in_name_order(node: Node) -> None:
    await put_function(node, "a_tag", "lua", "on_enqueue", """
function on_enqueue(job)
  if job.args.vip then
    table.insert(job.tags, "premium")
    return {tags = job.tags, tenant = "vip-" .. job.tenant, weight = job.weight * 5}
  end
end""")  # fmt: skip
    await put_function(node, "b_later", "javascript", "on_enqueue", """
function on_enqueue(job) {
  if (job.tags.includes("premium")) return { run_at: job.enqueued_at + 3600 };
}""")  # fmt: skip
    vip, plain_job = await node.manager.enqueue(
        [{"kind": "k", "args": {"vip": True}, "tenant": "acme"}, {"kind": "k", "args": {}}]
    )
    row = await job_row(node, vip.id)
    assert (list(row["tags"]), row["tenant"], row["weight"]) == (["premium"], "vip-acme", 5.0)
    assert vip.state == "scheduled"  # the second function saw the first one's tags
    assert row["run_at"] is not None
    assert (await job_row(node, plain_job.id))["tags"] == []


async def test_on_enqueue_rejects_discards_and_falls_back_on_errors(node: Node) -> None:
    await put_function(node, "gate", "javascript", "on_enqueue", """
function on_enqueue(job) {
  if (job.args.spam) return { discard: true };
  if (job.args.bad) return { reject: "bad customer " + job.args.bad };
  if (job.args.crash) throw new Error("crashed on " + job.args.crash);
  if (job.args.nonsense) return { weight: "heavy" };
  if (job.args.typo) return { expire_at: 5 };
}""")  # fmt: skip
    with pytest.raises(SpecError, match=r"jobs\[1\]\.rejected by function 'gate': bad customer 7"):
        await node.manager.enqueue([{"kind": "k"}, {"kind": "k", "args": {"bad": 7}}])
    spam, kept = await node.manager.enqueue([{"kind": "k", "args": {"spam": 1}}, {"kind": "k"}])
    assert (spam.state, kept.state) == ("discarded", "queued")
    assert await node.store.job_get(spam.id) is None
    for args, words in [({"crash": "x1"}, "crashed on x1"), ({"nonsense": 1}, "weight"),
                        ({"typo": 1}, "expire_at")]:  # fmt: skip
        (r,) = await node.manager.enqueue([{"kind": "k", "args": args}])
        row = await job_row(node, r.id)
        assert r.state == "queued"  # stored as it was given: never lost
        (error,) = json.loads(row["function_errors"])
        assert error["function"] == "gate"
        assert error["hook"] == "on_enqueue"
        assert words in error["message"], error


@pytest.mark.parametrize("language", ["lua", "javascript"])
async def test_a_weight_function_rule_gives_ten_to_one(node: Node, language: str) -> None:
    source = {
        "lua": "function weight(job, worker) return job.kind == 'heavy' and 10 or 1 end",
        "javascript": "function weight(job) { return job.kind === 'heavy' ? 10 : 1 }",
    }
    await put_function(node, "ten", language, "weight", source[language])
    await add_rule(node, {"name": "ten", "action": "multiply", "function": "ten"})
    for k in ("heavy", "light"):
        await node.manager.enqueue([{"kind": k} for _ in range(1000)])
    served = Served()
    async with worker(node, served, capacity=8, kinds=["heavy", "light"]):

        async def enough() -> bool:
            return len(served.jobs) >= 1100

        await wait_until(enough, timeout=60)
    first = Counter(j["kind"] for j in served.jobs[:1100])
    assert 7.0 <= first["heavy"] / max(1, first["light"]) <= 14.0, first
    # compiled once, and called once per (lane, worker class), not per job
    assert node.functions.calls <= 4, node.functions.calls


@pytest.mark.parametrize("language", ["lua", "javascript"])
async def test_the_premium_email_match_function(node: Node, language: str) -> None:
    await put_function(node, "premium_email", language, "match", PREMIUM_EMAIL[language])
    await add_rule(
        node,
        {
            "name": "premium email",
            "action": "match",
            "function": "premium_email",
            "match": {"kinds": ["email"], "job_tags": {"all": ["premium"]}},
        },
    )
    await node.manager.enqueue([{"kind": "email", "tags": ["premium"]} for _ in range(40)]
                               + [{"kind": "email"} for _ in range(40)])  # fmt: skip
    premium, no_email, basic = Served(), Served(), Served()
    async with worker(node, premium, capacity=4, tags=["premium"]), \
            worker(node, no_email, capacity=4, tags=["premium", "disallow-email"]), \
            worker(node, basic, capacity=4, tags=["basic"]):  # fmt: skip

        async def all_done() -> bool:
            return len(premium.jobs) + len(no_email.jobs) + len(basic.jobs) >= 80

        await wait_until(all_done, timeout=30)
    assert all(j["tags"] == [] for j in no_email.jobs + basic.jobs)
    assert sum(1 for j in premium.jobs if j["tags"] == ["premium"]) == 40


@pytest.mark.parametrize("how", ["rule", "lua", "javascript"])
async def test_hold_every_import_of_customer_123_then_release_them(node: Node, how: str) -> None:
    match = {"kinds": ["ImportGoods"]}
    if how == "rule":
        body = {"name": "hold 123", "action": "hold",
                "match": {**match, "tenants": ["customer-123"]}}  # fmt: skip
    else:
        source = {
            "lua": "function shed(job) if job.tenant == 'customer-123' then return 'hold' end end",
            "javascript": "function shed(job) { return job.tenant === 'customer-123' ? 'hold' "
                          ": null }",
        }[how]  # fmt: skip
        await put_function(node, "shedder", how, "shed", source)
        body = {"name": "hold 123", "action": "shed", "function": "shedder", "match": match}
    rule_id = await add_rule(node, body)
    await node.manager.enqueue(
        [
            {"kind": "ImportGoods", "tenant": t}
            for t in ("customer-123", "customer-456")
            for _ in range(20)
        ]
    )
    served = Served()
    async with worker(node, served, capacity=8):

        async def others_done() -> bool:
            return len(served.jobs) >= 20

        await wait_until(others_done)
        assert {j["tenant"] for j in served.jobs} == {"customer-456"}
        # the held jobs wait (queued: nothing is lost) ...
        counts = await node.store.run(
            lambda c: c.fetch(
                "SELECT state, count(*) FROM worcr_jobs WHERE tenant = 'customer-123' GROUP BY 1"
            )
        )
        assert [tuple(r) for r in counts] == [("queued", 20)]
        # ... until the rule goes
        before = node.dispatcher.policy.version
        await node.policy_store.rule_delete(uuid.UUID(rule_id))
        await applied(node, before)

        async def released() -> bool:
            return len(served.jobs) >= 40

        await wait_until(released)
    assert Counter(j["tenant"] for j in served.jobs) == {"customer-123": 20, "customer-456": 20}


async def test_discard_cancels_queued_jobs_and_refuses_new_ones(node: Node) -> None:
    queued = await node.manager.enqueue([{"kind": "ImportGoods", "tenant": "c-9"}
                                         for _ in range(30)])  # fmt: skip
    await add_rule(node, {"name": "drop c-9", "action": "discard",
                          "match": {"kinds": ["ImportGoods"], "tenants": ["c-9"]}})  # fmt: skip
    (late,) = await node.manager.enqueue([{"kind": "ImportGoods", "tenant": "c-9"}])
    assert late.state == "discarded"
    (other,) = await node.manager.enqueue([{"kind": "ImportGoods", "tenant": "c-1"}])
    assert other.state == "queued"

    async def cancelled() -> bool:
        rows = [await node.store.job_get(r.id) for r in queued]
        return all(r is not None and r["state"] == "cancelled" for r in rows)

    await wait_until(cancelled)
    row = await node.store.job_get(queued[0].id)
    assert row is not None
    assert "load shedding" in row["last_error"]
    served = Served()
    async with worker(node, served, capacity=4):

        async def ran() -> bool:
            return len(served.jobs) == 1

        await wait_until(ran)
    assert served.jobs[0]["tenant"] == "c-1"


@pytest.mark.parametrize("language", ["lua", "javascript"])
async def test_a_limit_key_function_with_a_dynamic_limit(node: Node, language: str) -> None:
    source = {
        "lua": """
function limit_key(job)
  local shop = job.args.shop
  if shop == nil then return nil end
  return {key = "shop:" .. shop, limit = shop == "big" and 3 or 1}
end""",
        "javascript": """
function limit_key(job) {
  const shop = job.args.shop;
  if (shop === undefined) return null;
  return { key: "shop:" + shop, limit: shop === "big" ? 3 : 1 };
}""",
    }[language]
    await put_function(node, "per_shop", language, "limit_key", source)
    before = node.dispatcher.policy.version
    await LimitStore(node.policy_store).create(parse_limit(
        {"name": "shops", "type": "concurrency", "limit": 100, "function": "per_shop",
         "match": {"kinds": ["sync"]}}))  # fmt: skip
    await applied(node, before)
    await node.manager.enqueue(
        [{"kind": "sync", "args": {"shop": s}} for s in ("big", "small", "tiny") for _ in range(6)]
        + [{"kind": "sync", "args": {}} for _ in range(6)]  # not limited: the function said nil
    )
    served = Served(hold=True)  # jobs stay running: what runs at once is what the limit allows
    async with worker(node, served, capacity=30):

        async def settled() -> bool:
            return len(served.jobs) >= 3 + 1 + 1 + 6

        await wait_until(settled)
        running = Counter(str(j["args"].get("shop")) for j in served.jobs)
        assert running == {"big": 3, "small": 1, "tiny": 1, "None": 6}, running


async def test_a_retry_function_chooses_the_delay_or_gives_up(node: Node) -> None:
    await put_function(node, "retry_policy", "lua", "retry", """
function retry(job, err, attempt)
  if string.find(err.message, "permanent") then return false end
  if string.find(err.message, "crash") then error("retry function crashed") end
  return 100 * attempt
end""", match={"kinds": ["pay"]})  # fmt: skip
    jobs = await node.manager.enqueue([{"kind": "pay", "args": [i]} for i in range(3)])
    c = await RawClient.connect(node.worker_address)
    try:
        await c.hello(capacity=3)
        got = await c.jobs(3)
        errors = {0: "timeout from bank", 1: "permanent: card refused", 2: "crash please"}
        for j in got:
            await c.call("fail", {"jobs": [{"id": j["id"], "token": j["token"],
                                            "error": errors[j["args"][0]]}]})  # fmt: skip
    finally:
        await c.close()
    rows = {r.id: await job_row(node, r.id) for r in jobs}
    delayed, refused, crashed = (rows[r.id] for r in jobs)
    assert delayed["state"] == "retrying"
    wait = (delayed["run_at"] - delayed["updated_at"]).total_seconds()
    assert 95 <= wait <= 105, wait  # 100 x attempt 1, not the default backoff
    assert refused["state"] == "dead"
    assert "gave up" in refused["last_error"]
    assert crashed["state"] == "retrying"  # the job's own backoff
    (error,) = json.loads(crashed["function_errors"])
    assert "retry function crashed" in error["message"]


async def test_explain_shows_function_answers_errors_and_holds(node: Node) -> None:
    await put_function(node, "gpu_only", "javascript", "match",
                       "function match(job, w) { return w.tags.includes('gpu') }")  # fmt: skip
    await put_function(node, "broken", "lua", "weight", "function weight() error('oops') end")
    await add_rule(node, {"name": "gpu", "action": "match", "function": "gpu_only"})
    await add_rule(node, {"name": "boost", "action": "multiply", "function": "broken"})
    await add_rule(node, {"name": "hold t9", "action": "hold", "match": {"tenants": ["t9"]}})
    ok, held = await node.manager.enqueue([{"kind": "k"}, {"kind": "k", "tenant": "t9"}])
    async with aiohttp.ClientSession(node.http_address) as http:
        for tags, allowed in (("gpu", True), ("cpu", False)):
            async with http.get("/api/v1/dispatch/explain",
                                params={"job": str(ok.id), "tags": tags}) as resp:  # fmt: skip
                answer = await resp.json()
            assert resp.status == 200, answer
            assert answer["allowed"] is allowed, answer
            rules = {r["name"]: r for r in answer["rules"]}
            assert (rules["gpu"]["function"], rules["gpu"]["answer"]) == ("gpu_only", allowed)
            assert rules["boost"]["answer"] == 1.0  # the fallback
            assert "oops" in rules["boost"]["error"]
            assert any("fallback" in r and "oops" in r for r in answer["reasons"]), answer
        async with http.get("/api/v1/dispatch/explain",
                            params={"job": str(held.id), "tags": "gpu"}) as resp:  # fmt: skip
            answer = await resp.json()
    assert answer["allowed"] is False
    assert any("held by rule 'hold t9'" in r for r in answer["reasons"]), answer
