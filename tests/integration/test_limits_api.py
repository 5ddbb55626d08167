"""Limits HTTP API against real nodes: definitions, validation, and live usage per key.

CRUD round trips by id and by name, every validation error, conflicts and 404s; a change made on
one node reaches another node's dispatcher; and the usage readout of a job concurrency limit
(jobs held by a raw wire worker) and of rate limits (units taken with the protocol's `acquire`),
including the pruning of keys idle long enough to read as unused again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import aiohttp
import pytest

from tests.apicalls import assert_error, call
from tests.conftest import NodeFactory
from tests.waiting import wait_until
from tests.workers import Served, worker
from worcr_node.limits.model import Limit
from worcr_node.node import Node

LIMITS = "/api/v1/limits"
MISSING = "00000000-0000-4000-8000-000000000000"

IMPORTS = {"name": "imports", "type": "concurrency", "limit": 2, "key": "{tenant}",
           "match": {"kinds": ["import"]}}  # fmt: skip
CALLS = {"name": "calls", "type": "fixed_window", "limit": 10, "period": 1}
BUCKET = {"name": "partner", "scope": "rate", "type": "token_bucket", "limit": 10, "period": 100,
          "burst": 4, "key": "{tenant}"}  # fmt: skip


@pytest.fixture
async def http(node: Node) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(node.http_address) as session:
        yield session


async def create(http: aiohttp.ClientSession, body: dict[str, Any]) -> dict[str, Any]:
    status, created = await call(http, "POST", LIMITS, body)
    assert status == 201, created
    return created  # type: ignore[no-any-return]


async def in_force(node: Node, name: str) -> Limit:
    """Wait until the node's dispatcher applies the limit called `name`."""

    async def loaded() -> bool:
        return name in node.dispatcher.limits.by_name

    await wait_until(loaded, timeout=10)
    return node.dispatcher.limits.by_name[name]


# -- definitions: round trips ----------------------------------------------------------------------


async def test_limit_create_get_list_replace_delete(http: aiohttp.ClientSession) -> None:
    created = await create(http, IMPORTS)
    limit_id = created.pop("id")
    assert created == {**IMPORTS, "description": "", "enabled": True, "scope": "job"}

    status, got = await call(http, "GET", f"{LIMITS}/{limit_id}")
    assert (status, got) == (200, {"id": limit_id, **created})
    assert await call(http, "GET", LIMITS) == (200, {"limits": [got]})

    # What a GET gives can be PUT back as is (its id is this limit's)
    assert await call(http, "PUT", f"{LIMITS}/{limit_id}", got) == (200, got)

    status, replaced = await call(http, "PUT", f"{LIMITS}/{limit_id}", BUCKET)
    assert status == 200, replaced
    assert replaced == {"id": limit_id, **BUCKET, "description": "", "enabled": True,
                        "period": 100.0}  # fmt: skip
    assert "match" not in replaced  # a rate limit matches no jobs
    assert await call(http, "GET", f"{LIMITS}/{limit_id}") == (200, replaced)

    assert await call(http, "DELETE", f"{LIMITS}/{limit_id}") == (204, None)
    assert await call(http, "GET", LIMITS) == (200, {"limits": []})
    status, body = await call(http, "GET", f"{LIMITS}/{limit_id}")
    assert_error(status, body, 404, "NOT_FOUND", limit_id)


async def test_every_type_round_trips(http: aiohttp.ClientSession) -> None:
    bodies = [
        {"name": "c", "type": "concurrency", "limit": 3, "key": "{kind}:{tag:customer}",
         "match": {"tenants": ["t"], "job_tags": {"all": ["premium"]}}},
        {"name": "b", "type": "token_bucket", "limit": 5, "period": 0.5, "key": "{args.order.id}"},
        {"name": "f", "scope": "rate", "type": "fixed_window", "limit": 100, "period": 60,
         "enabled": False, "description": "partner API"},
        {"name": "s", "type": "sliding_window", "limit": 100_000, "period": 2592000,
         "key": "{args.0}"},
    ]  # fmt: skip
    listed = []
    for body in bodies:
        created = await create(http, body)
        status, got = await call(http, "GET", f"{LIMITS}/{created['id']}")
        assert (status, got) == (200, created)
        assert await call(http, "PUT", f"{LIMITS}/{body['name']}", got) == (200, got)
        listed.append(got)
    assert listed[1]["burst"] == 5  # a bucket's burst defaults to its limit
    assert listed[3]["match"] == {}
    assert await call(http, "GET", LIMITS) == (200, {"limits": listed})


