"""Limits: what a limit is, how one is validated, and how its key is computed for a job.

A limit caps work per *key*. Four algorithms (`LimitType`): concurrency (at most N at once),
token bucket (N per period with a burst, GCRA), fixed window (N per aligned window) and sliding
window (N in any interval of one period, exact). Two scopes: a *job* limit is checked by the
dispatcher before a job is handed out (each job takes one unit); a *rate* limit is acquired by
a running job through the worker protocol (`acquire`), any number of units at a time.

The key is a template over the job: `{tenant}`, `{kind}`, `{tag:NAME}` (the value of the job's
`NAME:value` tag) and `{args.PATH}` (a value inside the job's args: `customer_id`,
`order.region`, `0` for the first positional arg). Everything but args is a property of the
job's lane, so it is computed once per lane; args paths used by job limits *partition* lanes
(jobs with different values never share a lane, so one saturated key never blocks another).

This module is pure: the state lives in Redis (store/lua/claim_limited.lua, acquire.lua), the
definitions in PostgreSQL (limits/store.py), and the dispatcher applies them.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from worcr.wire import quote, quoted
from worcr_node.dispatch.rules import (
    Match,
    RuleError,
    TagSet,
    parse_description_enabled,
    parse_match,
    rule_matches,
    storable,
)

__all__ = [
    "FUNCTION_PATH",
    "MAX_KEY_LEN",
    "MAX_LIMITS",
    "KeyTemplate",
    "Limit",
    "LimitError",
    "LimitType",
    "Scope",
    "arg_value",
    "parse_limit",
    "partition_for",
    "partition_paths",
]

MAX_LIMITS = 1000
MAX_NAME = 128
MAX_TEMPLATE = 256
MAX_KEY_LEN = 256  # a computed or given key; longer ones are replaced by a digest
MAX_VALUE_LEN = 128  # one value put into a key (arg, tag); longer ones become a digest
MAX_LIMIT = 1_000_000_000
MAX_SLIDING_LIMIT = 100_000  # the sliding window keeps one entry per admission
MAX_PERIOD = 30 * 86400.0
MIN_PERIOD = 0.001
MIN_EMISSION_MS = 0.001  # a token bucket's interval between tokens
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")  # fullmatch: "$" would let "\n" end it
_FIELD = re.compile(r"\{([^{}]*)\}")
_PATH_SEGMENT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_TAG_KEY = re.compile(r"^[^\s:{}*]{1,128}$")
_FIELDS = frozenset(
    {"name", "description", "enabled", "scope", "type", "limit", "period", "burst", "key", "match",
     "function"}
)  # fmt: skip
FUNCTION_PATH = "fn:"  # + limit name: a partition entry holding the key a limit_key function gave


class LimitError(ValueError):
    """A limit is invalid; the message names the field."""


class LimitType(StrEnum):
    CONCURRENCY = "concurrency"
    TOKEN_BUCKET = "token_bucket"
    FIXED_WINDOW = "fixed_window"
    SLIDING_WINDOW = "sliding_window"

    @property
    def code(self) -> str:
        """The one-letter code the Redis scripts use."""
        return {"concurrency": "c", "token_bucket": "b", "fixed_window": "f",
                "sliding_window": "s"}[self.value]  # fmt: skip


class Scope(StrEnum):
    JOB = "job"  # checked by the node before a job is handed out
    RATE = "rate"  # acquired by a running job (protocol `acquire`)


@dataclass(frozen=True, slots=True)
class KeyTemplate:
    """A parsed key template: literal text and fields, in order."""

    text: str
    parts: tuple[tuple[str, str], ...]  # ("lit", text) | ("tenant"|"kind", "") | ("tag"|"args", x)

    @property
    def args_paths(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(v for k, v in self.parts if k == "args"))

    @classmethod
    def parse(cls, text: str) -> KeyTemplate:
        parts: list[tuple[str, str]] = []
        pos = 0
        for m in _FIELD.finditer(text):
            if m.start() > pos:
                parts.append(("lit", text[pos : m.start()]))
            parts.append(_field(m.group(1)))
            pos = m.end()
        rest = text[pos:]
        if "{" in rest or "}" in rest:
            raise LimitError(f"key: unbalanced brace in {quote(text)}")
        if rest:
            parts.append(("lit", rest))
        for kind, value in parts:
            if kind == "lit" and ("{" in value or "}" in value):
                raise LimitError(f"key: unbalanced brace in {quote(text)}")
        return cls(text, tuple(parts))

    def render(
        self,
        kind: str,
        tenant: str,
        tags: TagSet,
        args: Mapping[str, str] | Any = None,
        *,
        resolved: bool = False,
    ) -> str:
        """The key for one job. `args` is the job's args, or (resolved=True) a mapping of args
        path -> value already computed (a lane's partition)."""
        out: list[str] = []
        for k, v in self.parts:
            if k == "lit":
                out.append(v)
            elif k == "tenant":
                out.append(_short(tenant))
            elif k == "kind":
                out.append(_short(kind))
            elif k == "tag":
                out.append(_short(",".join(sorted(tags.values.get(v, ())))))
            elif resolved:
                out.append(args[v])
            else:
                out.append(arg_value(args, v))
        return _short("".join(out), MAX_KEY_LEN)


def _field(body: str) -> tuple[str, str]:
    shown = quote("{" + body + "}")
    if body in ("tenant", "kind"):
        return body, ""
    if body.startswith("tag:"):
        name = body[4:]
        if not _TAG_KEY.match(name):
            raise LimitError(f"key: {shown}: give a tag key, as in {{tag:customer}}")
        return "tag", name
    if body.startswith("args."):
        path = body[5:]
        if not path or not all(_PATH_SEGMENT.match(s) for s in path.split(".")):
            raise LimitError(f"key: {shown}: an args path is dot-separated names or indexes, "
                             "as in {args.customer_id} or {args.0}")  # fmt: skip
        if len(path.split(".")) > 8:
            raise LimitError(f"key: {shown}: at most 8 levels")
        return "args", path
    raise LimitError(f"key: unknown field {shown}; use {{tenant}}, {{kind}}, {{tag:NAME}} "
                     "or {args.PATH}")  # fmt: skip


def _short(value: str, limit: int = MAX_VALUE_LEN) -> str:
    """Values too long for a key are replaced by a digest (stable, collision-resistant)."""
    if len(value) <= limit:
        return value
    return "#" + hashlib.blake2b(value.encode(), digest_size=16).hexdigest()


def arg_value(args: Any, path: str) -> str:
    """The text of one value inside a job's args; missing: "" (all such jobs share a key)."""
    node = args
    for seg in path.split("."):
        if isinstance(node, Mapping):
            node = node.get(seg)
        elif isinstance(node, list | tuple) and seg.isdigit() and int(seg) < len(node):
            node = node[int(seg)]
        else:
            return ""
        if node is None:
            return ""
    if isinstance(node, bool):
        return "true" if node else "false"
    if isinstance(node, str):
        return _short(node)
    if isinstance(node, int | float):
        return _short(repr(node))
    if isinstance(node, bytes):
        return _short(node.hex())
    try:  # a map or list: its canonical JSON
        return _short(json.dumps(node, sort_keys=True, separators=(",", ":"), default=repr))
    except (TypeError, ValueError):
        return ""


@dataclass(frozen=True, slots=True)
class Limit:
    id: str
    name: str
    scope: Scope
    type: LimitType
    limit: int
    period: float = 0.0  # seconds; 0 for concurrency
    burst: int = 0  # token bucket only
    key: KeyTemplate = field(default_factory=lambda: KeyTemplate("", ()))
    match: Match = field(default_factory=Match)
    enabled: bool = True
    description: str = ""
    function: str | None = None  # a limit_key function computes the key (and limit) per job

    @property
    def shape(self) -> str:
        """Names the limit's keyspace in Redis: a change of type, key template, function or
        match starts fresh keys (the old counts mean something else); a change of the numbers
        (or of the function's code) keeps them."""
        key = self.key.text if self.function is None else f"{{function:{self.function}}}"
        raw = json.dumps([self.scope, self.type, key, self.match.to_json()],
                         sort_keys=True)  # fmt: skip
        return hashlib.blake2b(raw.encode(), digest_size=4).hexdigest()

    @property
    def period_ms(self) -> int:
        return max(1, round(self.period * 1000)) if self.period else 0

    def applies(self, kind: str, tenant: str, job_tags: TagSet, worker_tags: TagSet) -> bool:
        why = rule_matches(self.match, kind, tenant, job_tags, worker_tags)
        return self.enabled and why is None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "enabled": self.enabled,
            "scope": self.scope.value,
            "type": self.type.value,
            "limit": self.limit,
            "key": self.key.text,
        }
        if self.function is not None:
            out["function"] = self.function
        if self.type != LimitType.CONCURRENCY:
            out["period"] = self.period
        if self.type == LimitType.TOKEN_BUCKET:
            out["burst"] = self.burst
        if self.scope == Scope.JOB:
            out["match"] = self.match.to_json()
        return out


