"""Dispatch policy HTTP API against real nodes: rules, fairness and tenant weights.

CRUD round trips, every validation error, conflicts and 404s; a change made on one node reaches
another node's watcher and dispatcher; and a rule made through the API changes what a worker
(a raw wire client with tags) is given.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from tests.apicalls import assert_error, call
from tests.conftest import NodeFactory
from tests.premium import PREMIUM_ONLY, PREMIUM_X10
from tests.rawclient import RawClient
from tests.waiting import wait_until
from worcr_node.dispatch.fairness import Strategy
from worcr_node.node import Node

RULES = "/api/v1/rules"
FAIRNESS = "/api/v1/dispatch/fairness"
TENANTS = "/api/v1/tenants"
MISSING = "00000000-0000-4000-8000-000000000000"

BOOST = {**PREMIUM_X10, "description": "premium jobs on premium workers"}
KEEP_OFF = PREMIUM_ONLY


@pytest.fixture
async def http(node: Node) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(node.http_address) as session:
        yield session


def rule(**changes: Any) -> dict[str, Any]:
    return {**BOOST, **changes}


# -- rules: round trips ----------------------------------------------------------------------------


async def test_rule_create_get_list_replace_delete(http: aiohttp.ClientSession) -> None:
    status, created = await call(http, "POST", RULES, BOOST)
    assert status == 201, created
    rule_id = created.pop("id")
    assert created == {**BOOST, "enabled": True, "factor": 10.0}

    status, got = await call(http, "GET", f"{RULES}/{rule_id}")
    assert status == 200
    assert got == {"id": rule_id, **created}
    status, listed = await call(http, "GET", RULES)
    assert (status, listed) == (200, {"rules": [got]})

    status, replaced = await call(http, "PUT", f"{RULES}/{rule_id}", KEEP_OFF)
    assert status == 200, replaced
    assert replaced == {"id": rule_id, **KEEP_OFF, "description": "", "enabled": True}
    assert "factor" not in replaced  # a forbid rule has none
    assert await call(http, "GET", f"{RULES}/{rule_id}") == (200, replaced)

    assert await call(http, "DELETE", f"{RULES}/{rule_id}") == (204, None)
    assert await call(http, "GET", RULES) == (200, {"rules": []})
    status, body = await call(http, "GET", f"{RULES}/{rule_id}")
    assert_error(status, body, 404, "NOT_FOUND", rule_id)


async def test_rules_are_listed_in_creation_order(http: aiohttp.ClientSession) -> None:
    ids = []
    for i in range(3):
        status, created = await call(http, "POST", RULES, rule(name=f"r{i}", factor=i + 1))
        assert status == 201
        ids.append(created["id"])
    status, listed = await call(http, "GET", RULES)
    assert status == 200
    assert [r["id"] for r in listed["rules"]] == ids
    assert [r["factor"] for r in listed["rules"]] == [1.0, 2.0, 3.0]


async def test_rule_defaults_and_normalisation(http: aiohttp.ClientSession) -> None:
    body = {
        "name": "  spaced  ",
        "action": "multiply",
        "factor": 2.5,
        "enabled": False,
        "match": {
            "kinds": ["b", "a", "b"],
            "tenants": ["t"],
            "worker_tags": {"any": ["gpu", "region:*"]},
            "same": ["region"],
            "differ": ["zone"],
        },
    }
    status, created = await call(http, "POST", RULES, body)
    assert status == 201, created
    assert created["name"] == "spaced"
    assert (created["enabled"], created["description"], created["factor"]) == (False, "", 2.5)
    assert created["match"] == {
        "kinds": ["a", "b"],
        "tenants": ["t"],
        "worker_tags": {"any": ["gpu", "region:*"]},
        "same": ["region"],
        "differ": ["zone"],
    }


# -- rules: errors ---------------------------------------------------------------------------------


BAD_RULES = [
    pytest.param(rule(colour="red"), ["unknown field", "colour"], id="unknown-field"),
    pytest.param({**BOOST, "id": MISSING}, ["unknown field", "id"], id="id-in-body"),
    pytest.param(rule(match={"kind": ["a"]}), ["match", "unknown field", "kind"], id="match-field"),
    pytest.param(rule(match={"job_tags": {"some": ["a"]}}), ["job_tags", "some"], id="tags-field"),
    pytest.param(rule(action="boost"), ["action", "multiply", "forbid"], id="bad-action"),
    pytest.param({"name": "x", "match": {}}, ["action"], id="no-action"),
    pytest.param(rule(factor=0), ["factor", "> 0"], id="factor-zero"),
    pytest.param(rule(factor=-2), ["factor", "> 0"], id="factor-negative"),
    pytest.param(rule(factor="NaN"), ["factor", "number"], id="factor-nan-string"),
    pytest.param(rule(factor="10"), ["factor", "number"], id="factor-string"),
    pytest.param(rule(factor=True), ["factor", "number"], id="factor-bool"),
    pytest.param(rule(factor=1e6 + 1), ["factor", "1e+06"], id="factor-too-large"),
    pytest.param({k: v for k, v in BOOST.items() if k != "factor"}, ["factor"], id="no-factor"),
    pytest.param({**KEEP_OFF, "factor": 2}, ["factor", "only a multiply"], id="forbid-factor"),
    pytest.param(
        rule(match={"job_tags": {"all": ["a*b"]}}), ["job_tags.all", "'a*b'", "*"], id="tag-star"
    ),
    pytest.param(
        rule(match={"worker_tags": {"none": ["*"]}}), ["worker_tags.none"], id="bare-star"
    ),
    pytest.param(rule(match={"kinds": ["rep*"]}), ["kinds", "'rep*'"], id="kind-star"),
    pytest.param(
        rule(match={"same": ["region:eu"]}), ["same", "region:eu", "':'"], id="same-colon"
    ),
    pytest.param(rule(match={"differ": ["zone:"]}), ["differ", "':'"], id="differ-colon"),
    pytest.param(rule(match={"kinds": "report"}), ["kinds", "list"], id="kinds-not-list"),
    pytest.param(rule(match={"tenants": [""]}), ["tenants"], id="empty-tenant"),
    pytest.param(rule(match={"kinds": ["k"] * 65}), ["kinds", "64"], id="too-many-kinds"),
    pytest.param(rule(match="all"), ["match", "object"], id="match-not-object"),
    pytest.param(rule(match={"job_tags": ["a"]}), ["job_tags", "object"], id="tags-not-object"),
    pytest.param(rule(name="n" * 129), ["name", "128"], id="name-too-long"),
    pytest.param(rule(name="   "), ["name"], id="name-blank"),
    pytest.param({k: v for k, v in BOOST.items() if k != "name"}, ["name"], id="no-name"),
    pytest.param(rule(description="d" * 1025), ["description", "1024"], id="long-description"),
    pytest.param(rule(enabled="yes"), ["enabled"], id="enabled-not-bool"),
    pytest.param([BOOST], ["JSON object"], id="list-body"),
]


@pytest.mark.parametrize(("body", "words"), BAD_RULES)
async def test_invalid_rule_is_refused_on_create_and_replace(
    http: aiohttp.ClientSession, body: Any, words: list[str]
) -> None:
    status, answer = await call(http, "POST", RULES, body)
    assert_error(status, answer, 400, "BAD_REQUEST", *words)
    assert await call(http, "GET", RULES) == (200, {"rules": []})

    status, existing = await call(http, "POST", RULES, rule(name="existing"))
    assert status == 201
    status, answer = await call(http, "PUT", f"{RULES}/{existing['id']}", body)
    assert_error(status, answer, 400, "BAD_REQUEST", *words)
    assert await call(http, "GET", f"{RULES}/{existing['id']}") == (200, existing)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
async def test_non_finite_factor_is_refused(http: aiohttp.ClientSession, literal: str) -> None:
    data = f'{{"name": "x", "action": "multiply", "factor": {literal}}}'
    status, answer = await call(http, "POST", RULES, data=data)
    assert_error(status, answer, 400, "BAD_REQUEST", "factor")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", RULES),
        ("PUT", f"{RULES}/{MISSING}"),
        ("PUT", FAIRNESS),
        ("PUT", f"{TENANTS}/acme"),
    ],
)
@pytest.mark.parametrize(
    "data", ["{", "", "rule please", "1" * 5000, "[" * 100_000 + "]" * 100_000]
)
async def test_body_that_is_not_json_is_refused(
    http: aiohttp.ClientSession, method: str, path: str, data: str
) -> None:
    status, answer = await call(http, method, path, data=data)
    assert_error(status, answer, 400, "BAD_REQUEST", "JSON")


@pytest.mark.parametrize(
    ("changes", "field"),
    [({"description": "a\x00b"}, "description"), ({"description": "\ud800"}, "description"),
     ({"match": {"kinds": ["a\x00"]}}, "kinds"), ({"match": {"tenants": ["\udfff"]}}, "tenants")],
)  # fmt: skip
async def test_text_postgresql_cannot_store_is_refused(
    http: aiohttp.ClientSession, changes: dict[str, Any], field: str
) -> None:
    status, answer = await call(http, "POST", RULES, rule(**changes))
    assert_error(status, answer, 400, "BAD_REQUEST", field)


async def test_body_that_is_not_utf8_is_refused(http: aiohttp.ClientSession) -> None:
    async with http.post(
        RULES, data=b'{"name": "\xff"}', headers={"Content-Type": "application/json"}
    ) as resp:
        assert_error(resp.status, await resp.json(), 400, "BAD_REQUEST", "JSON")


async def test_duplicate_rule_name_is_a_conflict(http: aiohttp.ClientSession) -> None:
    status, first = await call(http, "POST", RULES, rule(name="dup"))
    assert status == 201
    status, answer = await call(http, "POST", RULES, rule(name="dup", factor=3))
    assert_error(status, answer, 409, "CONFLICT", "'dup'")
    status, answer = await call(http, "POST", RULES, {**KEEP_OFF, "name": "  dup "})
    assert_error(status, answer, 409, "CONFLICT", "'dup'")

    status, second = await call(http, "POST", RULES, rule(name="other"))
    assert status == 201
    status, answer = await call(http, "PUT", f"{RULES}/{second['id']}", rule(name="dup"))
    assert_error(status, answer, 409, "CONFLICT", "'dup'")
    assert await call(http, "GET", RULES) == (200, {"rules": [first, second]})
    # Replacing a rule under its own name is no conflict.
    status, same = await call(http, "PUT", f"{RULES}/{first['id']}", rule(name="dup", factor=4))
    assert (status, same["factor"]) == (200, 4.0)


async def test_unknown_rule_is_not_found(http: aiohttp.ClientSession) -> None:
    for method, body in (("GET", None), ("PUT", BOOST), ("DELETE", None)):
        status, answer = await call(http, method, f"{RULES}/{MISSING}", body)
        assert_error(status, answer, 404, "NOT_FOUND", MISSING)
    assert await call(http, "GET", RULES) == (200, {"rules": []})  # PUT did not create it


async def test_deleted_rule_is_gone(http: aiohttp.ClientSession) -> None:
    status, created = await call(http, "POST", RULES, BOOST)
    assert status == 201
    assert await call(http, "DELETE", f"{RULES}/{created['id']}") == (204, None)
    status, answer = await call(http, "DELETE", f"{RULES}/{created['id']}")
    assert_error(status, answer, 404, "NOT_FOUND")
    status, answer = await call(http, "PUT", f"{RULES}/{created['id']}", BOOST)
    assert_error(status, answer, 404, "NOT_FOUND")


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_rule_id_that_is_not_a_uuid_is_a_bad_request(
    http: aiohttp.ClientSession, method: str
) -> None:
    status, answer = await call(http, method, f"{RULES}/not-a-uuid", BOOST)
    assert_error(status, answer, 400, "BAD_REQUEST", "'not-a-uuid'", "rule id")


# -- fairness --------------------------------------------------------------------------------------


async def test_fairness_defaults_then_set_and_read_back(http: aiohttp.ClientSession) -> None:
    assert await call(http, "GET", FAIRNESS) == (200, {"default": "round_robin", "kinds": {}})
    settings = {"default": "weighted_fair", "kinds": {"report": "fifo", "mail": "fewest_running"}}
    assert await call(http, "PUT", FAIRNESS, settings) == (200, settings)
    assert await call(http, "GET", FAIRNESS) == (200, settings)
    # A PUT replaces the whole setting: kinds left out go back to the default.
    assert await call(http, "PUT", FAIRNESS, {"default": "fifo"}) == (
        200, {"default": "fifo", "kinds": {}},
    )  # fmt: skip
    assert await call(http, "GET", FAIRNESS) == (200, {"default": "fifo", "kinds": {}})


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"default": "lottery"}, ["default", "'lottery'", "round_robin"]),
        ({"default": "fifo", "kinds": {"report": "best"}}, ["kinds.report", "'best'"]),
        ({"default": None}, ["default", "None"]),
        ({"kinds": {}}, ["default", "required"]),
        ({"default": "fifo", "tenants": {}}, ["unknown field", "tenants"]),
        ({"default": "fifo", "kinds": ["report"]}, ["kinds", "object"]),
        ({"default": "fifo", "kinds": {"*": "fifo"}}, ["kinds", "'*'"]),
        ({"default": "fifo", "kinds": {"": "fifo"}}, ["kinds", "''"]),
        ({"default": "fifo", "kinds": {"k" * 129: "fifo"}}, ["kinds"]),
        ("fifo", ["JSON object"]),
    ],
)
async def test_invalid_fairness_is_refused(
    http: aiohttp.ClientSession, body: Any, words: list[str]
) -> None:
    status, answer = await call(http, "PUT", FAIRNESS, body)
    assert_error(status, answer, 400, "BAD_REQUEST", *words)
    assert await call(http, "GET", FAIRNESS) == (200, {"default": "round_robin", "kinds": {}})


# -- tenant weights --------------------------------------------------------------------------------


def assert_tenant_row(row: Any, tenant: str, weight: float) -> None:
    assert set(row) == {"tenant", "weight", "updated_at"}
    assert (row["tenant"], row["weight"]) == (tenant, weight)
    assert datetime.fromisoformat(row["updated_at"]).tzinfo is not None


async def test_tenant_weight_set_get_list_update_delete(http: aiohttp.ClientSession) -> None:
    assert await call(http, "GET", TENANTS) == (200, {"tenants": []})
    status, row = await call(http, "PUT", f"{TENANTS}/acme", {"weight": 2.5})
    assert status == 200
    assert_tenant_row(row, "acme", 2.5)
    assert await call(http, "GET", f"{TENANTS}/acme") == (200, row)

    status, other = await call(http, "PUT", f"{TENANTS}/zeta", {"weight": 1})
    assert status == 200
    assert_tenant_row(other, "zeta", 1.0)
    status, updated = await call(http, "PUT", f"{TENANTS}/acme", {"weight": 0.5})
    assert status == 200
    assert_tenant_row(updated, "acme", 0.5)
    assert updated["updated_at"] >= row["updated_at"]
    assert await call(http, "GET", TENANTS) == (200, {"tenants": [updated, other]})

    assert await call(http, "DELETE", f"{TENANTS}/acme") == (204, None)
    status, answer = await call(http, "GET", f"{TENANTS}/acme")
    assert_error(status, answer, 404, "NOT_FOUND", "'acme'")
    status, answer = await call(http, "DELETE", f"{TENANTS}/acme")
    assert_error(status, answer, 404, "NOT_FOUND", "'acme'")
    assert await call(http, "GET", TENANTS) == (200, {"tenants": [other]})


async def test_tenant_names_are_those_jobs_may_have(http: aiohttp.ClientSession) -> None:
    for tenant in ("t" * 128, "team/a b", "ünï", "default"):
        path = f"{TENANTS}/{quote(tenant, safe='')}"
        status, row = await call(http, "PUT", path, {"weight": 3})
        assert status == 200, (tenant, row)
        assert_tenant_row(row, tenant, 3.0)
        assert await call(http, "GET", path) == (200, row)
    for tenant, word in (("t" * 129, "128"), ("a\tb", "control")):
        for method in ("GET", "PUT", "DELETE"):
            path = f"{TENANTS}/{quote(tenant, safe='')}"
            status, answer = await call(http, method, path, {"weight": 3})
            assert_error(status, answer, 400, "BAD_REQUEST", "tenant", word)


@pytest.mark.parametrize(
    "body",
    [
        {"weight": 0},
        {"weight": -1},
        {"weight": 1e6 + 1},
        {"weight": "2"},
        {"weight": True},
        {"weight": None},
        {},
        {"weight": 1, "extra": 1},
        [2],
        2,
    ],
)
async def test_invalid_tenant_weight_is_refused(http: aiohttp.ClientSession, body: Any) -> None:
    status, answer = await call(http, "PUT", f"{TENANTS}/acme", body)
    assert_error(status, answer, 400, "BAD_REQUEST", "weight")
    assert await call(http, "GET", TENANTS) == (200, {"tenants": []})


async def test_nan_tenant_weight_is_refused(http: aiohttp.ClientSession) -> None:
    status, answer = await call(http, "PUT", f"{TENANTS}/acme", data='{"weight": NaN}')
    assert_error(status, answer, 400, "BAD_REQUEST", "weight")


# -- auth ------------------------------------------------------------------------------------------


AUTH_ROUTES = [
    ("GET", RULES),
    ("POST", RULES),
    ("DELETE", f"{RULES}/{MISSING}"),
    ("GET", FAIRNESS),
    ("PUT", FAIRNESS),
    ("GET", TENANTS),
    ("PUT", f"{TENANTS}/a"),
]


async def test_policy_routes_need_the_token(node_factory: NodeFactory) -> None:
    node = await node_factory(token="s3cret")
    async with aiohttp.ClientSession(node.http_address) as http:
        for method, path in AUTH_ROUTES:
            status, answer = await call(http, method, path, {})
            assert_error(status, answer, 401, "UNAUTHORIZED")
    auth = {"Authorization": "Bearer s3cret"}
    async with aiohttp.ClientSession(node.http_address, headers=auth) as http:
        assert (await call(http, "POST", RULES, BOOST))[0] == 201
        assert (await call(http, "GET", FAIRNESS))[0] == 200


# -- across nodes and into dispatch ----------------------------------------------------------------


async def test_change_on_one_node_reaches_another(node_factory: NodeFactory) -> None:
    a = await node_factory()
    b = await node_factory()
    start = b.policy.policy.version
    async with aiohttp.ClientSession(a.http_address) as http:
        status, created = await call(http, "POST", RULES, BOOST)
        assert status == 201

        async def b_has_rule() -> bool:
            return created["id"] in {r.id for r in b.dispatcher.policy.rules}

        await wait_until(b_has_rule)
        assert b.policy.policy.version > start
        [seen] = b.policy.policy.rules
        assert seen.to_json() == created

        status, _ = await call(http, "PUT", f"{RULES}/{created['id']}", rule(factor=3))
        assert status == 200

        async def b_has_new_factor() -> bool:
            return [r.factor for r in b.dispatcher.policy.rules] == [3.0]

        await wait_until(b_has_new_factor)

        settings = {"default": "weighted_fair", "kinds": {"report": "fifo"}}
        assert (await call(http, "PUT", FAIRNESS, settings))[0] == 200
        assert (await call(http, "PUT", f"{TENANTS}/acme", {"weight": 4}))[0] == 200
        version = await a.policy_store.version()

        async def b_has_version() -> bool:
            return b.policy.policy.version >= version

        await wait_until(b_has_version)
        fairness = b.dispatcher.policy.fairness
        assert fairness.default == Strategy.WEIGHTED_FAIR
        assert dict(fairness.kinds) == {"report": Strategy.FIFO}
        assert fairness.tenant_weight("acme") == 4.0

        assert await call(http, "DELETE", f"{RULES}/{created['id']}") == (204, None)

        async def b_has_no_rule() -> bool:
            return b.dispatcher.policy.rules == ()

        await wait_until(b_has_no_rule)


async def enqueue(http: aiohttp.ClientSession, kind: str) -> str:
    status, body = await call(http, "POST", "/api/v1/jobs", {"kind": kind})
    assert status == 201, body
    job_id: str = body["id"]
    return job_id


async def run_one(worker: RawClient, kind: str) -> str:
    """Take the next job pushed to the worker, check its kind, ack it."""
    [job] = await worker.jobs(1)
    assert job["kind"] == kind, job
    assert await worker.call("ack", {"jobs": [{"id": job["id"], "token": job["token"]}]}) == {
        "results": [None]
    }
    job_id: str = job["id"]
    return job_id


async def test_forbid_rule_keeps_a_kind_off_a_tagged_worker_until_deleted(
    node: Node, http: aiohttp.ClientSession
) -> None:
    status, forbid = await call(http, "POST", RULES, {
        "name": "no batch on premium",
        "match": {"kinds": ["p.batch"], "worker_tags": {"all": ["premium"]}},
        "action": "forbid",
    })  # fmt: skip
    assert status == 201, forbid

    async def node_has_rule() -> bool:
        return forbid["id"] in {r.id for r in node.dispatcher.policy.rules}

    await wait_until(node_has_rule)
    worker = await RawClient.connect(node.worker_address)
    await worker.hello(capacity=1, tags=["premium", "region:eu"])
    try:
        batch = await enqueue(http, "p.batch")
        # Work the worker may take is enqueued after the forbidden job and still comes first,
        # twice over: the forbidden job was ready all along and the worker had free credit.
        for _ in range(2):
            allowed = await enqueue(http, "p.interactive")
            assert await run_one(worker, "p.interactive") == allowed
        assert worker.notifications.empty()
        status, job = await call(http, "GET", f"/api/v1/jobs/{batch}")
        assert (status, job["state"], job["attempts"]) == (200, "queued", [])

        assert await call(http, "DELETE", f"{RULES}/{forbid['id']}") == (204, None)
        assert await run_one(worker, "p.batch") == batch
    finally:
        await worker.close()