async def test_limit_is_found_by_name(http: aiohttp.ClientSession) -> None:
    created = await create(http, IMPORTS)
    assert await call(http, "GET", f"{LIMITS}/imports") == (200, created)

    status, renamed = await call(http, "PUT", f"{LIMITS}/imports", {**IMPORTS, "name": "ingest",
                                                                   "limit": 5})  # fmt: skip
    assert (status, renamed) == (200, {**created, "name": "ingest", "limit": 5})
    status, answer = await call(http, "GET", f"{LIMITS}/imports")
    assert_error(status, answer, 404, "NOT_FOUND", "'imports'")
    assert await call(http, "GET", f"{LIMITS}/ingest") == (200, renamed)

    assert await call(http, "DELETE", f"{LIMITS}/ingest") == (204, None)
    assert await call(http, "GET", LIMITS) == (200, {"limits": []})


async def test_a_name_that_looks_like_an_id_is_still_found(http: aiohttp.ClientSession) -> None:
    created = await create(http, {**CALLS, "name": MISSING})
    assert await call(http, "GET", f"{LIMITS}/{MISSING}") == (200, created)
    other = await create(http, {**CALLS, "name": created["id"]})
    # An id wins over a name
    assert await call(http, "GET", f"{LIMITS}/{created['id']}") == (200, created)
    assert await call(http, "GET", f"{LIMITS}/{other['id']}") == (200, other)


async def test_put_accepts_only_the_limits_own_id(http: aiohttp.ClientSession) -> None:
    created = await create(http, IMPORTS)
    other = await create(http, CALLS)
    path = f"{LIMITS}/{created['id']}"
    for given in (other["id"], MISSING, "imports", 5, None):
        status, answer = await call(http, "PUT", path, {**IMPORTS, "id": given})
        assert_error(status, answer, 400, "BAD_REQUEST", "id")
    status, same = await call(http, "PUT", path, {**IMPORTS, "id": created["id"].upper()})
    assert (status, same) == (200, created)
    status, same = await call(http, "PUT", f"{LIMITS}/imports", {**IMPORTS, "id": created["id"]})
    assert (status, same) == (200, created)
    assert await call(http, "GET", LIMITS) == (200, {"limits": [created, other]})


# -- definitions: errors ---------------------------------------------------------------------------


def imports(**changes: Any) -> dict[str, Any]:
    return {**IMPORTS, **changes}


def calls(**changes: Any) -> dict[str, Any]:
    return {**CALLS, **changes}


def without(body: dict[str, Any], name: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != name}


