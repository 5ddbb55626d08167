from __future__ import annotations

import uuid
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from worcr.wire import Limits
from worcr_node.jobspec import RetryBackoff, SpecError, lane_of, parse_job_spec, parse_time
from worcr_node.state import JobState

NOW = 1_700_000_000.0
LIMITS = Limits()


def parse(**spec: Any) -> Any:
    return parse_job_spec(spec, NOW, LIMITS)


def test_defaults() -> None:
    j = parse(kind="email")
    assert j.state is JobState.QUEUED
    assert j.tenant == "default"
    assert j.weight == 1.0
    assert j.max_attempts == 25
    assert msgpack.unpackb(j.args) == []
    assert not j.client_id
    assert j.id.version == 7


def test_future_run_at_is_scheduled_and_tags_are_a_sorted_set() -> None:
    j = parse(kind="k", run_in=10, tags=["b", "a", "b"])
    assert j.state is JobState.SCHEDULED
    assert j.run_at == NOW + 10
    assert j.tags == ("a", "b")


def test_client_id_makes_it_idempotent() -> None:
    jid = str(uuid.uuid4())
    j = parse(kind="k", id=jid)
    assert str(j.id) == jid
    assert j.client_id


def test_lane_groups_kind_tenant_tags_weight() -> None:
    a = parse(kind="k", tags=["x"], tenant="t")
    b = parse(kind="k", tags=["x"], tenant="t")
    c = parse(kind="k", tags=["x"], tenant="u")
    assert a.lane == b.lane != c.lane
    assert lane_of("k", "t", ("x",), 1.0) == a.lane


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({}, "kind"),
        ({"kind": ""}, "kind"),
        ({"kind": "k\n"}, "kind"),
        ({"kind": "k", "weight": 0}, "weight"),
        ({"kind": "k", "weight": True}, "weight"),
        ({"kind": "k", "weight": float("nan")}, "weight"),
        ({"kind": "k", "weight": 10**400}, "weight"),
        ({"kind": "k", "reserve_for": 10**400}, "reserve_for"),
        ({"kind": "k", "max_attempts": 10**400}, "max_attempts"),
        ({"kind": "k", "run_in": 10**400}, "run_in"),
        ({"kind": "k", "run_at": 10**400}, "run_at"),
        ({"kind": "k", "expires_in": -(10**400)}, "expires_in"),
        ({"kind": "k", "backoff": {"base": 10**400}}, "base"),
        ({"kind": "k", "tags": "a"}, "tags"),
        ({"kind": "k", "tags": [1]}, "tags"),
        ({"kind": "k", "max_attempts": 0}, "max_attempts"),
        ({"kind": "k", "run_at": 1, "run_in": 1}, "run_at"),
        ({"kind": "k", "run_at": "2026-01-01T00:00:00"}, "run_at"),
        ({"kind": "k", "reserve_for": 0.01}, "reserve_for"),
        ({"kind": "k", "id": "nope"}, "id"),
        ({"kind": "k", "backoff": {"base": 1, "bogus": 2}}, "backoff"),
        ({"kind": "k", "args": "x" * (LIMITS.max_args + 1)}, "args"),
        ({"kind": "k", "zzz": 1}, "unknown"),
    ],
)
def test_bad_specs_name_the_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError, match=field):
        parse_job_spec(spec, NOW, LIMITS)


def test_parse_time_accepts_iso_with_zone() -> None:
    assert parse_time("2023-11-14T22:13:20Z", "run_at") == 1_700_000_000.0
    with pytest.raises(SpecError):
        parse_time(True, "run_at")


def test_backoff_grows_and_caps_with_jitter_below() -> None:
    b = RetryBackoff(base=2, factor=2, max=60, jitter=0.25)
    assert [b.delay(n, 0.0) for n in (1, 2, 3)] == [2, 4, 8]
    assert b.delay(20, 0.0) == 60
    assert b.delay(3, 0.999) == pytest.approx(8 * (1 - 0.25 * 0.999))


@given(st.dictionaries(st.text(max_size=8), st.none() | st.integers() | st.text(max_size=5)))
def test_random_specs_never_crash(spec: dict[str, Any]) -> None:
    try:
        parse_job_spec(spec, NOW, LIMITS)
    except SpecError:
        pass
