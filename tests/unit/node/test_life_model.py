"""Validation of what running jobs report: checkpoint values, progress counters, log lines."""

from __future__ import annotations

import math
from typing import Any

import pytest

from worcr.wire import Limits
from worcr_node.life.model import (
    LifeError,
    parse_checkpoints,
    parse_log_lines,
    parse_progress,
    parse_seq,
)
from worcr_node.outcome import decide_revoked

LIMITS = Limits()
NOW = 1_700_000_000.0


def test_checkpoints_split_values_to_set_from_names_to_remove() -> None:
    put, drop = parse_checkpoints({"a": 1, "b": None, "c": {"d": [1, 2.5, "x", True]}}, LIMITS)
    assert put == {"a": 1, "c": {"d": [1, 2.5, "x", True]}}
    assert drop == ["b"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "at least one"),
        ([1], "map"),
        ({"": 1}, "names"),
        ({"a\n": 1}, "unprintable"),
        ({"x" * 129: 1}, "names"),
        ({"n": 1 << 64}, "cannot be encoded"),
        ({"s": "\ud800"}, "cannot be encoded"),
        ({"t": {1, 2}}, "cannot be encoded"),
        ({"big": "x" * (64 << 10)}, "over the limit"),
    ],
)
def test_bad_checkpoints_are_refused_with_the_field_named(values: Any, message: str) -> None:
    with pytest.raises(LifeError, match="values") as err:
        parse_checkpoints(values, LIMITS)
    assert message in str(err.value)


def test_any_msgpack_value_is_a_checkpoint() -> None:
    values = {"b": b"\x00", "inf": math.inf, "s": "a\x00b", "deep": [[[[1]]]], "m": {"k": 1.5}}
    assert parse_checkpoints(values, LIMITS) == (values, [])


@pytest.mark.parametrize(("seq", "ok"), [(None, 0), (1, 1), (1 << 40, 1 << 40)])
def test_a_checkpoint_sequence_number_is_optional(seq: Any, ok: int) -> None:
    assert parse_seq(seq) == ok


@pytest.mark.parametrize("seq", [0, -1, True, 1.5, "1", 1 << 63])
def test_a_bad_sequence_number_is_refused(seq: Any) -> None:
    with pytest.raises(LifeError, match="seq"):
        parse_seq(seq)


def test_progress_accepts_three_shapes_and_stamps_the_time() -> None:
    out = parse_progress({"a": [1, 10], "b": [2], "c": 3.5, "d": [4, None]}, NOW, LIMITS)
    assert out == {
        "a": {"current": 1, "total": 10, "at": NOW},
        "b": {"current": 2, "total": None, "at": NOW},
        "c": {"current": 3.5, "total": None, "at": NOW},
        "d": {"current": 4, "total": None, "at": NOW},
    }


@pytest.mark.parametrize(
    ("counters", "message"),
    [
        ({}, "at least one"),
        ({"a": True}, "number"),
        ({"a": [1, 2, 3]}, "[current, total]"),
        ({"a": [math.nan]}, "finite"),
        ({"a": [1, -1]}, "negative"),
        ({"a": [1 << 63]}, "64 bits"),
        ({f"n{i:04d}": [i, i] for i in range(400)}, "over the limit"),
    ],
)
def test_bad_progress_is_refused(counters: Any, message: str) -> None:
    with pytest.raises(LifeError) as err:
        parse_progress(counters, NOW, LIMITS)
    assert message in str(err.value)


def test_log_lines_are_cut_cleaned_and_clamped_in_time() -> None:
    lines = parse_log_lines(
        [[NOW - 10, "info", "ok"], [0, "stdout", "a\x00b"], [NOW, "error", "z" * 10_000]],
        NOW,
        LIMITS,
    )
    assert [(x.at, x.level, x.message) for x in lines[:2]] == [
        (NOW - 10, "info", "ok"),
        (NOW, "stdout", "a\ufffdb"),  # a time an hour off is the node's; NUL replaced
    ]
    assert len(lines[2].message) == LIMITS.max_log_line
    assert lines[2].message.endswith("...(truncated)")


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([], "lines"),
        ("text", "lines"),
        ([[NOW, "info"]], "[at, level, text]"),
        ([[NOW, "trace", "x"]], "level must be one of"),
        ([["now", "info", "x"]], "Unix seconds"),
        ([[NOW, "info", b"x"]], "string"),
        ([[NOW, "info", "\udc00"]], "UTF-8"),
        ([[NOW, ["info"], "x"]], "level must be one of"),
        ([[NOW, "info", "x"]] * 1001, "at most 1000"),
    ],
)
def test_bad_log_lines_are_refused(lines: Any, message: str) -> None:
    with pytest.raises(LifeError) as err:
        parse_log_lines(lines, NOW, LIMITS)
    assert message in str(err.value)


@pytest.mark.parametrize(("attempt", "state"), [(1, "queued"), (3, "dead")])
def test_a_revoked_attempt_counts_and_says_why(attempt: int, state: str) -> None:
    row = {"id": "j", "lease_token": 7, "attempt": attempt, "max_attempts": 3}
    out = decide_revoked(row, 60.0, 30.0)
    assert out.new_state == state
    assert out.attempt_delta == 0  # it counts: a job that never yields cannot run forever
    assert out.outcome == "timed_out"
    assert out.error is not None
    assert "60 s" in out.error
    assert "30 s" in out.error