BAD_LIMITS = [
    pytest.param(imports(colour="red"), ["unknown field", "colour"], id="unknown-field"),
    pytest.param(imports(id=MISSING), ["id"], id="id-in-body"),
    pytest.param(without(IMPORTS, "name"), ["name"], id="no-name"),
    pytest.param(imports(name="two words"), ["name"], id="name-space"),
    pytest.param(imports(name="-x"), ["name"], id="name-leading-dash"),
    pytest.param(imports(name="n" * 129), ["name", "128"], id="name-too-long"),
    pytest.param(imports(name=5), ["name"], id="name-number"),
    pytest.param(imports(description="d" * 1025), ["description", "1024"], id="long-description"),
    pytest.param(imports(description=["d"]), ["description"], id="description-list"),
    pytest.param(imports(description="a\x00b"), ["description", "NUL"], id="description-nul"),
    pytest.param(imports(description="\ud800"), ["description", "surrogate"], id="surrogate"),
    pytest.param(imports(enabled="yes"), ["enabled"], id="enabled-string"),
    pytest.param(imports(enabled=1), ["enabled"], id="enabled-number"),
    pytest.param(imports(scope="global"), ["scope", "job", "rate"], id="bad-scope"),
    pytest.param(imports(scope=None), ["scope"], id="scope-null"),
    pytest.param(without(IMPORTS, "type"), ["type"], id="no-type"),
    pytest.param(imports(type="leaky_bucket"), ["type", "token_bucket"], id="bad-type"),
    pytest.param(imports(type=["concurrency"]), ["type"], id="type-list"),
    pytest.param(without(IMPORTS, "limit"), ["limit"], id="no-limit"),
    pytest.param(imports(limit=0), ["limit", "out of range"], id="limit-zero"),
    pytest.param(imports(limit=-3), ["limit", "out of range"], id="limit-negative"),
    pytest.param(imports(limit="10"), ["limit", "integer"], id="limit-string"),
    pytest.param(imports(limit=2.5), ["limit", "integer"], id="limit-float"),
    pytest.param(imports(limit=2.0), ["limit", "integer"], id="limit-integral-float"),
    pytest.param(imports(limit=True), ["limit", "integer"], id="limit-bool"),
    pytest.param(imports(limit=10**30), ["limit", "out of range"], id="limit-huge"),
    pytest.param(imports(limit=None), ["limit"], id="limit-null"),
    pytest.param(
        calls(type="sliding_window", limit=100_001), ["limit", "100000"], id="sliding-over-max"
    ),
    pytest.param(imports(period=1), ["period", "concurrency"], id="concurrency-period"),
    pytest.param(imports(burst=2), ["burst", "concurrency"], id="concurrency-burst"),
    pytest.param(calls(type="token_bucket", period=None), ["period"], id="bucket-period-null"),
    pytest.param(without(calls(type="token_bucket"), "period"), ["period"], id="bucket-no-period"),
    pytest.param(without(CALLS, "period"), ["period"], id="window-no-period"),
    pytest.param(calls(period=0), ["period"], id="period-zero"),
    pytest.param(calls(period=-1), ["period"], id="period-negative"),
    pytest.param(calls(period="1"), ["period"], id="period-string"),
    pytest.param(calls(period=True), ["period"], id="period-bool"),
    pytest.param(calls(period=30 * 86400 + 1), ["period"], id="period-over-30-days"),
    pytest.param(calls(period=10**400), ["period"], id="period-huge"),
    pytest.param(calls(burst=5), ["burst", "token_bucket"], id="window-burst"),
    pytest.param(calls(type="token_bucket", burst=0), ["burst", "out of range"], id="burst-zero"),
    pytest.param(calls(type="token_bucket", burst="4"), ["burst", "integer"], id="burst-string"),
    pytest.param(calls(type="token_bucket", burst=10**20), ["burst"], id="burst-huge"),
    pytest.param(imports(key="{nope}"), ["key", "{nope}"], id="key-unknown-field"),
    pytest.param(imports(key="{args.}"), ["key", "{args.}"], id="key-empty-args-path"),
    pytest.param(imports(key="{args.a..b}"), ["key", "{args.a..b}"], id="key-empty-segment"),
    pytest.param(
        imports(key="{args." + ".".join("abcdefghi") + "}"), ["key", "8"], id="key-args-too-deep"
    ),
    pytest.param(imports(key="{tag:}"), ["key", "{tag:}"], id="key-empty-tag"),
    pytest.param(imports(key="{tenant"), ["key", "unbalanced"], id="key-open-brace"),
    pytest.param(imports(key="tenant}"), ["key", "unbalanced"], id="key-close-brace"),
    pytest.param(imports(key="{{tenant}}"), ["key", "unbalanced"], id="key-double-brace"),
    pytest.param(imports(key="a\tb"), ["key", "control"], id="key-control"),
    pytest.param(imports(key="k" * 257), ["key", "256"], id="key-too-long"),
    pytest.param(imports(key=5), ["key"], id="key-number"),
    pytest.param(imports(scope="rate"), ["match", "rate limit"], id="match-on-rate-limit"),
    pytest.param(imports(match="all"), ["match", "object"], id="match-not-object"),
    pytest.param(
        imports(match={"kind": ["a"]}), ["match", "unknown field", "kind"], id="match-unknown-field"
    ),
    pytest.param(imports(match={"kinds": "import"}), ["kinds", "list"], id="kinds-not-list"),
    pytest.param(imports(match={"kinds": ["a\x00"]}), ["match.kinds", "control"], id="kinds-nul"),
    pytest.param(imports(match={"job_tags": {"all": [1]}}), ["job_tags.all"], id="tag-number"),
    pytest.param([IMPORTS], ["JSON object"], id="list-body"),
    pytest.param("imports", ["JSON object"], id="string-body"),
]


