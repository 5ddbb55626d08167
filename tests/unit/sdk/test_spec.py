"""JobSpec -> enqueue wire map, client-side validation, and client-generated ids."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from worcr.client import build_spec, normalize_nodes
from worcr.spec import EnqueueResult, JobSpec, new_job_id, spec_from_mapping


def fixed_id() -> str:
    return "00000000-0000-7000-8000-000000000000"


def test_minimal_spec_leaves_defaults_to_the_node() -> None:
    assert JobSpec("email.send").to_wire() == {"kind": "email.send", "args": []}


def test_id_factory_fills_a_missing_id_only() -> None:
    assert JobSpec("k").to_wire(fixed_id)["id"] == fixed_id()
    given = uuid.uuid4()
    assert JobSpec("k", id=given).to_wire(fixed_id)["id"] == str(given)


def test_full_spec_maps_every_field() -> None:
    at = datetime(2030, 1, 1, tzinfo=UTC)
    spec = JobSpec(
        "report.build",
        args={"x": 1},
        tags=["eu", "gpu"],
        tenant="acme",
        weight=2.5,
        run_at=at,
        expires_in=timedelta(minutes=5),
        max_attempts=3,
        backoff={"base": 1, "factor": 2, "max": 60, "jitter": 0.1},
        unique_key="report:42",
        reserve_for=timedelta(seconds=90),
        id="0190f1c2-0000-7000-8000-000000000001",
    )
    assert spec.to_wire() == {
        "kind": "report.build",
        "args": {"x": 1},
        "id": "0190f1c2-0000-7000-8000-000000000001",
        "tags": ["eu", "gpu"],
        "tenant": "acme",
        "weight": 2.5,
        "run_at": at.timestamp(),
        "expires_in": 300.0,
        "max_attempts": 3,
        "backoff": {"base": 1, "factor": 2, "max": 60, "jitter": 0.1},
        "unique_key": "report:42",
        "reserve_for": 90.0,
    }


@pytest.mark.parametrize(
    ("fields", "error", "match"),
    [
        ({"kind": ""}, ValueError, "kind must not be empty"),
        ({"kind": 3}, TypeError, "kind must be a str"),
        ({"kind": "k" * 129}, ValueError, "limit is 128"),
        ({"tags": "eu"}, TypeError, "did you mean"),
        ({"tags": ["a"] * 33}, ValueError, "at most 32 tags"),
        ({"tags": [""]}, ValueError, "tag must not be empty"),
        ({"weight": 0}, ValueError, "weight must be > 0"),
        ({"weight": True}, TypeError, "weight must be a number"),
        ({"weight": float("inf")}, ValueError, "finite"),
        ({"run_at": 1.0, "run_in": 1.0}, ValueError, "not both"),
        ({"expires_at": 1.0, "expires_in": 2.0}, ValueError, "not both"),
        ({"run_at": datetime(2030, 1, 1)}, ValueError, "naive datetime"),
        ({"run_in": -1}, ValueError, "run_in must be >= 0"),
        ({"max_attempts": 0}, ValueError, "max_attempts"),
        ({"max_attempts": 1.5}, ValueError, "max_attempts"),
        ({"backoff": {"base": 1, "cap": 2}}, ValueError, "unknown backoff key"),
        ({"backoff": {"base": -1}}, ValueError, "backoff.base must be >= 0"),
        ({"reserve_for": 0}, ValueError, "reserve_for must be > 0"),
        ({"id": "not-a-uuid"}, ValueError, "id must be a UUID"),
        ({"tenant": ""}, ValueError, "tenant must not be empty"),
    ],
)
def test_obvious_mistakes_are_refused(fields: dict[str, Any], error: type, match: str) -> None:
    kind = fields.pop("kind", "k")
    with pytest.raises(error, match=match):
        JobSpec(kind, **fields).to_wire()


def test_spec_from_mapping_names_unknown_fields() -> None:
    assert spec_from_mapping({"kind": "k", "args": [1]}) == JobSpec("k", [1])
    with pytest.raises(ValueError, match=r"unknown job spec field\(s\) \['queue'\]"):
        spec_from_mapping({"kind": "k", "queue": "high"})
    with pytest.raises(ValueError, match="needs a 'kind'"):
        spec_from_mapping({"args": []})


def test_build_spec_takes_positional_or_keyword_args() -> None:
    assert build_spec("k", (1, 2), {}).args == [1, 2]
    assert build_spec("k", (), {"args": {"a": 1}}).args == {"a": 1}
    assert build_spec("k", (), {}).args == []
    with pytest.raises(TypeError, match="not both"):
        build_spec("k", (1,), {"args": [2]})


def test_new_job_id_is_a_time_ordered_uuid7() -> None:
    ids = [new_job_id(lambda ms=ms: ms * 1_000_000, lambda n: b"\xff" * n) for ms in (1, 2, 3)]
    parsed = [uuid.UUID(text) for text in ids]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in parsed)
    assert ids == sorted(ids)
    assert parsed[0].int >> 80 == 1
    low = uuid.UUID(new_job_id(lambda: 5_000_000, lambda n: b"\x00" * n))
    assert low.version == 7
    assert low.int >> 80 == 5


def test_normalize_nodes() -> None:
    assert normalize_nodes("a:1, b:2,") == ["a:1", "b:2"]
    assert normalize_nodes(["a:1"]) == ["a:1"]
    with pytest.raises(ValueError, match="no node address"):
        normalize_nodes("")


def test_enqueue_result_is_a_value() -> None:
    assert EnqueueResult("i", "queued") == EnqueueResult("i", "queued", False)
