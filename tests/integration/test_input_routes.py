"""Hostile input (issue 14) on every other route of the HTTP API, against a real node: text that
PostgreSQL cannot hold (NUL, unpaired surrogates), numbers that are not what they look like
(denormal weights, negative zero), names with a trailing newline, and error messages that must
never repeat more than a short prefix of what the client sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.apicalls import assert_error, call
from tests.premium import PREMIUM_X10
from worcr_node.node import Node

RULES = "/api/v1/rules"
FAIRNESS = "/api/v1/dispatch/fairness"
TENANTS = "/api/v1/tenants"
LIMITS = "/api/v1/limits"
KINDS = "/api/v1/kinds"
FUNCTIONS = "/api/v1/functions"
JOBS = "/api/v1/jobs"
EXPLAIN = "/api/v1/dispatch/explain"
NOJOB = "00000000-0000-0000-0000-000000000000"
LONG = "x" * 10_000
LONG_URL = "x" * 2_000  # a request line is at most 8190 bytes
MAX_MESSAGE = 400  # characters of an error message, whatever the input


@pytest.fixture
async def http(node: Node) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(node.http_address) as session:
        yield session


def concurrency(**changes: Any) -> dict[str, Any]:
    return {"name": "per-customer", "type": "concurrency", "limit": 2, **changes}


# -- text PostgreSQL cannot hold -------------------------------------------------------------------


UNSTORABLE = [pytest.param("a\x00b", id="nul"), pytest.param("a\ud800", id="lone-surrogate")]


@pytest.mark.parametrize("text", UNSTORABLE)
async def test_rule_name_postgresql_cannot_hold_is_refused_on_create_and_replace(
    http: aiohttp.ClientSession, text: str
) -> None:
    status, answer = await call(http, "POST", RULES, {**PREMIUM_X10, "name": text})
    assert_error(status, answer, 400, "BAD_REQUEST", "name")
    status, made = await call(http, "POST", RULES, PREMIUM_X10)
    assert status == 201, made
    status, answer = await call(http, "PUT", f"{RULES}/{made['id']}", {**PREMIUM_X10, "name": text})
    assert_error(status, answer, 400, "BAD_REQUEST", "name")
    assert await call(http, "GET", f"{RULES}/{made['id']}") == (200, made)


@pytest.mark.parametrize("text", UNSTORABLE)
async def test_rule_function_name_postgresql_cannot_hold_is_refused(
    http: aiohttp.ClientSession, text: str
) -> None:
    body = {"name": "by function", "action": "match", "function": text}
    status, answer = await call(http, "POST", RULES, body)
    assert_error(status, answer, 400, "BAD_REQUEST", "function")


@pytest.mark.parametrize("text", UNSTORABLE)
async def test_fairness_kind_postgresql_cannot_hold_is_refused(
    http: aiohttp.ClientSession, text: str
) -> None:
    status, answer = await call(http, "PUT", FAIRNESS, {"default": "fifo", "kinds": {text: "fifo"}})
    assert_error(status, answer, 400, "BAD_REQUEST", "kinds")


@pytest.mark.parametrize("text", [*UNSTORABLE, pytest.param("name\n", id="trailing-newline")])
async def test_limit_name_and_function_must_be_plain_text(
    http: aiohttp.ClientSession, text: str
) -> None:
    status, answer = await call(http, "POST", LIMITS, concurrency(name=text))
    assert_error(status, answer, 400, "BAD_REQUEST", "name")
    status, answer = await call(http, "POST", LIMITS, concurrency(function=text))
    assert_error(status, answer, 400, "BAD_REQUEST", "function")
    assert await call(http, "GET", LIMITS) == (200, {"limits": []})


@pytest.mark.parametrize(
    ("params", "word"),
    [({"worker": "w\x00"}, "worker"), ({"tags": "a,b\x00"}, "tags"),
     ({"tags": "a", "kinds": "k\x00"}, "kinds"), ({"tags": "t" * 129}, "tags")],
)  # fmt: skip
async def test_explain_refuses_worker_tags_and_kinds_no_worker_could_have(
    http: aiohttp.ClientSession, params: dict[str, str], word: str
) -> None:
    async with http.get(EXPLAIN, params={"job": NOJOB, **params}) as resp:
        assert_error(resp.status, await resp.json(), 400, "BAD_REQUEST", word)


# -- numbers: strict types and documented minimums -------------------------------------------------


@pytest.mark.parametrize("weight", [5e-324, 1e-7, 0, -1, True, "2", None, 1e7])
async def test_tenant_weight_out_of_range_or_not_a_number_is_refused(
    http: aiohttp.ClientSession, weight: Any
) -> None:
    status, answer = await call(http, "PUT", f"{TENANTS}/acme", {"weight": weight})
    assert_error(status, answer, 400, "BAD_REQUEST", "weight")
    assert (await call(http, "GET", TENANTS))[1] == {"tenants": []}


async def test_the_smallest_tenant_weight_is_stored(http: aiohttp.ClientSession) -> None:
    status, row = await call(http, "PUT", f"{TENANTS}/acme", {"weight": 1e-6})
    assert (status, row["weight"]) == (200, 1e-6)


@pytest.mark.parametrize("field", ["yield_grace", "max_run_time"])
async def test_negative_zero_seconds_are_refused(http: aiohttp.ClientSession, field: str) -> None:
    status, answer = await call(http, "PUT", f"{KINDS}/report", data=f'{{"{field}": -0.0}}')
    assert_error(status, answer, 400, "BAD_REQUEST", field)
    assert await call(http, "GET", KINDS) == (200, {"kinds": []})


async def test_zero_yield_grace_is_stored(http: aiohttp.ClientSession) -> None:
    status, row = await call(http, "PUT", f"{KINDS}/report", {"yield_grace": 0})
    assert (status, row["yield_grace"]) == (200, 0.0)


# -- error messages repeat at most a short prefix of the input -------------------------------------


ECHOES = [
    pytest.param("POST", JOBS, {"kind": "k", LONG: 1}, id="job-unknown-field"),
    pytest.param("POST", JOBS, {"kind": "k", "run_at": LONG}, id="job-run-at"),
    pytest.param("POST", JOBS, {"kind": "k", "weight": int("9" * 4000)}, id="job-huge-int"),
    pytest.param("POST", JOBS, {"kind": "k", "backoff": {LONG: 1}}, id="job-backoff-field"),
    pytest.param("POST", JOBS, {"kind": "k", "id": LONG}, id="job-id"),
    pytest.param("POST", RULES, {**PREMIUM_X10, LONG: 1}, id="rule-unknown-field"),
    pytest.param("POST", RULES, {**PREMIUM_X10, "match": {"kinds": [LONG]}}, id="rule-kind"),
    pytest.param(
        "POST", RULES, {**PREMIUM_X10, "match": {"kinds": [[LONG] * 100]}}, id="rule-kind-list"
    ),
    pytest.param("POST", RULES, {**PREMIUM_X10, "match": {LONG: []}}, id="rule-match-field"),
    pytest.param("PUT", FAIRNESS, {"default": LONG}, id="fairness-strategy"),
    pytest.param("PUT", FAIRNESS, {"default": "fifo", LONG: 1}, id="fairness-unknown-field"),
    pytest.param("PUT", FAIRNESS, {"default": "fifo", "kinds": {LONG: "fifo"}}, id="fairness-kind"),
    pytest.param("POST", LIMITS, concurrency(**{LONG: 1}), id="limit-unknown-field"),
    pytest.param("POST", LIMITS, concurrency(limit=int("9" * 4000)), id="limit-huge-int"),
    pytest.param("POST", LIMITS, concurrency(key="{" + "x" * 200), id="limit-key"),
    pytest.param(
        "POST",
        FUNCTIONS,
        {"name": "f", "language": "lua", "hook": "weight", "source": "x", LONG: 1},
        id="function-unknown-field",
    ),
    pytest.param("PUT", f"{KINDS}/k", {LONG: 1}, id="kind-unknown-field"),
    pytest.param("GET", f"{JOBS}?{LONG_URL}=1", None, id="list-unknown-parameter"),
    pytest.param("GET", f"{EXPLAIN}?job={NOJOB}&worker={LONG_URL}", None, id="explain-worker"),
    pytest.param("GET", f"{EXPLAIN}?job={NOJOB}&{LONG_URL}=1", None, id="explain-parameter"),
    pytest.param("GET", f"{LIMITS}/x/usage?{LONG_URL}=1", None, id="usage-parameter"),
]


@pytest.mark.parametrize(("method", "path", "body"), ECHOES)
async def test_error_messages_repeat_only_a_short_prefix_of_the_input(
    http: aiohttp.ClientSession, method: str, path: str, body: Any
) -> None:
    status, answer = await call(http, method, path, body)
    assert status in (400, 404), answer
    message = answer["error"]["message"]
    assert len(message) <= MAX_MESSAGE, message[:200]
    assert "x" * 65 not in message
    assert "9" * 65 not in message
