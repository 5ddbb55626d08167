"""Validation of enqueue input: a job spec from the wire or the HTTP API becomes a NewJob.

Everything a producer sends passes through `parse_job_spec`; a bad field raises SpecError with a
message naming the field, so the caller can answer BAD_REQUEST / HTTP 400 and never store junk.
`pack_value` is the one check of a value the node stores as msgpack and serves as JSON (a job's
args, an ack's result): only types with a JSON form (or the documented `{"$bytes": ...}` one),
nested at most `Limits.max_depth` levels, within a size in bytes.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

import msgpack
import uuid_utils

from worcr.values import json_form_problem
from worcr.wire import Limits, quote, quoted
from worcr_node.limits.model import partition_for
from worcr_node.state import JobState

__all__ = [
    "NewJob",
    "RetryBackoff",
    "SpecError",
    "check_value",
    "lane_of",
    "number_field",
    "pack_value",
    "parse_job_spec",
    "parse_time",
    "tags_field",
    "text_field",
]

DEFAULT_TENANT = "default"
DEFAULT_MAX_ATTEMPTS = 25
DEFAULT_RESERVE_FOR = 60.0
MAX_RESERVE_FOR = 7 * 86400.0
MIN_RESERVE_FOR = 0.5
MIN_RUN_TIME = 1.0
MAX_RUN_TIME = 30 * 86400.0
_KNOWN = frozenset(
    {
        "kind", "args", "id", "tags", "tenant", "weight", "run_at", "run_in", "expires_at",
        "expires_in", "max_attempts", "backoff", "unique_key", "reserve_for", "max_run_time",
    }
)  # fmt: skip


class SpecError(ValueError):
    """A job spec field is invalid."""


@dataclass(frozen=True, slots=True)
class RetryBackoff:
    """A job's delay before its next attempt after failed attempt n (1-based):
    min(max, base * factor**(n-1)), minus up to jitter*delay. (The SDK's `worcr.Backoff` is the
    producers' and workers' reconnect delay, 0-based.)"""

    base: float = 2.0
    factor: float = 2.0
    max: float = 3600.0
    jitter: float = 0.25

    def delay(self, attempt: int, rand: float) -> float:
        """`rand` in [0, 1) is injected so tests are deterministic."""
        exp = min(attempt - 1, 64)
        raw = min(self.max, self.base * self.factor**exp)
        return raw * (1.0 - self.jitter * rand)

    def to_json(self) -> dict[str, float]:
        return {"base": self.base, "factor": self.factor, "max": self.max, "jitter": self.jitter}


@dataclass(slots=True)
class NewJob:
    id: uuid.UUID
    kind: str
    args: bytes  # msgpack
    tags: tuple[str, ...]
    tenant: str
    weight: float
    state: JobState
    run_at: float | None
    expires_at: float | None
    max_attempts: int
    backoff: RetryBackoff | None
    unique_key: str | None
    reserve_for: float
    lane: str
    client_id: bool  # the producer chose the id (idempotent enqueue)
    partition: Partition = ()
    max_run_time: float | None = None  # seconds; None: the kind's setting, if any
    function_errors: list[dict[str, Any]] = field(default_factory=list)  # on_enqueue failures


Partition = tuple[tuple[str, str], ...]  # (args path, value) pairs that split lanes
PartitionPaths = Callable[[str, str, tuple[str, ...]], tuple[str, ...]]


@lru_cache(maxsize=65536)
def lane_of(
    kind: str, tenant: str, tags: tuple[str, ...], weight: float, partition: Partition = ()
) -> str:
    """Stable lane id: jobs with the same kind, tenant, tag set, weight and partition (values of
    the args paths job limits key on) share a lane."""
    key = "\x1f".join((kind, tenant, repr(weight), *tags))
    if partition:
        key += "\x1e" + "\x1f".join(f"{p}={v}" for p, v in partition)
    return hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


def parse_time(value: Any, field: str) -> float:
    """Unix seconds from a number or an ISO 8601 string with a timezone."""
    if isinstance(value, bool):
        raise SpecError(f"{field}: expected Unix seconds or an ISO 8601 time, got a boolean")
    if isinstance(value, int | float):
        if not 0 <= value < 1e11 or not math.isfinite(value):  # compare first: huge ints
            raise SpecError(f"{field}: {quote(value)} is out of range")
        return float(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise SpecError(f"{field}: {quote(value)} is not an ISO 8601 time") from None
        if parsed.tzinfo is None:
            raise SpecError(f"{field}: {quote(value)} has no timezone (add Z or +00:00)")
        return parsed.timestamp()
    raise SpecError(f"{field}: expected Unix seconds or an ISO 8601 time")


def text_field(spec: Mapping[str, Any], field: str, limit: int, default: str | None = None) -> str:
    value = spec.get(field, default)
    if not isinstance(value, str) or not value:
        raise SpecError(f"{field}: expected a non-empty string")
    if len(value) > limit:
        raise SpecError(f"{field}: longer than {limit} characters")
    if not value.isprintable():
        raise SpecError(f"{field}: must not contain control characters")
    return value


def number_field(spec: Mapping[str, Any], field: str, low: float, high: float) -> float | None:
    value = spec.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(f"{field}: expected a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise SpecError(f"{field}: expected a finite number")
    if not low <= value <= high:  # exact for huge ints too (no float conversion first)
        raise SpecError(f"{field}: {quote(value)} is out of range [{low}, {high}]")
    if value == 0 and math.copysign(1.0, value) < 0:
        raise SpecError(f"{field}: -0.0 is negative zero; give 0")
    return float(value)


def tags_field(spec: Mapping[str, Any], limits: Limits) -> tuple[str, ...]:
    """The sorted set of tags; null is the same as leaving tags out (no tags). Anything but a
    list of strings is refused: `false`, `0` or `""` are not an empty list."""
    tags = spec.get("tags")
    if tags is None:
        return ()
    if not isinstance(tags, list | tuple):
        raise SpecError("tags: expected a list of strings")
    if len(tags) > limits.max_tags:
        raise SpecError(f"tags: more than {limits.max_tags} tags")
    for tag in tags:
        if not isinstance(tag, str) or not tag or len(tag) > limits.max_tag_len:
            raise SpecError(f"tags: each tag must be a string of 1-{limits.max_tag_len} characters")
        if not tag.isprintable():
            raise SpecError("tags: a tag must not contain control characters")
    return tuple(sorted(set(tags)))


def pack_value(value: Any, field: str, max_bytes: int, max_depth: int) -> bytes:
    """The value msgpack-encoded for storage, if it is at most `max_bytes` encoded and
    `check_value` accepts it; SpecError naming `field` otherwise."""
    try:
        packed: bytes = msgpack.packb(value, use_bin_type=True)
    except UnicodeEncodeError:
        raise SpecError(f"{field}: a string holds an unpaired surrogate (not UTF-8)") from None
    except ValueError as exc:  # msgpack's own nesting limit (about 1000 levels), or a long item
        too_deep = "recursion" in str(exc)
        why = f"nested deeper than {max_depth} levels" if too_deep else quote(str(exc))
        raise SpecError(f"{field}: {why}") from None
    except (TypeError, OverflowError) as exc:  # an integer beyond 64 bits
        raise SpecError(f"{field}: cannot be encoded ({quote(str(exc))})") from None
    if len(packed) > max_bytes:
        raise SpecError(f"{field}: {len(packed)} bytes encoded, over the limit of {max_bytes}")
    check_value(value, field, max_depth)
    return packed


def check_value(value: Any, field: str, max_depth: int) -> None:
    """Only values with a JSON form (`worcr.values`: finite numbers, strings, bytes, arrays and
    maps with string keys, at most `max_depth` levels; no msgpack extension type); SpecError
    naming `field` otherwise."""
    problem = json_form_problem(value, max_depth)
    if problem is not None:
        raise SpecError(f"{field}: {problem.message}")


def _backoff(value: Any) -> RetryBackoff | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise SpecError("backoff: expected a map with base, factor, max, jitter")
    unknown = set(value) - {"base", "factor", "max", "jitter"}
    if unknown:
        raise SpecError(f"backoff: unknown field(s) {quoted(unknown)}")
    d = RetryBackoff()

    def pick(field: str, low: float, high: float, default: float) -> float:
        number = number_field(value, field, low, high)
        return default if number is None else number

    return RetryBackoff(
        base=pick("base", 0.0, 86400.0, d.base),
        factor=pick("factor", 1.0, 10.0, d.factor),
        max=pick("max", 0.0, 30 * 86400.0, d.max),
        jitter=pick("jitter", 0.0, 1.0, d.jitter),
    )


def _when(spec: Mapping[str, Any], at: str, delta: str, now: float) -> float | None:
    if spec.get(at) is not None and spec.get(delta) is not None:
        raise SpecError(f"{at} and {delta}: give one, not both")
    if spec.get(at) is not None:
        return parse_time(spec[at], at)
    seconds = number_field(spec, delta, 0.0, 10 * 365 * 86400.0)
    return None if seconds is None else now + seconds


def _id(spec: Mapping[str, Any]) -> tuple[uuid.UUID, bool]:
    raw = spec.get("id")
    if raw is None:
        return uuid.UUID(bytes=uuid_utils.uuid7().bytes), False
    if not isinstance(raw, str):
        raise SpecError("id: expected a UUID string")
    try:
        return uuid.UUID(raw), True
    except ValueError:
        raise SpecError(f"id: {raw[:64]!r} is not a UUID") from None


def _no_paths(kind: str, tenant: str, tags: tuple[str, ...]) -> tuple[str, ...]:
    return ()


def parse_job_spec(
    spec: Any, now: float, limits: Limits, paths: PartitionPaths = _no_paths
) -> NewJob:
    """Validate one job spec; raise SpecError with the offending field in the message.

    `paths` names the args paths that job limits split this job's lane by (limits/compiled.py)."""
    if not isinstance(spec, Mapping):
        raise SpecError("a job spec must be a map")
    unknown = set(spec) - _KNOWN
    if unknown:
        raise SpecError(f"unknown field(s) {quoted(unknown)}")
    kind = text_field(spec, "kind", limits.max_kind_len)
    tenant = text_field(spec, "tenant", limits.max_tenant_len, DEFAULT_TENANT)
    args = spec.get("args", [])
    packed = pack_value(args, "args", limits.max_args, limits.max_depth)
    tags = tags_field(spec, limits)
    weight = number_field(spec, "weight", 1e-6, 1e6) or 1.0
    max_attempts = spec.get("max_attempts", DEFAULT_MAX_ATTEMPTS)
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int):
        raise SpecError("max_attempts: expected an integer")
    if not 1 <= max_attempts <= 1000:
        raise SpecError("max_attempts: must be from 1 to 1000")
    reserve_for = number_field(spec, "reserve_for", MIN_RESERVE_FOR, MAX_RESERVE_FOR)
    max_run_time = number_field(spec, "max_run_time", MIN_RUN_TIME, MAX_RUN_TIME)
    unique_key = spec.get("unique_key")
    if unique_key is not None:
        unique_key = text_field(spec, "unique_key", 256)
    run_at = _when(spec, "run_at", "run_in", now)
    expires_at = _when(spec, "expires_at", "expires_in", now)
    job_id, client_id = _id(spec)
    state = JobState.SCHEDULED if run_at is not None and run_at > now else JobState.QUEUED
    split_by = paths(kind, tenant, tags)
    partition = partition_for(split_by, args) if split_by else ()
    return NewJob(
        id=job_id,
        kind=kind,
        args=packed,
        tags=tags,
        tenant=tenant,
        weight=weight,
        state=state,
        run_at=run_at,
        expires_at=expires_at,
        max_attempts=max_attempts,
        backoff=_backoff(spec.get("backoff")),
        unique_key=unique_key,
        reserve_for=reserve_for or DEFAULT_RESERVE_FOR,
        lane=lane_of(kind, tenant, tags, weight, partition),
        client_id=client_id,
        partition=partition,
        max_run_time=max_run_time,
    )
