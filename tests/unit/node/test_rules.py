"""Tag rules: validation with clear errors, matching, and how verdicts combine."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worcr_node.dispatch.rules import (
    Rule,
    RuleError,
    TagSet,
    evaluate,
    parse_rule,
    relevant_tags,
    worker_tag_relevance,
)

PREMIUM_BOOST = {
    "name": "premium boost",
    "match": {"job_tags": {"all": ["premium"]}, "worker_tags": {"all": ["premium"]}},
    "action": "multiply",
    "factor": 10,
}
PREMIUM_ONLY = {
    "name": "premium workers only run premium jobs",
    "match": {"job_tags": {"none": ["premium"]}, "worker_tags": {"all": ["premium"]}},
    "action": "forbid",
}


def judge(rules: list[Rule], job_tags: list[str], worker_tags: list[str], kind: str = "k",
          tenant: str = "t") -> tuple[bool, float]:  # fmt: skip
    v = evaluate(rules, kind, tenant, TagSet(job_tags), TagSet(worker_tags))
    return v.allowed, v.factor


def test_the_documented_premium_example() -> None:
    rules = [parse_rule(PREMIUM_BOOST), parse_rule(PREMIUM_ONLY)]
    assert judge(rules, ["premium"], ["premium"]) == (True, 10.0)
    assert judge(rules, [], ["premium"])[0] is False
    assert judge(rules, ["basic"], ["premium", "gpu"])[0] is False
    assert judge(rules, ["premium"], []) == (True, 1.0)
    assert judge(rules, [], []) == (True, 1.0)


def test_factors_multiply_and_forbid_wins() -> None:
    double = parse_rule({"name": "a", "action": "multiply", "factor": 2})
    triple = parse_rule({"name": "b", "action": "multiply", "factor": 3})
    forbid = parse_rule({"name": "c", "action": "forbid", "match": {"kinds": ["x"]}})
    assert judge([double, triple, forbid], [], [], kind="y") == (True, 6.0)
    v = evaluate([double, triple, forbid], "x", "t", TagSet([]), TagSet([]))
    assert not v.allowed
    assert v.forbidden_by == (forbid,)
    assert len(v.matched) == 3


def test_disabled_rules_do_nothing() -> None:
    forbid = parse_rule({"name": "c", "action": "forbid", "enabled": False})
    assert judge([forbid], [], []) == (True, 1.0)


def test_kinds_and_tenants_restrict_a_rule() -> None:
    r = parse_rule({"name": "r", "action": "multiply", "factor": 5,
                    "match": {"kinds": ["report"], "tenants": ["acme"]}})  # fmt: skip
    assert judge([r], [], [], kind="report", tenant="acme") == (True, 5.0)
    assert judge([r], [], [], kind="report", tenant="other") == (True, 1.0)
    assert judge([r], [], [], kind="email", tenant="acme") == (True, 1.0)


def test_any_all_none_and_key_wildcards() -> None:
    r = parse_rule({"name": "r", "action": "forbid", "match": {
        "job_tags": {"any": ["region:*"], "none": ["urgent"]},
        "worker_tags": {"all": ["spot", "gpu:*"]},
    }})  # fmt: skip
    assert judge([r], ["region:eu"], ["spot", "gpu:a100"])[0] is False
    assert judge([r], ["region:eu", "urgent"], ["spot", "gpu:a100"])[0] is True
    assert judge([r], ["eu"], ["spot", "gpu:a100"])[0] is True
    assert judge([r], ["region:eu"], ["spot"])[0] is True


def test_same_and_differ_compare_tag_values() -> None:
    affinity = parse_rule({"name": "a", "action": "multiply", "factor": 4,
                           "match": {"same": ["region"]}})  # fmt: skip
    anti = parse_rule({"name": "b", "action": "forbid", "match": {"differ": ["region"]}})
    rules = [affinity, anti]
    assert judge(rules, ["region:eu"], ["region:eu", "region:us"]) == (True, 4.0)
    assert judge(rules, ["region:eu"], ["region:us"])[0] is False
    assert judge(rules, ["region:eu"], []) == (True, 1.0)  # no region on the worker: no opinion
    assert judge(rules, [], ["region:us"]) == (True, 1.0)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "JSON object"),
        ({"action": "forbid"}, "name"),
        ({"name": "x", "action": "boost"}, "action"),
        ({"name": "x", "action": "multiply"}, "factor"),
        ({"name": "x", "action": "multiply", "factor": 0}, "factor"),
        ({"name": "x", "action": "multiply", "factor": -1}, "factor"),
        ({"name": "x", "action": "multiply", "factor": float("nan")}, "factor"),
        ({"name": "x", "action": "multiply", "factor": 1e9}, "factor"),
        ({"name": "x", "action": "multiply", "factor": 10**400}, "factor"),
        ({"name": "x", "action": "multiply", "factor": True}, "factor"),
        ({"name": "x", "action": "multiply", "factor": "2"}, "factor"),
        ({"name": "x", "action": "forbid", "factor": 2}, "factor"),
        ({"name": "x", "action": "forbid", "colour": 1}, "colour"),
        ({"name": "x", "action": "forbid", "match": []}, "match"),
        ({"name": "x", "action": "forbid", "match": {"queue": "a"}}, "queue"),
        ({"name": "x", "action": "forbid", "match": {"kinds": "a"}}, "kinds"),
        ({"name": "x", "action": "forbid", "match": {"kinds": [""]}}, "kinds"),
        ({"name": "x", "action": "forbid", "match": {"kinds": [1]}}, "kinds"),
        ({"name": "x", "action": "forbid", "match": {"job_tags": ["a"]}}, "job_tags"),
        ({"name": "x", "action": "forbid", "match": {"job_tags": {"some": []}}}, "some"),
        ({"name": "x", "action": "forbid", "match": {"job_tags": {"all": ["a*b"]}}}, "'*'"),
        ({"name": "x", "action": "forbid", "match": {"worker_tags": {"any": ["*"]}}}, "'*'"),
        ({"name": "x", "action": "forbid", "match": {"kinds": ["k:*"]}}, "'*'"),
        ({"name": "x", "action": "forbid", "match": {"same": ["region:eu"]}}, "same"),
        ({"name": "x", "action": "forbid", "match": {"tenants": ["t"] * 65}}, "tenants"),
        ({"name": "x" * 129, "action": "forbid"}, "name"),
        ({"name": "x", "action": "forbid", "enabled": "yes"}, "enabled"),
    ],
)
def test_invalid_rules_are_refused_with_the_field_named(body: Any, message: str) -> None:
    with pytest.raises(RuleError, match=message.replace("*", r"\*")):
        parse_rule(body)


def test_round_trip_through_json() -> None:
    for body in (PREMIUM_BOOST, PREMIUM_ONLY):
        rule = parse_rule(body)
        again = parse_rule({k: v for k, v in rule.to_json().items() if k != "id"}, rule.id)
        assert again == rule


_tag = st.sampled_from(["a", "b", "c", "k:1", "k:2", "r:x"])
_tags = st.lists(_tag, max_size=4)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["multiply", "forbid"]),
            st.floats(0.1, 10),
            _tags,
            _tags,
            _tags,
            _tags,
        ),
        max_size=6,
    ),
    _tags,
    _tags,
)
def test_verdict_is_the_product_of_matches_unless_forbidden(
    specs: list[Any], job: list[str], worker: list[str]
) -> None:
    rules = []
    for i, (action, factor, jall, jnone, wall, wnone) in enumerate(specs):
        body: dict[str, Any] = {"name": f"r{i}", "action": action, "match": {
            "job_tags": {"all": jall, "none": jnone}, "worker_tags": {"all": wall, "none": wnone},
        }}  # fmt: skip
        if action == "multiply":
            body["factor"] = factor
        rules.append(parse_rule(body))
    v = evaluate(rules, "k", "t", TagSet(job), TagSet(worker))
    expected_matches = [
        r for r in rules
        if all(t in job for t in r.job_tags.all) and not any(t in job for t in r.job_tags.none)
        and all(t in worker for t in r.worker_tags.all)
        and not any(t in worker for t in r.worker_tags.none)
    ]  # fmt: skip
    assert list(v.matched) == expected_matches
    assert v.allowed == all(r.action == "multiply" for r in expected_matches)
    product = 1.0
    for r in expected_matches:
        if r.action == "multiply":
            product *= r.factor
    assert v.factor == pytest.approx(product)


def test_only_tags_some_rule_looks_at_tell_workers_apart() -> None:
    rules = [parse_rule(PREMIUM_BOOST), parse_rule({"name": "r", "action": "forbid",
             "match": {"worker_tags": {"none": ["gpu:*"]}, "differ": ["region"]}})]  # fmt: skip
    rel = worker_tag_relevance(rules)
    tags = ["premium", "host:a1", "gpu:a100", "region:eu", "spot"]
    assert relevant_tags(tags, rel) == {"premium", "gpu:a100", "region:eu"}
    assert relevant_tags(["host:b7", "premium"], rel) == relevant_tags(["premium"], rel)
    assert relevant_tags(tags, worker_tag_relevance([])) == frozenset()


@given(_tags, _tags, st.lists(st.tuples(_tags, _tags, _tags), max_size=4))
def test_relevant_tags_never_change_a_verdict(
    job: list[str], worker: list[str], specs: list[Any]
) -> None:
    rules = [parse_rule({"name": f"r{i}", "action": "forbid", "match": {
        "worker_tags": {"all": a, "none": n}, "job_tags": {"any": j}, "same": ["k"]}})
        for i, (a, n, j) in enumerate(specs)]  # fmt: skip
    reduced = relevant_tags(worker, worker_tag_relevance(rules))
    full = evaluate(rules, "k", "t", TagSet(job), TagSet(worker))
    assert evaluate(rules, "k", "t", TagSet(job), TagSet(reduced)) == full