def partition_paths(
    limits: Iterable[Limit], kind: str, tenant: str, tags: TagSet
) -> tuple[str, ...]:
    """The args paths that job limits applying to a lane key on, sorted: jobs of the lane must
    be split by their values."""
    paths: set[str] = set()
    for lim in limits:
        if (
            lim.scope == Scope.JOB
            and lim.enabled
            and (lim.key.args_paths or lim.function is not None)
            and lim.match.job_side(kind, tenant, tags) is None
        ):
            paths.update(lim.key.args_paths)
            if lim.function is not None:
                paths.add(FUNCTION_PATH + lim.name)
    return tuple(sorted(paths))


def partition_for(paths: Sequence[str], args: Any) -> tuple[tuple[str, str], ...]:
    return tuple((p, arg_value(args, p)) for p in paths)


# -- validation ------------------------------------------------------------------------------------


def parse_limit(body: Any, limit_id: str | None = None) -> Limit:
    """A limit from its JSON form; LimitError names the first bad field."""
    if not isinstance(body, Mapping):
        raise LimitError("a limit must be a JSON object")
    unknown = set(body) - _FIELDS - {"id"}
    if unknown:
        raise LimitError(f"unknown field(s) {quoted(unknown)}; allowed: {sorted(_FIELDS)}")
    name = body.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name) or len(name) > MAX_NAME:
        raise LimitError(f"name: expected 1 to {MAX_NAME} letters, digits or _.:- "
                         "(starting with a letter or digit)")  # fmt: skip
    try:
        description, enabled = parse_description_enabled(body)
    except RuleError as exc:
        raise LimitError(str(exc)) from None
    scope = _choice(body, "scope", Scope, Scope.JOB)
    ltype = _choice(body, "type", LimitType, None)
    max_limit = MAX_SLIDING_LIMIT if ltype == LimitType.SLIDING_WINDOW else MAX_LIMIT
    limit = _int(body, "limit", 1, max_limit, required=True)
    period, burst = _period_burst(body, ltype, limit)
    template = body.get("key", "")
    if not isinstance(template, str) or len(template) > MAX_TEMPLATE:
        raise LimitError(f"key: expected a template string of at most {MAX_TEMPLATE} characters")
    if not template.isprintable() or not storable(template):
        raise LimitError("key: must not contain control characters or unpaired surrogates")
    key = KeyTemplate.parse(template)
    function = _function(body, scope, template)
    if scope == Scope.RATE:
        if body.get("match"):
            raise LimitError("match: a rate limit is acquired by name by a running job; only job "
                             "limits match jobs")  # fmt: skip
        match = Match()
    else:
        try:
            match = parse_match(body.get("match", {}))
        except RuleError as exc:
            raise LimitError(str(exc) if str(exc).startswith("match") else f"match.{exc}") from None
    return Limit(
        id=limit_id or str(uuid.uuid4()),
        name=name,
        scope=scope,
        type=ltype,
        limit=limit,
        period=period,
        burst=burst,
        key=key,
        match=match,
        enabled=enabled,
        description=description,
        function=function,
    )


