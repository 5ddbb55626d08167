"""Validation of what a running job reports about itself: checkpoints, progress, log lines.

Pure (no I/O), so every rule is unit-tested. A checkpoint is a named value the job wants back
when it runs again: any msgpack value (stored msgpack-encoded, handed back exactly as given). A
progress counter is `current` of an optional `total` (stored as JSON for the API). A log line is
`[at, level, text]`. Sizes are bounded by `worcr.wire.Limits`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from worcr.wire import Limits

__all__ = [
    "LEVELS",
    "LifeError",
    "LogLine",
    "parse_checkpoints",
    "parse_log_lines",
    "parse_progress",
    "parse_seq",
]

LEVELS = frozenset({"debug", "info", "warning", "error", "critical", "stdout", "stderr"})
_CLOCK_SKEW = 3600.0  # seconds a worker's line time may be off before the node's time is used


class LifeError(ValueError):
    """A report is invalid; the message names the field."""


@dataclass(frozen=True, slots=True)
class LogLine:
    at: float  # Unix seconds
    level: str
    message: str


def _name(name: Any, what: str, limits: Limits) -> str:
    if not isinstance(name, str) or not 1 <= len(name) <= limits.max_life_name:
        raise LifeError(f"{what}: names must be strings of 1-{limits.max_life_name} characters")
    if not name.isprintable():
        raise LifeError(f"{what}: name {name[:40]!r} has unprintable characters")
    return name


def _surrogate_free(text: str, where: str) -> str:
    try:
        text.encode()
    except UnicodeEncodeError:
        raise LifeError(f"{where}: not valid UTF-8 text") from None
    return text


def parse_checkpoints(values: Any, limits: Limits) -> tuple[dict[str, Any], list[str]]:
    """`{name: value}` -> (names to set, names to remove: those given as nil)."""
    if not isinstance(values, Mapping) or not values:
        raise LifeError("values: expected a map of at least one checkpoint name to its value")
    put: dict[str, Any] = {}
    drop: list[str] = []
    for name, value in values.items():
        _name(name, "values", limits)
        if value is None:
            drop.append(name)
        else:
            put[name] = value  # any msgpack value: it comes back exactly (render.py shows it)
    try:
        size = len(msgpack.packb(put, use_bin_type=True))
    except (TypeError, ValueError, OverflowError) as exc:
        raise LifeError(f"values: cannot be encoded ({exc})") from None
    if size > limits.max_checkpoints:
        raise LifeError(
            f"values: {size} bytes of msgpack, over the limit of {limits.max_checkpoints} for"
            " all of a job's checkpoints: store large state elsewhere and checkpoint a reference"
        )
    return put, drop


def parse_seq(value: Any) -> int:
    """The optional sequence number of a checkpoint write (0: none)."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 1 << 63:
        raise LifeError("seq: expected a positive integer")
    return value


def _number(value: Any, where: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LifeError(f"{where}: expected a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise LifeError(f"{where}: expected a finite number")
    if isinstance(value, int) and not -(1 << 63) <= value < 1 << 63:
        raise LifeError(f"{where}: integers must fit in 64 bits")
    return value


def parse_progress(counters: Any, at: float, limits: Limits) -> dict[str, dict[str, Any]]:
    """`{name: [current, total or nil]}` (or `{name: current}`) -> the JSON patch stored."""
    if not isinstance(counters, Mapping) or not counters:
        raise LifeError("counters: expected a map of at least one counter name to its value")
    out: dict[str, dict[str, Any]] = {}
    for name, value in counters.items():
        _name(name, "counters", limits)
        where = f"counters.{name}"
        if isinstance(value, list | tuple):
            if len(value) not in (1, 2):
                raise LifeError(f"{where}: expected [current, total] or [current]")
            current = _number(value[0], f"{where}[0]")
            total = (
                None if len(value) == 1 or value[1] is None else _number(value[1], f"{where}[1]")
            )
        else:
            current, total = _number(value, where), None
        if total is not None and total < 0:
            raise LifeError(f"{where}: total must not be negative")
        out[name] = {"current": current, "total": total, "at": round(at, 3)}
    size = len(_dumps(out))
    if size > limits.max_progress:
        raise LifeError(f"counters: {size} bytes as JSON, over the limit of {limits.max_progress}")
    return out


def parse_log_lines(lines: Any, now: float, limits: Limits) -> list[LogLine]:
    """`[[at, level, text], ...]` -> LogLines. Text longer than the limit is cut (a log line is
    never worth failing a job over); a time more than an hour away from the node's is replaced
    by the node's."""
    if not isinstance(lines, Sequence) or isinstance(lines, str | bytes) or not lines:
        raise LifeError("lines: expected a list of [at, level, text] lines")
    if len(lines) > limits.max_log_batch:
        raise LifeError(f"lines: at most {limits.max_log_batch} lines per request")
    out = []
    for i, line in enumerate(lines):
        where = f"lines[{i}]"
        if not isinstance(line, list | tuple) or len(line) != 3:
            raise LifeError(f"{where}: expected [at, level, text]")
        at, level, text = line
        if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
            raise LifeError(f"{where}[0]: expected Unix seconds")
        if not isinstance(level, str) or level not in LEVELS:
            raise LifeError(f"{where}[1]: level must be one of {', '.join(sorted(LEVELS))}")
        if not isinstance(text, str):
            raise LifeError(f"{where}[2]: expected a string")
        text = _surrogate_free(text.replace("\x00", "\ufffd"), f"{where}[2]")
        if len(text) > limits.max_log_line:
            text = text[: limits.max_log_line - 14] + "...(truncated)"
        if abs(at - now) > _CLOCK_SKEW:
            at = now
        out.append(LogLine(float(at), level, text))
    return out


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