@pytest.mark.parametrize(("body", "words"), BAD_LIMITS)
async def test_invalid_limit_is_refused_on_create_and_replace(
    http: aiohttp.ClientSession, body: Any, words: list[str]
) -> None:
    status, answer = await call(http, "POST", LIMITS, body)
    assert_error(status, answer, 400, "BAD_REQUEST", *words)
    assert await call(http, "GET", LIMITS) == (200, {"limits": []})

    existing = await create(http, {**CALLS, "name": "existing"})
    status, answer = await call(http, "PUT", f"{LIMITS}/{existing['id']}", body)
    assert_error(status, answer, 400, "BAD_REQUEST", *words)
    if not (isinstance(body, dict) and "id" in body):  # an id is checked against the limit's
        status, answer = await call(http, "PUT", f"{LIMITS}/{MISSING}", body)  # 400 before 404
        assert_error(status, answer, 400, "BAD_REQUEST", *words)
    assert await call(http, "GET", f"{LIMITS}/{existing['id']}") == (200, existing)


@pytest.mark.parametrize(
    ("field", "literal"),
    [
        ("period", "NaN"),
        ("period", "Infinity"),
        ("period", "-Infinity"),
        ("period", "1e400"),
        ("period", "1" * 400),
        ("limit", "NaN"),
        ("limit", "1e400"),
        ("limit", "1" * 400),
        ("limit", "-" + "9" * 400),
    ],
)
async def test_non_finite_or_huge_numbers_are_refused(
    http: aiohttp.ClientSession, field: str, literal: str
) -> None:
    values = {"limit": "10", "period": "1", field: literal}
    data = (f'{{"name": "x", "type": "fixed_window", "limit": {values["limit"]}, '
            f'"period": {values["period"]}}}')  # fmt: skip
    status, answer = await call(http, "POST", LIMITS, data=data)
    assert_error(status, answer, 400, "BAD_REQUEST", field)


@pytest.mark.parametrize(
    "data",
    [
        "{",
        "",
        "limit please",
        '{"name": "x", "limit": ' + "1" * 5000 + "}",  # over Python's integer digits
        "[" * 100_000 + "]" * 100_000,
    ],
    ids=["open-brace", "empty", "text", "5000-digits", "deep"],
)
@pytest.mark.parametrize("method", ["POST", "PUT"])
async def test_body_that_is_not_json_is_refused(
    http: aiohttp.ClientSession, method: str, data: str
) -> None:
    path = LIMITS if method == "POST" else f"{LIMITS}/{MISSING}"
    status, answer = await call(http, method, path, data=data)
    assert_error(status, answer, 400, "BAD_REQUEST", "JSON")


async def test_body_that_is_not_utf8_is_refused(http: aiohttp.ClientSession) -> None:
    async with http.post(
        LIMITS, data=b'{"name": "\xff"}', headers={"Content-Type": "application/json"}
    ) as resp:
        assert_error(resp.status, await resp.json(), 400, "BAD_REQUEST", "JSON")


async def test_duplicate_limit_name_is_a_conflict(http: aiohttp.ClientSession) -> None:
    first = await create(http, IMPORTS)
    status, answer = await call(http, "POST", LIMITS, {**CALLS, "name": "imports"})
    assert_error(status, answer, 409, "CONFLICT", "'imports'")

    second = await create(http, CALLS)
    status, answer = await call(http, "PUT", f"{LIMITS}/calls", {**CALLS, "name": "imports"})
    assert_error(status, answer, 409, "CONFLICT", "'imports'")
    assert await call(http, "GET", LIMITS) == (200, {"limits": [first, second]})
    # Replacing a limit under its own name is no conflict
    status, same = await call(http, "PUT", f"{LIMITS}/imports", {**IMPORTS, "limit": 7})
    assert (status, same["limit"]) == (200, 7)


