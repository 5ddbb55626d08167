"""Values the node stores as msgpack and serves as JSON (issue 14): what the edge accepts, and
that rendering never fails and always gives strict JSON, whatever was stored.

Property tests: random msgpack values go through the validator (`jobspec.pack_value`); those it
accepts go through the storage encoding and the renderer (`http/render.py`) and must come out as
JSON that `json.dumps(allow_nan=False)` takes and `json.loads` gives back unchanged, equal to the
documented JSON form of the value. Values it refuses (as an older node stored them) must render
as strict JSON too.
"""

from __future__ import annotations

import base64
import json
import math
import uuid
from datetime import UTC, datetime
from typing import Any

import msgpack
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from worcr.wire import Limits
from worcr_node.http.errors import text_ok
from worcr_node.http.render import RENDER_DEPTH, JobPage, render_job, render_result
from worcr_node.jobspec import SpecError, check_value, pack_value, parse_job_spec

LIMITS = Limits()
DEPTH = LIMITS.max_depth
NOW = 1_700_000_000.0


def nested(levels: int, inner: Any = 1) -> Any:
    value = inner
    for _ in range(levels):
        value = [value]
    return value


scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()  # NaN and infinities included
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8))
    | st.builds(msgpack.Timestamp, st.integers(0, 2**34 - 1), st.integers(0, 999_999_999))
)
trees = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.binary(max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)
values = trees | st.builds(nested, st.integers(0, 3 * DEPTH), trees)


def depth_of(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    return 0


def json_form(value: Any) -> bool:
    """Independently of the code under test: has the value a JSON form?"""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, msgpack.ExtType | msgpack.Timestamp):
        return False
    if isinstance(value, dict):
        return all(map(json_form, value.values()))
    if isinstance(value, list):
        return all(map(json_form, value))
    return True


def documented(value: Any) -> Any:
    """The JSON form README.md documents: bytes as {"$bytes": base64}, bytes keys "$bytes:..."."""
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode()}
    if isinstance(value, dict):
        return {
            ("$bytes:" + base64.b64encode(k).decode() if isinstance(k, bytes) else k): documented(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [documented(v) for v in value]
    return value


def strict_round_trip(rendered: Any) -> None:
    text = json.dumps(rendered, allow_nan=False)
    assert json.loads(text) == rendered


@settings(max_examples=400)
@given(values)
def test_what_the_validator_accepts_renders_as_its_documented_strict_json(value: Any) -> None:
    if not json_form(value) or depth_of(value) > DEPTH:
        with pytest.raises(SpecError, match=r"^args: "):
            pack_value(value, "args", LIMITS.max_args, DEPTH)
        return
    packed = pack_value(value, "args", LIMITS.max_args, DEPTH)
    rendered = render_result({"result": packed})
    strict_round_trip(rendered)
    assert rendered == documented(value)


@settings(max_examples=400)
@given(values | st.builds(nested, st.integers(0, 900), trees))
def test_whatever_was_stored_renders_as_strict_json(value: Any) -> None:
    """Jobs an older node stored without the checks, and checkpoints, hold any msgpack value."""
    try:
        packed = msgpack.packb(value, use_bin_type=True)
    except ValueError:  # deeper than msgpack itself encodes: it cannot be stored
        assume(False)
    strict_round_trip(render_result({"result": packed}))


@given(st.binary(max_size=64))
def test_bytes_that_are_not_msgpack_render_as_strict_json(data: bytes) -> None:
    strict_round_trip(render_result({"result": data}))


# -- the validator, case by case ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (nested(DEPTH + 1), ["nested deeper than 32"]),
        ({"a": nested(DEPTH)}, ["nested deeper than 32"]),
        (nested(500), ["nested deeper than 32"]),
        (nested(5000), ["nested deeper than 32"]),  # beyond msgpack's own limit
        ([math.nan], ["JSON"]),
        ({"x": [math.inf]}, ["JSON"]),
        (msgpack.Timestamp(1, 0), ["extension type -1"]),
        ([msgpack.ExtType(5, b"")], ["extension type 5"]),
        ({1: "a"}, ["map keys"]),
        (["\ud800"], ["surrogate"]),
        ([2**64], ["cannot be encoded"]),
    ],
)
def test_values_without_a_json_form_are_refused_naming_the_field(
    value: Any, words: list[str]
) -> None:
    with pytest.raises(SpecError) as caught:
        pack_value(value, "jobs[].result", 1 << 30, DEPTH)
    assert str(caught.value).startswith("jobs[].result: ")
    for word in words:
        assert word in str(caught.value)
    assert len(str(caught.value)) < 200


