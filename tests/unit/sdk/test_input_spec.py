"""The SDK refuses, before sending, the job specs the node refuses at its edge (issue 14):
falsy tags, weights out of the node's range, args without a JSON form or nested too deep."""

from __future__ import annotations

import math
from typing import Any

import msgpack
import pytest

from worcr.spec import JobSpec
from worcr.wire import Limits

DEPTH = Limits().max_depth


def nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("fields", "error", "match"),
    [
        ({"tags": False}, TypeError, "tags must be a list"),
        ({"tags": 0}, TypeError, "tags must be a list"),
        ({"tags": {"a": 1}}, TypeError, "tags must be a list"),
        ({"tags": ""}, TypeError, "single string"),
        ({"weight": 5e-324}, ValueError, "weight must be from 1e-06"),
        ({"weight": 2e6}, ValueError, "weight must be from"),
        ({"args": [math.nan]}, ValueError, "NaN"),
        ({"args": {"a": [math.inf]}}, ValueError, "infinity"),
        ({"args": msgpack.Timestamp(1, 0)}, TypeError, "Timestamp"),
        ({"args": [msgpack.ExtType(5, b"")]}, TypeError, "extension type"),
        ({"args": nested(DEPTH + 1)}, ValueError, "deeper than 32"),
    ],
)
def test_what_the_node_refuses_is_refused_before_sending(
    fields: dict[str, Any], error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        JobSpec("k", **fields).to_wire()


@pytest.mark.parametrize(
    ("fields", "wire"),
    [
        ({"tags": []}, {}),
        ({"tags": None}, {}),
        ({"tags": ("b", "a")}, {"tags": ["b", "a"]}),
        ({"weight": 1e-6}, {"weight": 1e-6}),
        ({"args": nested(DEPTH)}, {"args": nested(DEPTH)}),
        ({"args": {"raw": b"\x00", "n": 1.5}}, {"args": {"raw": b"\x00", "n": 1.5}}),
    ],
)
def test_what_the_node_takes_goes_through(fields: dict[str, Any], wire: dict[str, Any]) -> None:
    assert JobSpec("k", **fields).to_wire() == {"kind": "k", "args": [], **wire}
