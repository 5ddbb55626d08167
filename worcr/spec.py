"""Job specs on the producer side: what `enqueue` sends, checked for obvious mistakes first.

`JobSpec.to_wire()` builds the `enqueue` job-spec map of docs/protocol.md, leaving out every field
the caller did not set so the node applies its defaults. Mistakes a client can see without the node
(a string or `False` given as `tags`, both `run_at` and `run_in`, a naive datetime, a weight out of
range, args with NaN, a msgpack Timestamp or nested deeper than `Limits.max_depth`...) raise
`ValueError`/`TypeError` before anything is sent. Jobs get a client-generated UUIDv7 id when
none is given, so that re-sending an enqueue after a lost connection cannot create a duplicate.
"""

from __future__ import annotations

import math
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any, TypedDict

from worcr.values import json_form_problem
from worcr.wire import Limits

__all__ = [
    "EnqueueResult",
    "JobOptions",
    "JobSpec",
    "check_json_form",
    "new_job_id",
    "spec_from_mapping",
]

LIMITS = Limits()  # defaults are readable on an instance only: Limits has __slots__

Instant = float | int | datetime
Duration = float | int | timedelta

_BACKOFF_KEYS = frozenset({"base", "factor", "max", "jitter"})
MIN_WEIGHT, MAX_WEIGHT = 1e-6, 1e6  # the node's range (docs/protocol.md, section 8)


class JobOptions(TypedDict, total=False):
    """Keyword options of `Client.enqueue` (and the fields of `JobSpec` besides `kind`)."""

    args: Any
    tags: Sequence[str]
    tenant: str
    weight: float
    run_at: Instant
    run_in: Duration
    expires_at: Instant
    expires_in: Duration
    max_attempts: int
    backoff: Mapping[str, float]
    unique_key: str
    reserve_for: Duration
    max_run_time: Duration
    id: str | uuid.UUID


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    """The node's answer for one enqueued job. `duplicate` is true when an existing job with the
    same `id` or `unique_key` was returned instead of a new one."""

    id: str
    state: str
    duplicate: bool = False


@dataclass(slots=True)
class JobSpec:
    """One job to enqueue. Unset (None) fields are left to the node's defaults."""

    kind: str
    args: Any = field(default_factory=list)
    tags: Sequence[str] = ()
    tenant: str | None = None
    weight: float | None = None
    run_at: Instant | None = None
    run_in: Duration | None = None
    expires_at: Instant | None = None
    expires_in: Duration | None = None
    max_attempts: int | None = None
    backoff: Mapping[str, float] | None = None
    unique_key: str | None = None
    reserve_for: Duration | None = None
    max_run_time: Duration | None = None  # then the node asks the job to yield; None: the kind's
    id: str | uuid.UUID | None = None

    def to_wire(self, id_factory: Callable[[], str] | None = None) -> dict[str, Any]:
        """The job-spec map for `enqueue`; raises ValueError/TypeError on an invalid field.

        `id_factory` makes an id when the spec has none (the client passes `new_job_id`).
        """
        out: dict[str, Any] = {"kind": _text("kind", self.kind, LIMITS.max_kind_len)}
        out["args"] = _args(self.args)
        if self.id is not None:
            out["id"] = _job_id(self.id)
        elif id_factory is not None:
            out["id"] = id_factory()
        tags = [] if self.tags is None else _tags(self.tags)  # None: not set, as elsewhere
        if tags:
            out["tags"] = tags
        if self.tenant is not None:
            out["tenant"] = _text("tenant", self.tenant, LIMITS.max_tenant_len)
        if self.weight is not None:
            out["weight"] = _weight(self.weight)
        _when(out, "run", self.run_at, self.run_in)
        _when(out, "expires", self.expires_at, self.expires_in)
        if self.max_attempts is not None:
            attempts = self.max_attempts
            if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
                raise ValueError(f"max_attempts must be an int >= 1, got {attempts!r}")
            out["max_attempts"] = attempts
        if self.backoff is not None:
            out["backoff"] = _backoff(self.backoff)
        if self.unique_key is not None:
            out["unique_key"] = _text("unique_key", self.unique_key, 1 << 10)
        if self.reserve_for is not None:
            out["reserve_for"] = _positive("reserve_for", _seconds("reserve_for", self.reserve_for))
        if self.max_run_time is not None:
            out["max_run_time"] = _positive(
                "max_run_time", _seconds("max_run_time", self.max_run_time)
            )
        return out


_SPEC_FIELDS = frozenset(f.name for f in fields(JobSpec))