@pytest.mark.parametrize("value", [nested(DEPTH), {"a": nested(DEPTH - 1)}, [], {}, b"\x00", None])
def test_values_at_the_limits_are_accepted(value: Any) -> None:
    check_value(value, "args", DEPTH)
    assert msgpack.unpackb(pack_value(value, "args", 1 << 20, DEPTH)) == value


def test_the_size_limit_is_checked_before_walking_the_value() -> None:
    with pytest.raises(SpecError, match="over the limit of 10"):
        pack_value(["x" * 20], "args", 10, DEPTH)


@pytest.mark.parametrize("tags", [False, 0, "", {}, 0.0])
def test_falsy_tags_are_not_an_empty_list(tags: Any) -> None:
    with pytest.raises(SpecError, match="tags"):
        parse_job_spec({"kind": "k", "tags": tags}, NOW, LIMITS)


def test_null_tags_are_no_tags() -> None:
    assert parse_job_spec({"kind": "k", "tags": None}, NOW, LIMITS).tags == ()


@pytest.mark.parametrize("field", ["run_in", "expires_in", "reserve_for"])
def test_negative_zero_is_refused(field: str) -> None:
    with pytest.raises(SpecError, match=field):
        parse_job_spec({"kind": "k", field: -0.0}, NOW, LIMITS)


def test_unknown_fields_are_quoted_short() -> None:
    spec = {"kind": "k", **{f"{i}" + "x" * 10_000: 1 for i in range(20)}}
    with pytest.raises(SpecError) as caught:
        parse_job_spec(spec, NOW, LIMITS)
    assert "and 15 more" in str(caught.value)
    assert len(str(caught.value)) < 500


@pytest.mark.parametrize(
    ("text", "ok"),
    [("a", True), ("", False), ("a\x00", False), ("\ud800", False), ("a\n", False),
     ("x" * 128, True), ("x" * 129, False), ("région:eu", True)],
)  # fmt: skip
def test_text_ok(text: str, ok: bool) -> None:
    assert text_ok(text, 128) is ok


# -- a list page bounded in bytes -----------------------------------------------------------------


def row(args: Any) -> dict[str, Any]:
    """A stored job as `PgStore.job_get` reads it."""
    at = datetime.fromtimestamp(NOW, UTC)
    columns = dict.fromkeys(
        ("run_at", "expires_at", "backoff", "unique_key", "lease_token", "worker_id", "node_id",
         "result", "last_error", "admitted_at", "started_at", "finished_at", "checkpoints",
         "progress", "max_run_time", "yield_asked_at", "function_errors")
    )  # fmt: skip
    return {**columns, "id": uuid.uuid4(), "state": "queued", "kind": "k", "tags": [],
            "tenant": "default", "weight": 1.0, "lane": "l", "max_attempts": 25,
            "reserve_for": 60.0, "attempt": 0, "enqueued_at": at, "updated_at": at,
            "args": msgpack.packb(args)}  # fmt: skip


def test_a_page_stops_at_its_budget_but_always_takes_one_job() -> None:
    rows = [row(["x" * 1000]) for _ in range(10)]
    one = len(json.dumps(render_job(rows[0])))
    page = JobPage(limit=100, budget=3 * one + 10)
    taken = [r for r in rows if page.add(r)]
    assert page.cut
    assert len(page.parts) == 3
    assert len(taken) == 3
    body = json.loads(page.body())
    assert [j["id"] for j in body["jobs"]] == [str(r["id"]) for r in rows[:3]]
    assert body["next_cursor"] == str(rows[2]["id"])
    assert len(page.body()) <= page.budget + len('{"jobs": [], "next_cursor": ""}') + 36

    alone = JobPage(limit=100, budget=10)
    assert [alone.add(rows[0]), alone.add(rows[1])] == [True, False]
    assert [j["id"] for j in json.loads(alone.body())["jobs"]] == [str(rows[0]["id"])]
    assert json.loads(alone.body())["next_cursor"] == str(rows[0]["id"])


def test_a_page_not_full_has_no_cursor_and_a_full_one_has() -> None:
    rows = [row([i]) for i in range(3)]
    short = JobPage(limit=5)
    assert all(short.add(r) for r in rows)
    assert json.loads(short.body())["next_cursor"] is None
    full = JobPage(limit=3)
    assert [full.add(r) for r in rows] == [True, True, False]
    assert json.loads(full.body())["next_cursor"] == str(rows[-1]["id"])


def test_reads_are_sized_by_what_still_fits() -> None:
    page = JobPage(limit=1000, budget=100_000)
    assert page.next_fetch() == 20
    page.add(row(["x" * 10_000]))
    assert 1 <= page.next_fetch() <= 10
    small = JobPage(limit=1000)
    small.add(row([1]))
    assert small.next_fetch() == 250


def test_render_depth_covers_what_the_edge_accepts() -> None:
    assert RENDER_DEPTH >= 2 * DEPTH  # checkpoints put accepted values one map deeper
