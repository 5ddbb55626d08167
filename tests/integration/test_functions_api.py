"""Embedded functions HTTP API against real nodes: create, versions, syntax errors, try, errors,
references from rules and limits, and hot reload to another node.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.apicalls import assert_error, call
from tests.conftest import NodeFactory
from tests.waiting import wait_until
from worcr_node.node import Node

FUNCTIONS = "/api/v1/functions"

LUA_WEIGHT = """
function weight(job, worker)
  for _, t in ipairs(job.tags) do
    if t == "premium" then return 10 end
  end
  return 1
end
"""
JS_WEIGHT = """
function weight(job, worker) {
  return job.tags.includes("premium") ? 10 : 1;
}
"""


@pytest.fixture
async def http(node: Node) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(node.http_address) as session:
        yield session


def fn(name: str, language: str = "lua", source: str = LUA_WEIGHT, hook: str = "weight",
       **more: Any) -> dict[str, Any]:  # fmt: skip
    return {"name": name, "language": language, "hook": hook, "source": source, **more}


async def test_create_get_list_new_version_and_versions(http: aiohttp.ClientSession) -> None:
    status, created = await call(http, "POST", FUNCTIONS, fn("boost"))
    assert status == 201, created
    assert created["version"] == 1
    assert created["source"] == LUA_WEIGHT
    assert {created["language"], created["hook"], created["enabled"]} == {"lua", "weight", True}
    status, again = await call(http, "POST", FUNCTIONS, fn("boost"))
    assert_error(status, again, 409, "CONFLICT", "exists already")

    body = fn("boost", "javascript", JS_WEIGHT)
    del body["name"]
    status, v2 = await call(http, "PUT", f"{FUNCTIONS}/boost", body)
    assert status == 200, v2
    assert (v2["version"], v2["language"], v2["source"]) == (2, "javascript", JS_WEIGHT)
    status, got = await call(http, "GET", f"{FUNCTIONS}/boost")
    assert (status, got) == (200, v2)
    status, listed = await call(http, "GET", FUNCTIONS)
    assert status == 200
    assert [(f["name"], f["version"], "source" in f) for f in listed["functions"]] == [
        ("boost", 2, False)
    ]
    status, versions = await call(http, "GET", f"{FUNCTIONS}/boost/versions")
    assert [v["version"] for v in versions["versions"]] == [2, 1]
    status, v1 = await call(http, "GET", f"{FUNCTIONS}/boost/versions/1")
    assert (status, v1["source"], v1["language"]) == (200, LUA_WEIGHT, "lua")
    status, body = await call(http, "GET", f"{FUNCTIONS}/boost/versions/9")
    assert_error(status, body, 404, "NOT_FOUND", "no version 9")

    status, _ = await call(http, "DELETE", f"{FUNCTIONS}/boost")
    assert status == 204
    status, body = await call(http, "GET", f"{FUNCTIONS}/boost")
    assert_error(status, body, 404, "NOT_FOUND", "boost")
    status, again = await call(http, "PUT", f"{FUNCTIONS}/boost", fn("boost"))
    assert (status, again["version"]) == (201, 3)  # numbering goes on: versions are kept


@pytest.mark.parametrize(
    ("language", "source", "line", "column"),
    [
        ("lua", "function weight(job, worker)\n  return 1 +\nend\n", 3, 1),
        ("lua", "function weight(job)\n  local x = )\nend", 2, 13),
        ("javascript", "function weight(job, worker) {\n  return 1 +;\n}\n", 2, 13),
        ("javascript", "function weight(job) {\n\n  return )\n}", 3, 10),
    ],
)
async def test_a_syntax_error_names_line_and_column(
    http: aiohttp.ClientSession, language: str, source: str, line: int, column: int
) -> None:
    status, body = await call(http, "POST", FUNCTIONS, fn("bad", language, source))
    assert status == 400, body
    error = body["error"]
    assert error["code"] == "BAD_REQUEST"
    assert (error["line"], error["column"]) == (line, column), error
    assert f"line {line}" in error["message"]
    status, body = await call(http, "GET", f"{FUNCTIONS}/bad")
    assert status == 404  # nothing was stored


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"name": "x", "language": "python", "hook": "weight", "source": "x"}, ["language"]),
        ({"name": "x", "language": "lua", "hook": "priority", "source": "x"}, ["hook"]),
        ({"name": "x", "language": "lua", "hook": "weight", "source": ""}, ["source"]),
        ({"name": "x", "language": "lua", "hook": "weight"}, ["source"]),
        ({"name": "x", "language": "lua", "hook": "weight", "source": 5}, ["source"]),
        ({"name": "x y", "language": "lua", "hook": "weight", "source": "x"}, ["name"]),
        ({"language": "lua", "hook": "weight", "source": "x"}, ["name"]),
        ({**fn("x"), "extra": 1}, ["unknown", "extra"]),
        ({**fn("x"), "source": "x" * 70_000}, ["source", "longer"]),
        ({**fn("x"), "source": "a\x00b"}, ["NUL"]),
        ({**fn("x"), "match": {"kinds": ["a"]}}, ["match", "on_enqueue"]),
        (
            {
                **fn("x", hook="on_enqueue", source="function on_enqueue(j) end"),
                "match": {"worker_tags": {"all": ["a"]}},
            },
            ["match", "jobs only"],
        ),
        ({**fn("x"), "enabled": "yes"}, ["enabled"]),
        (fn("x", source="function other(job) return 1 end"), ["weight"]),
        (fn("x", "javascript", "function other() { return 1 }"), ["weight"]),
        (fn("x", source="error('boom at load')"), ["boom at load"]),
        (fn("x", source="while true do end"), ["source"]),
        (fn("x", "javascript", "for(;;){}"), ["source"]),
        (fn("x", source="\x1bLua\x54\x00"), ["source"]),
        ([1, 2], ["object"]),
    ],
)
async def test_invalid_functions_are_refused(
    http: aiohttp.ClientSession, body: Any, words: list[str]
) -> None:
    status, answer = await call(http, "POST", FUNCTIONS, body)
    assert status == 400, answer
    assert answer["error"]["code"] == "BAD_REQUEST"
    for word in words:
        assert word in answer["error"]["message"], (word, answer)


async def test_try_a_stored_function_and_a_draft(http: aiohttp.ClientSession) -> None:
    await call(http, "POST", FUNCTIONS, fn("boost"))
    sample = {"job": {"kind": "render", "tenant": "t", "tags": ["premium"], "weight": 1},
              "worker": {"kinds": [], "tags": ["gpu"]}}  # fmt: skip
    status, tried = await call(http, "POST", f"{FUNCTIONS}/boost/try", sample)
    assert status == 200, tried
    assert (tried["result"], tried["raw"], tried["error"], tried["fallback"]) == (
        10,
        10,
        None,
        False,
    )
    assert tried["version"] == 1
    assert 0 <= tried["duration_ms"] < 60_000

    draft = {**sample, "source": "function weight(job, worker) return 'x' end"}
    status, tried = await call(http, "POST", f"{FUNCTIONS}/boost/try", draft)
    assert status == 200
    assert tried["version"] is None
    assert (tried["result"], tried["fallback"], tried["raw"]) == (1.0, True, "x")
    assert tried["error"]["kind"] == "result"

    looping = {**sample, "source": "function weight(job, worker) while true do end end"}
    status, tried = await call(http, "POST", f"{FUNCTIONS}/boost/try", looping)
    assert (tried["error"]["kind"], tried["result"]) == ("timeout", 1.0)

    broken = {**sample, "source": "function weight(job, worker)\n return 1 +\nend"}
    status, tried = await call(http, "POST", f"{FUNCTIONS}/boost/try", broken)
    assert tried["error"]["kind"] == "compile"
    assert tried["error"]["line"] == 3

    new = {"source": "function match(job, worker) { return worker.tags.includes('gpu') }",
           "language": "javascript", "hook": "match", **sample}  # fmt: skip
    status, tried = await call(http, "POST", f"{FUNCTIONS}/unsaved/try", new)
    assert (status, tried["result"], tried["hook"]) == (200, True, "match")

    status, body = await call(http, "POST", f"{FUNCTIONS}/nothing/try", sample)
    assert_error(status, body, 404, "NOT_FOUND", "nothing")
    status, body = await call(http, "POST", f"{FUNCTIONS}/boost/try", {"jobs": {}})
    assert_error(status, body, 400, "BAD_REQUEST", "jobs")
    status, body = await call(http, "POST", f"{FUNCTIONS}/boost/try", {"job": []})
    assert_error(status, body, 400, "BAD_REQUEST", "job")


async def test_try_every_hook_in_both_languages(http: aiohttp.ClientSession) -> None:
    cases = [
        ("retry", "lua", "function retry(job, error, attempt) return attempt * 10 end",
         {"attempt": 3}, 30.0),
        ("retry", "javascript", "function retry(job, error, attempt) { return false }",
         {}, False),
        ("limit_key", "lua", "function limit_key(job) return {key = job.args.shop, limit = 3} end",
         {"job": {"args": {"shop": "s1"}}}, ["s1", 3]),
        ("limit_key", "javascript", "function limit_key(job) { return 'k-' + job.args[0] }",
         {"job": {"args": [7]}}, ["k-7", None]),
        ("shed", "lua", "function shed(job) if job.tenant == 'c123' then return 'hold' end end",
         {"job": {"tenant": "c123"}}, "hold"),
        ("on_enqueue", "javascript",
         "function on_enqueue(job) { job.expires_at = job.enqueued_at + 43200; return job }",
         {"job": {"enqueued_at": 1000}}, {"enqueued_at": 1000, "expires_at": 44200}),
    ]  # fmt: skip
    for hook, language, source, sample, want in cases:
        body = {"source": source, "language": language, "hook": hook, **sample}
        status, tried = await call(http, "POST", f"{FUNCTIONS}/trial/try", body)
        assert status == 200, tried
        assert tried["error"] is None, (hook, language, tried)
        assert tried["result"] == want, (hook, language, tried)


async def test_rules_and_limits_refer_to_functions_by_name(http: aiohttp.ClientSession) -> None:
    rule = {"name": "r", "action": "multiply", "function": "boost"}
    status, body = await call(http, "POST", "/api/v1/rules", rule)
    assert_error(status, body, 400, "BAD_REQUEST", "no function named 'boost'")
    await call(http, "POST", FUNCTIONS, fn("boost"))
    await call(http, "POST", FUNCTIONS, fn("judge", source="function match(j, w) return true end",
                                           hook="match"))  # fmt: skip
    status, body = await call(http, "POST", "/api/v1/rules", {**rule, "function": "judge"})
    assert_error(status, body, 400, "BAD_REQUEST", "'judge' is a match function", "weight")
    status, created = await call(http, "POST", "/api/v1/rules", rule)
    assert status == 201, created
    assert created["function"] == "boost"
    assert "factor" not in created
    status, body = await call(http, "POST", "/api/v1/rules", {**rule, "name": "r2", "factor": 2})
    assert_error(status, body, 400, "BAD_REQUEST", "factor or a function")
    status, body = await call(http, "POST", "/api/v1/rules",
                              {"name": "r3", "action": "forbid", "function": "boost"})  # fmt: skip
    assert_error(status, body, 400, "BAD_REQUEST", "forbid rule has no function")
    status, body = await call(http, "POST", "/api/v1/rules", {"name": "r4", "action": "match"})
    assert_error(status, body, 400, "BAD_REQUEST", "needs the name of a match function")
    status, body = await call(http, "POST", "/api/v1/rules", {
        "name": "r5", "action": "hold", "match": {"worker_tags": {"all": ["x"]}}})  # fmt: skip
    assert_error(status, body, 400, "BAD_REQUEST", "whatever the worker")

    status, body = await call(http, "DELETE", f"{FUNCTIONS}/boost")
    assert_error(status, body, 409, "CONFLICT", "rule 'r'")
    changed = fn("boost", source="function match(j, w) return true end", hook="match")
    status, body = await call(http, "PUT", f"{FUNCTIONS}/boost", changed)
    assert_error(status, body, 409, "CONFLICT", "hook cannot change")

    key_source = "function limit_key(j) return 'a' end"
    await call(http, "POST", FUNCTIONS, fn("per_shop", source=key_source, hook="limit_key"))
    limit = {"name": "shops", "type": "concurrency", "limit": 2, "function": "per_shop"}
    status, created = await call(http, "POST", "/api/v1/limits", limit)
    assert status == 201, created
    assert created["function"] == "per_shop"
    status, body = await call(http, "POST", "/api/v1/limits",
                              {**limit, "name": "l2", "function": "boost"})  # fmt: skip
    assert_error(status, body, 400, "BAD_REQUEST", "limit_key function")
    status, body = await call(http, "POST", "/api/v1/limits",
                              {**limit, "name": "l3", "key": "{tenant}"})  # fmt: skip
    assert_error(status, body, 400, "BAD_REQUEST", "not both")
    status, body = await call(http, "DELETE", f"{FUNCTIONS}/per_shop")
    assert_error(status, body, 409, "CONFLICT", "limit 'shops'")


async def test_a_new_version_reaches_another_node_within_a_second(
    node: Node, node_factory: NodeFactory, http: aiohttp.ClientSession
) -> None:
    other = await node_factory()
    job = {"kind": "k", "tenant": "t", "tags": ["premium"], "weight": 1.0}
    worker = {"kinds": [], "tags": []}
    for version, (language, source, want) in enumerate(
        [("lua", LUA_WEIGHT, 10.0), ("javascript", JS_WEIGHT.replace("10", "7"), 7.0)], start=1
    ):
        saved = time.monotonic()
        status, body = await call(http, "PUT", f"{FUNCTIONS}/boost", fn("boost", language, source))
        assert status in (200, 201), body

        async def compiled(version: int = version) -> bool:
            f = other.functions.functions.get("boost")
            return f is not None and f.version == version

        await wait_until(compiled, timeout=5)
        took = time.monotonic() - saved
        assert (await other.functions.weight("boost", job, worker)).value == want
        print(f"version {version} reached the other node in {took * 1000:.0f} ms")


async def test_errors_are_listed_with_their_function(
    node: Node, http: aiohttp.ClientSession
) -> None:
    await call(http, "POST", FUNCTIONS, fn("boom", source="function weight(j, w) error('no') end"))

    async def known() -> bool:
        return "boom" in node.functions.functions

    await wait_until(known)
    worker = {"kinds": [], "tags": []}
    for i in range(20):
        out = await node.functions.weight("boom", {"kind": "k"}, worker, lane=f"lane-{i}")
        assert out.value == 1.0
        assert out.failure is not None
        assert "no" in out.failure.message
    await node.function_errors.flush()
    status, page = await call(http, "GET", f"{FUNCTIONS}/boom/errors")
    assert status == 200
    errors = page["errors"]
    assert sum(e["repeats"] for e in errors) == 20
    assert len(errors) <= 5  # folded: a failing function costs a few rows per second
    assert {(e["kind"], e["hook"], e["node"]) for e in errors} == {
        ("error", "weight", node.config.node_id)
    }
    assert {e["lane"] for e in errors} <= {f"lane-{i}" for i in range(20)}
    status, page = await call(http, "GET", f"{FUNCTIONS}/boom/errors?limit=0")
    assert_error(status, page, 400, "BAD_REQUEST", "limit")
