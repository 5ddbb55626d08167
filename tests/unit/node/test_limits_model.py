"""Limits as pure logic: validation, key templates, lane partitions, what applies to a lane."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from worcr_node.dispatch.rules import TagSet
from worcr_node.jobspec import lane_of
from worcr_node.limits.compiled import CompiledLimits
from worcr_node.limits.model import (
    KeyTemplate,
    LimitError,
    LimitType,
    Scope,
    arg_value,
    parse_limit,
)


def keyspace(limit_id: str, shape: str) -> tuple[str, str]:
    return f"L:{limit_id}:{shape}:", f"Li:{limit_id}"


def test_a_full_definition_round_trips() -> None:
    body = {"name": "imports", "description": "5 at once per customer", "enabled": True,
            "scope": "job", "type": "concurrency", "limit": 5, "key": "{tenant}",
            "match": {"kinds": ["import"]}}  # fmt: skip
    lim = parse_limit(body)
    assert lim.type is LimitType.CONCURRENCY
    assert lim.scope is Scope.JOB
    again = parse_limit(lim.to_json(), lim.id)
    assert again == lim
    assert lim.to_json() == {**body, "id": lim.id}


def test_defaults_and_bucket_burst() -> None:
    lim = parse_limit({"name": "p", "type": "token_bucket", "limit": 100, "period": 60})
    assert lim.scope is Scope.JOB
    assert lim.burst == 100  # a burst of one period's worth unless given
    assert lim.key.text == ""
    assert lim.period_ms == 60_000


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "name"),
        ({"name": "a b", "type": "concurrency", "limit": 1}, "name"),
        ({"name": "x" * 129, "type": "concurrency", "limit": 1}, "name"),
        ({"name": "n"}, "type"),
        ({"name": "n", "type": "leaky", "limit": 1}, "type"),
        ({"name": "n", "type": "concurrency"}, "limit"),
        ({"name": "n", "type": "concurrency", "limit": 0}, "limit"),
        ({"name": "n", "type": "concurrency", "limit": 2.5}, "limit"),
        ({"name": "n", "type": "concurrency", "limit": True}, "limit"),
        ({"name": "n", "type": "concurrency", "limit": 10**30}, "limit"),
        ({"name": "n", "type": "concurrency", "limit": 1, "period": 1}, "period"),
        ({"name": "n", "type": "concurrency", "limit": 1, "burst": 1}, "burst"),
        ({"name": "n", "type": "token_bucket", "limit": 1}, "period"),
        ({"name": "n", "type": "fixed_window", "limit": 1, "period": 0}, "period"),
        ({"name": "n", "type": "fixed_window", "limit": 1, "period": float("nan")}, "period"),
        ({"name": "n", "type": "fixed_window", "limit": 1, "period": 1e300}, "period"),
        ({"name": "n", "type": "fixed_window", "limit": 1, "period": 1, "burst": 2}, "burst"),
        ({"name": "n", "type": "sliding_window", "limit": 100_001, "period": 1}, "limit"),
        ({"name": "n", "type": "token_bucket", "limit": 1, "period": 1, "burst": 0}, "burst"),
        ({"name": "n", "type": "token_bucket", "limit": 10**7, "period": 1}, "limit"),
        ({"name": "n", "type": "concurrency", "limit": 1, "scope": "node"}, "scope"),
        ({"name": "n", "type": "concurrency", "limit": 1, "key": "{nope}"}, "key"),
        ({"name": "n", "type": "concurrency", "limit": 1, "key": "{args.}"}, "key"),
        ({"name": "n", "type": "concurrency", "limit": 1, "key": "{args.a..b}"}, "key"),
        ({"name": "n", "type": "concurrency", "limit": 1, "key": "{tag:}"}, "key"),
        ({"name": "n", "type": "concurrency", "limit": 1, "key": "x}"}, "key"),
        ({"name": "n", "type": "concurrency", "limit": 1, "key": "{x"}, "key"),
        ({"name": "n", "type": "concurrency", "limit": 1, "key": 5}, "key"),
        ({"name": "n", "type": "concurrency", "limit": 1, "key": "a\nb"}, "key"),
        (
            {
                "name": "n",
                "type": "concurrency",
                "limit": 1,
                "scope": "rate",
                "match": {"kinds": ["a"]},
            },
            "match",
        ),
        ({"name": "n", "type": "concurrency", "limit": 1, "match": {"kind": ["a"]}}, "match"),
        ({"name": "n", "type": "concurrency", "limit": 1, "match": {"kinds": "a"}}, "kinds"),
        ({"name": "n", "type": "concurrency", "limit": 1, "enabled": "yes"}, "enabled"),
        ({"name": "n", "type": "concurrency", "limit": 1, "extra": 1}, "unknown"),
        ([], "object"),
    ],
)
def test_invalid_definitions_name_the_field(body: Any, field: str) -> None:
    with pytest.raises(LimitError, match=field):
        parse_limit(body)


def test_key_templates_render_from_the_job() -> None:
    t = KeyTemplate.parse("{kind}/{tenant}/{tag:region}/{args.customer.id}/{args.0}")
    assert t.args_paths == ("customer.id", "0")
    tags = TagSet(["region:eu", "premium"])
    args = {"customer": {"id": 42}}
    assert t.render("import", "acme", tags, args) == "import/acme/eu/42/"
    assert t.render("import", "acme", tags, [7]) == "import/acme/eu//7"
    resolved = {"customer.id": "42", "0": ""}
    assert t.render("import", "acme", tags, resolved, resolved=True) == "import/acme/eu/42/"


def test_arg_values_are_canonical_text() -> None:
    assert arg_value({"a": True}, "a") == "true"
    assert arg_value({"a": 1.5}, "a") == "1.5"
    assert arg_value({"a": None}, "a") == ""
    assert arg_value({"a": {"y": 1, "x": [2]}}, "a") == '{"x":[2],"y":1}'
    assert arg_value({"a": "v" * 500}, "a").startswith("#")  # long values become a digest
    assert arg_value("scalar", "a") == ""
    assert arg_value([1, 2], "5") == ""


def test_args_paths_split_lanes_and_only_for_matching_jobs() -> None:
    lim = parse_limit({"name": "c", "type": "concurrency", "limit": 1,
                       "key": "{args.customer}", "match": {"kinds": ["import"]}})  # fmt: skip
    other = parse_limit({"name": "r", "scope": "rate", "type": "concurrency", "limit": 1,
                         "key": "{args.partner}"})  # fmt: skip
    compiled = CompiledLimits([lim, other], keyspace)
    assert compiled.paths("import", "t", ()) == ("customer",)
    assert compiled.paths("export", "t", ()) == ()  # not matched
    a = lane_of("import", "t", (), 1.0, (("customer", "1"),))
    b = lane_of("import", "t", (), 1.0, (("customer", "2"),))
    assert a != b
    assert lane_of("import", "t", (), 1.0) == lane_of("import", "t", (), 1.0, ())


def test_what_applies_to_a_lane_and_worker_class() -> None:
    per_tenant = parse_limit({"name": "t", "type": "concurrency", "limit": 2, "key": "{tenant}",
                              "match": {"worker_tags": {"all": ["gpu"]}}})  # fmt: skip
    per_customer = parse_limit({"name": "c", "type": "fixed_window", "limit": 9, "period": 1,
                                "key": "c-{args.customer}"})  # fmt: skip
    off = parse_limit({"name": "o", "type": "concurrency", "limit": 1, "enabled": False})
    compiled = CompiledLimits([per_tenant, per_customer, off], keyspace)
    tags = TagSet([])
    checks = compiled.for_lane("k", "acme", tags, {"customer": "7"}, TagSet(["gpu"]))
    assert checks is not None
    assert [(c.algo, c.label, c.limit) for c in checks] == [("c", "acme", 2), ("f", "c-7", 9)]
    checks = compiled.for_lane("k", "acme", tags, {"customer": "7"}, TagSet(["cpu"]))
    assert checks is not None
    assert [c.label for c in checks] == ["c-7"]
    # a lane not split by customer (jobs enqueued before the limit existed): cannot be keyed
    assert compiled.for_lane("k", "acme", tags, None, TagSet(["cpu"])) is None
    # recount: worker tags unknown counts every limit whose job side matches
    held = asyncio.run(compiled.for_job("k", "acme", tags, {"customer": 7}, None))
    assert [c.label for c in held] == ["acme"]
    assert asyncio.run(compiled.for_job("k", "acme", tags, {}, TagSet(["cpu"]))) == []


def test_shape_changes_with_meaning_not_with_numbers() -> None:
    a = parse_limit({"name": "a", "type": "concurrency", "limit": 2, "key": "{tenant}"})
    b = parse_limit({"name": "a", "type": "concurrency", "limit": 9, "key": "{tenant}"})
    c = parse_limit({"name": "a", "type": "concurrency", "limit": 2, "key": "{kind}"})
    assert a.shape == b.shape
    assert a.shape != c.shape
