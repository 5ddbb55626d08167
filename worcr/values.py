"""What a stored value may hold: job args and ack results have a JSON form.

The node stores args and results as msgpack and serves them as JSON, so they may hold only nil,
booleans, integers, finite floats, strings, bytes (served as `{"$bytes": base64}`), arrays and
maps with string (or bytes) keys, nested at most `Limits.max_depth` levels: no msgpack extension
type (a Timestamp is one), no NaN or infinity. One check, used by the node (`jobspec.pack_value`,
on enqueue and ack) and by the SDK (before it sends), so both refuse the same values.

The walk is iterative (any depth is checked without recursion) and looks at each container's
items by type in bulk (`map(type, ...)` runs in C): a list of 200,000 small ints costs a few
milliseconds, not a Python step per item.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

__all__ = ["Problem", "json_form_problem"]

_LEAVES = frozenset({type(None), bool, int, str, bytes})  # always fine
_NUMBERS = frozenset({bool, int, float})  # math.isfinite takes them all
_KEYS = frozenset({str, bytes})


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a value has no JSON form: a short phrase, and whether it is an object of a type JSON
    cannot hold (a TypeError to a Python caller) rather than a value out of range."""

    message: str
    wrong_type: bool = False


_NOT_FINITE = Problem("holds NaN or infinity, which JSON has no form for (finite numbers only)")


def json_form_problem(value: Any, max_depth: int, *, others_ok: bool = False) -> Problem | None:
    """Why `value` has no JSON form (a short phrase), or None if it has one. `others_ok`: pass
    over objects msgpack cannot encode at all (the encoder says so, more precisely)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is list or kind is tuple:
            items: Sequence[Any] = item
        elif kind is dict or isinstance(item, Mapping):
            if not set(map(type, item)) <= _KEYS and not all(
                isinstance(k, str | bytes) for k in item
            ):
                return Problem("map keys must be strings", wrong_type=True)
            items = list(item.values())
        elif isinstance(item, list | tuple) and not isinstance(item, msgpack.ExtType):
            items = item
        else:
            problem = _scalar_problem(item, others_ok)
            if problem is not None:
                return problem
            continue
        if depth >= max_depth:
            return Problem(f"nested deeper than {max_depth} levels")
        kinds = set(map(type, items))
        if kinds <= _LEAVES:
            continue  # the common case: a flat container of plain values, checked in C
        if kinds <= _NUMBERS:
            try:
                if not all(map(math.isfinite, items)):
                    return _NOT_FINITE
            except OverflowError:  # an int over ~1e308: msgpack takes none over 64 bits
                return Problem("holds an integer over 64 bits", wrong_type=True)
            continue
        stack.extend((child, depth + 1) for child in items if type(child) not in _LEAVES)
    return None


def _scalar_problem(item: Any, others_ok: bool) -> Problem | None:
    if type(item) in _LEAVES:
        return None
    if isinstance(item, float):
        return None if math.isfinite(item) else _NOT_FINITE
    if isinstance(item, msgpack.Timestamp):
        return Problem("holds a msgpack Timestamp (extension type -1), which has no JSON form: "
                       "send it as a number or an ISO 8601 string", wrong_type=True)  # fmt: skip
    if isinstance(item, msgpack.ExtType):
        return Problem(f"holds msgpack extension type {item.code}, which has no JSON form: send "
                       "it as a number, a string or bytes", wrong_type=True)  # fmt: skip
    if isinstance(item, bool | int | str | bytes) or others_ok:  # subclasses; or msgpack's call
        return None
    return Problem(f"holds an object of type {type(item).__name__}, which has no JSON form",
                   wrong_type=True)  # fmt: skip