def spec_from_mapping(data: Mapping[str, Any]) -> JobSpec:
    """A `JobSpec` from a dict with the same keys (as accepted by `Client.enqueue_many`)."""
    unknown = data.keys() - _SPEC_FIELDS
    if unknown:
        raise ValueError(
            f"unknown job spec field(s) {sorted(unknown)}; valid fields: {sorted(_SPEC_FIELDS)}"
        )
    if "kind" not in data:
        raise ValueError("a job spec needs a 'kind'")
    return JobSpec(**data)


def new_job_id(
    now_ns: Callable[[], int] = time.time_ns, randbytes: Callable[[int], bytes] = os.urandom
) -> str:
    """A UUIDv7 (RFC 9562) string: time-ordered, so the node's indexes stay append-mostly."""
    ms = (now_ns() // 1_000_000) & 0xFFFF_FFFF_FFFF
    rand = int.from_bytes(randbytes(10), "big")
    value = (ms << 80) | (0x7 << 76) | ((rand >> 64) & 0xFFF) << 64
    value |= (0b10 << 62) | (rand & 0x3FFF_FFFF_FFFF_FFFF)
    return str(uuid.UUID(int=value))


def _text(name: str, value: Any, limit: int) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{name} must not be empty")
    if len(value) > limit:
        raise ValueError(f"{name} is {len(value)} characters long; the limit is {limit}")
    return value


def _tags(tags: Sequence[str]) -> list[str]:
    if isinstance(tags, str | bytes):
        raise TypeError(
            f"tags must be a list of str, not a single string (did you mean [{tags[:64]!r}]?)"
        )
    if not isinstance(tags, Sequence | AbstractSet):  # False, 0... are not "no tags"
        raise TypeError(f"tags must be a list of str, got {type(tags).__name__}")
    out = [_text("tag", tag, LIMITS.max_tag_len) for tag in tags]
    if len(out) > LIMITS.max_tags:
        raise ValueError(f"a job has at most {LIMITS.max_tags} tags, got {len(out)}")
    return out


def _job_id(value: str | uuid.UUID) -> str:
    if isinstance(value, uuid.UUID):
        return str(value)
    try:
        return str(uuid.UUID(value))
    except (ValueError, TypeError, AttributeError):
        raise ValueError(f"id must be a UUID, got {value!r}") from None


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def _positive(name: str, value: Any) -> float:
    number = _number(name, value)
    if number <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return number


def _weight(value: Any) -> float:
    weight = _positive("weight", value)
    if not MIN_WEIGHT <= weight <= MAX_WEIGHT:
        raise ValueError(f"weight must be from {MIN_WEIGHT:g} to {MAX_WEIGHT:g}, got {weight!r}")
    return weight


def _args(args: Any) -> Any:
    check_json_form(args, "args")
    return args


def check_json_form(value: Any, what: str) -> None:
    """A value as the node takes it for args and results (`worcr.values`): no NaN or infinity,
    no msgpack extension type (a Timestamp is one: send a number or an ISO 8601 string), nested
    at most `Limits.max_depth` levels. TypeError or ValueError naming `what` otherwise."""
    problem = json_form_problem(value, LIMITS.max_depth, others_ok=True)
    if problem is not None:
        raise (TypeError if problem.wrong_type else ValueError)(f"{what} {problem.message}")


def _seconds(name: str, value: Duration) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    return _number(name, value)


def _timestamp(name: str, value: Instant) -> float:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(
                f"{name} is a naive datetime; pass an aware one (e.g. datetime.now(timezone.utc))"
            )
        return value.timestamp()
    return _number(name, value)


def _when(out: dict[str, Any], prefix: str, at: Instant | None, within: Duration | None) -> None:
    if at is not None and within is not None:
        raise ValueError(f"give {prefix}_at or {prefix}_in, not both")
    if at is not None:
        out[f"{prefix}_at"] = _timestamp(f"{prefix}_at", at)
    elif within is not None:
        seconds = _seconds(f"{prefix}_in", within)
        if seconds < 0:
            raise ValueError(f"{prefix}_in must be >= 0 seconds, got {seconds!r}")
        out[f"{prefix}_in"] = seconds


def _backoff(backoff: Mapping[str, float]) -> dict[str, float]:
    if not isinstance(backoff, Mapping):
        raise TypeError(f"backoff must be a mapping, got {type(backoff).__name__}")
    unknown = backoff.keys() - _BACKOFF_KEYS
    if unknown:
        raise ValueError(
            f"unknown backoff key(s) {sorted(unknown)}; valid: {sorted(_BACKOFF_KEYS)}"
        )
    out: dict[str, float] = {}
    for key, value in backoff.items():
        number = _number(f"backoff.{key}", value)
        if number < 0:
            raise ValueError(f"backoff.{key} must be >= 0, got {value!r}")
        out[key] = number
    return out