async def test_unknown_limit_is_not_found(http: aiohttp.ClientSession) -> None:
    for ref in (MISSING, "nothing", "no.such:limit"):
        for method, body in (("GET", None), ("PUT", IMPORTS), ("DELETE", None)):
            status, answer = await call(http, method, f"{LIMITS}/{ref}", body)
            assert_error(status, answer, 404, "NOT_FOUND", repr(ref))
        status, answer = await call(http, "GET", f"{LIMITS}/{ref}/usage")
        assert_error(status, answer, 404, "NOT_FOUND", repr(ref))
    assert await call(http, "GET", LIMITS) == (200, {"limits": []})  # PUT did not create it


async def test_deleted_limit_is_gone(http: aiohttp.ClientSession) -> None:
    created = await create(http, IMPORTS)
    assert await call(http, "DELETE", f"{LIMITS}/imports") == (204, None)
    for method, body in (("DELETE", None), ("PUT", IMPORTS), ("GET", None)):
        status, answer = await call(http, method, f"{LIMITS}/{created['id']}", body)
        assert_error(status, answer, 404, "NOT_FOUND")


@pytest.mark.parametrize("ref", ["n" * 129, "a%09b", "%00"])
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_ref_that_cannot_name_a_limit_is_a_bad_request(
    http: aiohttp.ClientSession, method: str, ref: str
) -> None:
    status, answer = await call(http, method, f"{LIMITS}/{ref}", IMPORTS)
    assert_error(status, answer, 400, "BAD_REQUEST", "limit id or name")
    status, answer = await call(http, "GET", f"{LIMITS}/{ref}/usage")
    assert_error(status, answer, 400, "BAD_REQUEST", "limit id or name")


async def test_ref_that_is_not_utf8_is_not_found(http: aiohttp.ClientSession) -> None:
    status, answer = await call(http, "GET", f"{LIMITS}/%ED%A0%80")  # stays percent-encoded
    assert_error(status, answer, 404, "NOT_FOUND", "no limit")


async def test_limit_routes_need_the_token(node_factory: NodeFactory) -> None:
    node = await node_factory(token="s3cret")
    routes = [("GET", LIMITS), ("POST", LIMITS), ("GET", f"{LIMITS}/x"), ("PUT", f"{LIMITS}/x"),
              ("DELETE", f"{LIMITS}/x"), ("GET", f"{LIMITS}/x/usage")]  # fmt: skip
    async with aiohttp.ClientSession(node.http_address) as http:
        for method, path in routes:
            status, answer = await call(http, method, path, {})
            assert_error(status, answer, 401, "UNAUTHORIZED")
    auth = {"Authorization": "Bearer s3cret"}
    async with aiohttp.ClientSession(node.http_address, headers=auth) as http:
        await create(http, IMPORTS)
        assert (await call(http, "GET", f"{LIMITS}/imports/usage"))[0] == 200


# -- across nodes ----------------------------------------------------------------------------------


async def test_change_on_one_node_reaches_another(node_factory: NodeFactory) -> None:
    a = await node_factory()
    b = await node_factory()
    start = b.dispatcher.policy.version
    async with aiohttp.ClientSession(a.http_address) as http:
        created = await create(http, IMPORTS)
        seen = await in_force(b, "imports")
        assert seen.to_json() == created
        assert b.dispatcher.policy.version > start

        status, _ = await call(http, "PUT", f"{LIMITS}/imports", {**IMPORTS, "limit": 9})
        assert status == 200

        async def b_has_new_limit() -> bool:
            lim = b.dispatcher.limits.by_name.get("imports")
            return lim is not None and lim.limit == 9

        await wait_until(b_has_new_limit)
        assert await call(http, "DELETE", f"{LIMITS}/imports") == (204, None)

        async def b_has_none() -> bool:
            return b.dispatcher.limits.limits == ()

        await wait_until(b_has_none)