def _function(body: Mapping[str, Any], scope: Scope, template: str) -> str | None:
    function = body.get("function")
    if function is not None:
        if (
            not isinstance(function, str)
            or not function
            or len(function) > MAX_NAME
            or not function.isprintable()
        ):
            raise LimitError("function: expected the name of a limit_key function")
        if scope != Scope.JOB:
            raise LimitError("function: only a job limit computes its key with a function (a "
                             "rate limit's key is given by the running job)")  # fmt: skip
        if template:
            raise LimitError("key: give a key template or a function, not both")
    return function


def _period_burst(body: Mapping[str, Any], ltype: LimitType, limit: int) -> tuple[float, int]:
    if ltype == LimitType.CONCURRENCY:
        for f in ("period", "burst"):
            if f in body:
                raise LimitError(f"{f}: a concurrency limit has no {f}")
        return 0.0, 0
    raw = body.get("period")
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise LimitError(f"period: a {ltype} limit needs a period in seconds")
    if not MIN_PERIOD <= raw <= MAX_PERIOD or not math.isfinite(raw):
        raise LimitError(f"period: expected seconds from {MIN_PERIOD} to {MAX_PERIOD:.0f}")
    burst = 0
    if ltype == LimitType.TOKEN_BUCKET:
        if raw * 1000 / limit < MIN_EMISSION_MS:  # below it, ms floats cannot tell tokens apart
            raise LimitError(f"limit: a token bucket allows at most {1 / MIN_EMISSION_MS:g} "
                             "tokens per ms (limit / period)")  # fmt: skip
        burst = _int(body, "burst", 1, MAX_LIMIT, required=False) or limit
    elif "burst" in body:
        raise LimitError("burst: only a token_bucket limit has a burst")
    return float(raw), burst


def _choice(body: Mapping[str, Any], name: str, enum: Any, default: Any) -> Any:
    raw = body.get(name, default)
    values = [e.value for e in enum]
    if raw is None or raw not in values:
        raise LimitError(f"{name}: expected one of {values}")
    return enum(raw)


def _int(body: Mapping[str, Any], name: str, low: int, high: int, *, required: bool) -> int:
    raw = body.get(name)
    if raw is None and not required:
        return 0
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise LimitError(f"{name}: expected an integer from {low} to {high}")
    if not low <= raw <= high:
        raise LimitError(f"{name}: {quote(raw)} is out of range [{low}, {high}]")
    return raw