# -- usage -----------------------------------------------------------------------------------------


async def held(served: Served, n: int) -> None:
    async def enough() -> bool:
        return len(served.jobs) >= n

    await wait_until(enough, timeout=10)


async def usage(http: aiohttp.ClientSession, ref: str, query: str = "") -> dict[str, Any]:
    status, body = await call(http, "GET", f"{LIMITS}/{ref}/usage{query}")
    assert status == 200, body
    assert set(body) == {"limit", "at", "keys"}
    assert datetime.fromisoformat(body["at"]).tzinfo is not None
    for item in body["keys"]:
        assert set(item) == {"key", "used", "available", "limit", "retry_after", "last_used"}
        if item["last_used"] is not None:
            assert datetime.fromisoformat(item["last_used"]) <= datetime.fromisoformat(body["at"])
    return body  # type: ignore[no-any-return]


def by_key(body: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    return {i["key"]: (i["used"], i["available"], i["limit"], i["retry_after"])
            for i in body["keys"]}  # fmt: skip


async def test_usage_of_a_job_concurrency_limit(node: Node, http: aiohttp.ClientSession) -> None:
    created = await create(http, IMPORTS)
    await in_force(node, "imports")
    body = await usage(http, "imports")
    assert (body["limit"], body["keys"]) == (created, [])

    await node.manager.enqueue([{"kind": "import", "tenant": t} for t in "ab" for _ in range(3)])
    served = Served(hold=True)
    async with worker(node, served, capacity=10, kinds=["import"]):
        await held(served, 4)
        body = await usage(http, "imports")
        assert by_key(body) == {"a": (2, 0, 2, None), "b": (2, 0, 2, None)}  # None: on release
        assert all(i["last_used"] is not None for i in body["keys"])
        assert len(served.jobs) == 4  # the limit held the other two back

        one = await usage(http, created["id"], "?key=a")
        assert by_key(one) == {"a": (2, 0, 2, None)}
        assert one["keys"][0]["last_used"] in {i["last_used"] for i in body["keys"]}
        assert len((await usage(http, "imports", "?max=1"))["keys"]) == 1
        unused = await usage(http, "imports", "?key=c")
        assert unused["keys"] == [{"key": "c", "used": 0, "available": 2, "limit": 2,
                                   "retry_after": None, "last_used": None}]  # fmt: skip

        # Lowered below what is held: used over the limit, nothing available
        status, _ = await call(http, "PUT", f"{LIMITS}/imports", {**IMPORTS, "limit": 1})
        assert status == 200
        assert by_key(await usage(http, "imports")) == {"a": (2, 0, 1, None), "b": (2, 0, 1, None)}


async def test_usage_of_rate_limits_after_units_are_taken(
    node: Node, http: aiohttp.ClientSession
) -> None:
    await create(http, BUCKET)
    await create(http, {"name": "api", "scope": "rate", "type": "sliding_window", "limit": 5,
                        "period": 60, "key": "{tenant}"})  # fmt: skip
    await in_force(node, "partner")
    await in_force(node, "api")
    await node.manager.enqueue([{"kind": "call", "tenant": "a"}])
    served = Served(hold=True)
    async with worker(node, served, capacity=1) as c:
        await held(served, 1)
        job = {"id": served.jobs[0]["id"], "token": served.jobs[0]["token"]}

        async def acquire(limit: str, units: int, **extra: Any) -> dict[str, Any]:
            res = await c.call("acquire", {**job, "limit": limit, "units": units, **extra})
            assert isinstance(res, dict)
            return res

        assert (await acquire("api", 3))["granted"] is True
        assert by_key(await usage(http, "api")) == {"a": (3, 2, 5, None)}
        assert (await acquire("api", 2))["granted"] is True
        assert (await acquire("api", 1))["granted"] is False
        [item] = (await usage(http, "api"))["keys"]
        assert (item["key"], item["used"], item["available"], item["limit"]) == ("a", 5, 0, 5)
        assert 0 < item["retry_after"] <= 60

        assert (await acquire("partner", 3))["granted"] is True
        assert (await acquire("partner", 1, key="other"))["granted"] is True
        body = await usage(http, "partner")
        assert [i["key"] for i in body["keys"]] == ["other", "a"]  # most recently used first
        assert by_key(body) == {"a": (3, 1, 4, None), "other": (1, 3, 4, None)}  # limit: burst
        assert (await acquire("partner", 2))["granted"] is False
        [item] = (await usage(http, "partner", "?key=a"))["keys"]
        assert (item["used"], item["available"], item["limit"]) == (3, 1, 4)
        assert item["retry_after"] is None  # one is free now


async def test_usage_forgets_keys_idle_for_two_periods(
    node: Node, http: aiohttp.ClientSession
) -> None:
    await create(http, {"name": "quick", "scope": "rate", "type": "sliding_window", "limit": 3,
                        "period": 0.2})  # fmt: skip
    lim = await in_force(node, "quick")
    await node.manager.enqueue([{"kind": "call"}])
    served = Served(hold=True)
    async with worker(node, served, capacity=1) as c:
        await held(served, 1)
        job = {"id": served.jobs[0]["id"], "token": served.jobs[0]["token"]}
        res = await c.call("acquire", {**job, "limit": "quick", "key": "k"})
        assert res["granted"] is True
    body = await usage(http, "quick")
    assert [i["key"] for i in body["keys"]] in (["k"], [])  # gone if 0.4 s passed already

    async def forgotten() -> bool:
        return not (await usage(http, "quick"))["keys"]

    await wait_until(forgotten, timeout=10)
    _, index_key = node.index.limit_keys(lim.id, lim.shape)
    assert await node.index.limit_index(index_key, 10) == []


@pytest.mark.parametrize("query", ["", "?max=1"])
async def test_usage_forgets_concurrency_keys_idle_for_an_hour_unless_held(
    node: Node, http: aiohttp.ClientSession, query: str
) -> None:
    await create(http, IMPORTS)
    lim = await in_force(node, "imports")
    _, index_key = node.index.limit_keys(lim.id, lim.shape)
    await node.manager.enqueue([{"kind": "import", "tenant": "a"}])
    served = Served(hold=True)
    async with worker(node, served, capacity=1, kinds=["import"]):
        await held(served, 1)
        sec, usec = await node.index.redis.time()
        now = sec * 1000 + usec / 1000
        hour = 3_600_000
        # "a" is held since long ago; "ghost" was used longer ago and is free; "recent" is free
        await node.index.redis.zadd(index_key, {"a": now - 2 * hour, "ghost": now - 3 * hour,
                                                "recent": now - 1000})  # fmt: skip
        body = await usage(http, "imports", query)
        assert "ghost" not in by_key(body)
        assert [k for k, _ in await node.index.limit_index(index_key, 10)] == ["recent", "a"]
        assert by_key(await usage(http, "imports"))["a"] == (1, 1, 2, None)


async def test_usage_on_a_node_that_has_not_reloaded_yet(
    node: Node, http: aiohttp.ClientSession
) -> None:
    await node.policy.stop()  # this node no longer follows policy changes
    created = await create(http, CALLS)
    assert "calls" not in node.dispatcher.limits.by_name
    body = await usage(http, "calls", "?key=x")
    assert body["limit"] == created
    assert by_key(body) == {"x": (0, 10, 10, None)}


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("?max=0", ["max", "1000"]),
        ("?max=1001", ["max", "1000"]),
        ("?max=-1", ["max"]),
        ("?max=ten", ["max"]),
        ("?max=", ["max"]),
        ("?max=1e2", ["max"]),
        ("?max=" + "9" * 5000, ["max"]),
        ("?key=" + "k" * 257, ["key", "256"]),
        ("?key=a%00", ["key", "printable"]),
        ("?key=a&key=b", ["key", "one key"]),
        ("?limit=3", ["unknown parameter", "limit"]),
    ],
)
async def test_invalid_usage_query_is_refused(
    http: aiohttp.ClientSession, query: str, words: list[str]
) -> None:
    await create(http, IMPORTS)
    status, answer = await call(http, "GET", f"{LIMITS}/imports/usage{query}")
    assert_error(status, answer, 400, "BAD_REQUEST", *words)
