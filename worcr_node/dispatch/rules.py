"""Tag rules: what a rule is, how one is validated, and how rules judge a (lane, worker) pair.

A rule matches on the job's kind, tenant and tags and on the worker's tags, and then either
multiplies the job's weight by a factor (or by what a `weight` function answers), forbids the
pair, lets a `match` function judge it, or sheds load: `hold` keeps the matching jobs waiting,
`discard` cancels them, `shed` lets a function choose (functions/runner.py calls the functions).
Rules are stored in PostgreSQL (`store/queries.py`), managed over `/api/v1/rules`, and evaluated
here, purely: the dispatcher evaluates each (lane, worker class) once and caches the verdict until
the rules change.

Tag patterns: a plain tag matches itself; `key:*` matches any tag `key:<value>`. `same`/`differ`
compare the values of `key:` tags on both sides (affinity and anti-affinity: `region:eu` jobs only
on `region:eu` workers is `{"differ": ["region"]}` with action `forbid`).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from worcr.wire import quote, quoted

__all__ = [
    "ACTIONS",
    "ALL_TAGS",
    "FUNCTION_ACTIONS",
    "MAX_RULES",
    "Judge",
    "Match",
    "NoFunctions",
    "Rule",
    "RuleError",
    "TagSet",
    "Verdict",
    "evaluate",
    "parse_description_enabled",
    "parse_match",
    "parse_rule",
    "relevant_tags",
    "rule_matches",
    "storable",
    "worker_tag_relevance",
]

MAX_RULES = 10_000
MAX_LIST = 64  # entries in any list of a match
MAX_TEXT = 128  # a tag, kind, tenant or key
MAX_NAME = 128
MAX_DESCRIPTION = 1024
MAX_FACTOR = 1e6
ACTIONS = ("multiply", "forbid", "match", "hold", "discard", "shed")
JOB_SIDE_ACTIONS = ("hold", "discard", "shed")  # load shedding: judged on the job alone
_RULE_FIELDS = frozenset({"name", "description", "enabled", "match", "action", "factor",
                          "function"})  # fmt: skip
ALL_TAGS = "\x00all"  # in a relevance's keys: every worker tag matters (functions see them all)
_MATCH_FIELDS = frozenset({"kinds", "tenants", "job_tags", "worker_tags", "same", "differ"})
_TAG_FIELDS = frozenset({"all", "any", "none"})


class RuleError(ValueError):
    """A rule is invalid; the message names the field."""


@dataclass(frozen=True, slots=True)
class TagMatch:
    """all: every pattern present; any: at least one present (if given); none: none present."""

    all: tuple[str, ...] = ()
    any: tuple[str, ...] = ()
    none: tuple[str, ...] = ()

    def test(self, tags: TagSet) -> str | None:
        """None if the tags satisfy this match, else why not."""
        for p in self.all:
            if not tags.has(p):
                return f"lacks {p}"
        if self.any and not any(tags.has(p) for p in self.any):
            return f"has none of {list(self.any)}"
        for p in self.none:
            if tags.has(p):
                return f"has {p}"
        return None

    def to_json(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in (("all", self.all), ("any", self.any), ("none", self.none))
                if v}  # fmt: skip


class TagSet:
    """A set of tags with `key:*` lookups and per-key values (`region:eu` -> {"eu"})."""

    __slots__ = ("keys", "tags", "values")

    def __init__(self, tags: Iterable[str]) -> None:
        self.tags = frozenset(tags)
        self.values: dict[str, set[str]] = {}
        for t in self.tags:
            key, sep, value = t.partition(":")
            if sep:
                self.values.setdefault(key, set()).add(value)
        self.keys = frozenset(self.values)

    def has(self, pattern: str) -> bool:
        if pattern.endswith(":*"):
            return pattern[:-2] in self.keys
        return pattern in self.tags


@dataclass(frozen=True, slots=True)
class Match:
    """What a rule or a job limit applies to: job kind, tenant and tags, and worker tags."""

    kinds: frozenset[str] = frozenset()  # empty: any kind
    tenants: frozenset[str] = frozenset()  # empty: any tenant
    job_tags: TagMatch = field(default_factory=TagMatch)
    worker_tags: TagMatch = field(default_factory=TagMatch)
    same: tuple[str, ...] = ()
    differ: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        m: dict[str, Any] = {}
        if self.kinds:
            m["kinds"] = sorted(self.kinds)
        if self.tenants:
            m["tenants"] = sorted(self.tenants)
        if self.job_tags.to_json():
            m["job_tags"] = self.job_tags.to_json()
        if self.worker_tags.to_json():
            m["worker_tags"] = self.worker_tags.to_json()
        if self.same:
            m["same"] = list(self.same)
        if self.differ:
            m["differ"] = list(self.differ)
        return m

    def job_side(self, kind: str, tenant: str, job_tags: TagSet) -> str | None:
        """None if the job side matches (whatever the worker), else why not."""
        if self.kinds and kind not in self.kinds:
            return f"kind {kind!r} not in {sorted(self.kinds)}"
        if self.tenants and tenant not in self.tenants:
            return f"tenant {tenant!r} not in {sorted(self.tenants)}"
        why = self.job_tags.test(job_tags)
        return None if why is None else f"job {why}"


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    name: str
    action: str  # multiply | forbid
    factor: float = 1.0
    kinds: frozenset[str] = frozenset()  # empty: any kind
    tenants: frozenset[str] = frozenset()  # empty: any tenant
    job_tags: TagMatch = field(default_factory=TagMatch)
    worker_tags: TagMatch = field(default_factory=TagMatch)
    same: tuple[str, ...] = ()
    differ: tuple[str, ...] = ()
    enabled: bool = True
    description: str = ""
    function: str | None = None  # multiply (instead of factor), match, shed

    @property
    def match(self) -> Match:
        return Match(self.kinds, self.tenants, self.job_tags, self.worker_tags, self.same,
                     self.differ)  # fmt: skip

    def match_json(self) -> dict[str, Any]:
        return self.match.to_json()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "enabled": self.enabled,
            "match": self.match_json(),
            "action": self.action,
        }
        if self.function is not None:
            out["function"] = self.function
        elif self.action == "multiply":
            out["factor"] = self.factor
        return out


@dataclass(frozen=True, slots=True)
class Verdict:
    """How the rules judge one (job lane, worker) pair."""

    allowed: bool
    factor: float  # product of the matching multiply rules (1.0 if none)
    matched: tuple[Rule, ...]  # every enabled rule that matched, in rule order
    forbidden_by: tuple[Rule, ...]
    held_by: tuple[Rule, ...] = ()  # load shedding: the lane's jobs wait
    discarded_by: tuple[Rule, ...] = ()  # load shedding: the lane's jobs are cancelled
    errors: tuple[str, ...] = ()  # functions that failed (their fallback was used)


class Judge(Protocol):
    """Calls the functions of function rules for one (lane, worker class) pair; each answer is
    (value, error or None), the value being the hook's fallback on error."""

    def weight(self, rule: Rule) -> tuple[float, str | None]: ...
    def match(self, rule: Rule) -> tuple[bool, str | None]: ...
    def shed(self, rule: Rule) -> tuple[str | None, str | None]: ...


class NoFunctions:
    """A judge for when no function can run: every function rule gets its hook's fallback."""

    def weight(self, rule: Rule) -> tuple[float, str | None]:
        return 1.0, None

    def match(self, rule: Rule) -> tuple[bool, str | None]:
        return False, None

    def shed(self, rule: Rule) -> tuple[str | None, str | None]:
        return None, None


def rule_matches(
    rule: Rule | Match, kind: str, tenant: str, job_tags: TagSet, worker_tags: TagSet
) -> str | None:
    """None if the rule (or match) matches the pair, else the first reason it does not."""
    if rule.kinds and kind not in rule.kinds:
        return f"kind {kind!r} not in {sorted(rule.kinds)}"
    if rule.tenants and tenant not in rule.tenants:
        return f"tenant {tenant!r} not in {sorted(rule.tenants)}"
    why = rule.job_tags.test(job_tags)
    if why is not None:
        return f"job {why}"
    why = rule.worker_tags.test(worker_tags)
    if why is not None:
        return f"worker {why}"
    for key in rule.same:
        if not job_tags.values.get(key, set()) & worker_tags.values.get(key, set()):
            return f"job and worker share no {key}: value"
    for key in rule.differ:
        jv, wv = job_tags.values.get(key), worker_tags.values.get(key)
        if not jv or not wv:
            return f"job or worker has no {key}: tag"
        if jv & wv:
            return f"job and worker share a {key}: value"
    return None


def evaluate(
    rules: Sequence[Rule],
    kind: str,
    tenant: str,
    job_tags: TagSet,
    worker_tags: TagSet,
    judge: Judge | None = None,
) -> Verdict:
    """Factors of matching multiply rules multiply; any matching forbid rule (or match function
    answering false) forbids; a matching hold or discard rule (or shed function answering so)
    sheds the lane's jobs. Function rules are judged by `judge` (fallbacks without one)."""
    judge = judge or NoFunctions()
    factor = 1.0
    matched: list[Rule] = []
    forbidden: list[Rule] = []
    held: list[Rule] = []
    discarded: list[Rule] = []
    errors: list[str] = []
    for rule in rules:
        if not rule.enabled or rule_matches(rule, kind, tenant, job_tags, worker_tags) is not None:
            continue
        action = rule.action
        error = None
        if action == "multiply":
            if rule.function is None:
                f = rule.factor
            else:
                f, error = judge.weight(rule)
            factor *= f
        elif action == "match":
            allowed, error = judge.match(rule)
            if not allowed:
                forbidden.append(rule)
        elif action == "shed":
            shed, error = judge.shed(rule)
            if shed is None:
                if error is not None:
                    errors.append(error)
                continue  # the function did not shed: the rule did not apply
            (held if shed == "hold" else discarded).append(rule)
        elif action == "hold":
            held.append(rule)
        elif action == "discard":
            discarded.append(rule)
        else:
            forbidden.append(rule)
        if error is not None:
            errors.append(error)
        matched.append(rule)
    return Verdict(not (forbidden or held or discarded), factor, tuple(matched),
                   tuple(forbidden), tuple(held), tuple(discarded), tuple(errors))  # fmt: skip


def worker_tag_relevance(
    rules: Iterable[Rule | Match],
) -> tuple[frozenset[str], frozenset[str]]:
    """The worker tags any rule (or limit match) can see: exact patterns, and keys (`key:*`,
    same, differ)."""
    exact: set[str] = set()
    keys: set[str] = set()
    for r in rules:
        if isinstance(r, Rule) and r.function is not None and r.action in ("multiply", "match"):
            keys.add(ALL_TAGS)  # the function sees every worker tag
        for p in (*r.worker_tags.all, *r.worker_tags.any, *r.worker_tags.none):
            if p.endswith(":*"):
                keys.add(p[:-2])
            else:
                exact.add(p)
        keys.update(r.same)
        keys.update(r.differ)
    return frozenset(exact), frozenset(keys)


def relevant_tags(
    tags: Iterable[str], relevance: tuple[frozenset[str], frozenset[str]]
) -> frozenset[str]:
    """The subset of a worker's tags that rules can tell apart: workers whose relevant tags are
    equal get the same verdict for every job, so they share one pick structure."""
    exact, keys = relevance
    if ALL_TAGS in keys:
        return frozenset(tags)
    return frozenset(t for t in tags if t in exact or t.partition(":")[0] in keys)


# -- validation ------------------------------------------------------------------------------------


def parse_rule(body: Any, rule_id: str | None = None) -> Rule:
    """A rule from its JSON form; RuleError names the first bad field."""
    if not isinstance(body, Mapping):
        raise RuleError("a rule must be a JSON object")
    unknown = set(body) - _RULE_FIELDS
    if unknown:
        raise RuleError(f"unknown field(s) {quoted(unknown)}; allowed: {sorted(_RULE_FIELDS)}")
    name = body.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
        raise RuleError(f"name: expected a non-empty string of at most {MAX_NAME} characters")
    if not name.isprintable():
        raise RuleError("name: must not contain control characters or unpaired surrogates")
    description, enabled = parse_description_enabled(body)
    action = body.get("action")
    if action not in ACTIONS:
        raise RuleError(f"action: expected one of {list(ACTIONS)}")
    factor = 1.0
    function = _function(body, action)
    if action == "multiply" and function is None:
        raw = body.get("factor")
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise RuleError("factor: a multiply rule needs a number (or a weight function)")
        if not 0 < raw <= MAX_FACTOR or not math.isfinite(raw):  # compare first: huge ints
            raise RuleError(f"factor: expected a number > 0 and <= {MAX_FACTOR:g} "
                            "(use action 'forbid' to exclude a match)")  # fmt: skip
        factor = float(raw)
    elif "factor" in body:
        raise RuleError("factor: only a multiply rule without a function has a factor")
    m = parse_match(body.get("match", {}))
    if action in JOB_SIDE_ACTIONS and (m.worker_tags.to_json() or m.same or m.differ):
        raise RuleError(f"match: a {action} rule sheds jobs whatever the worker: match on kinds, "
                        "tenants and job_tags only")  # fmt: skip
    return Rule(
        id=rule_id or str(uuid.uuid4()),
        name=name.strip(),
        description=description,
        enabled=enabled,
        action=action,
        factor=factor,
        kinds=m.kinds,
        tenants=m.tenants,
        job_tags=m.job_tags,
        worker_tags=m.worker_tags,
        same=m.same,
        differ=m.differ,
        function=function,
    )


FUNCTION_ACTIONS = {"multiply": "weight", "match": "match", "shed": "shed"}  # action -> hook


def _function(body: Mapping[str, Any], action: str) -> str | None:
    name = body.get("function")
    if name is None:
        if action in ("match", "shed"):
            raise RuleError(f"function: a {action} rule needs the name of a "
                            f"{FUNCTION_ACTIONS[action]} function")  # fmt: skip
        return None
    if action not in FUNCTION_ACTIONS:
        raise RuleError(f"function: a {action} rule has no function (multiply, match and shed "
                        "rules do)")  # fmt: skip
    if not isinstance(name, str) or not name or len(name) > MAX_NAME or not name.isprintable():
        raise RuleError("function: expected the name of a function (printable characters)")
    if action == "multiply" and "factor" in body:
        raise RuleError("factor: give a factor or a function, not both")
    return name


def parse_description_enabled(body: Mapping[str, Any]) -> tuple[str, bool]:
    """The `description` and `enabled` fields of a rule or a limit; RuleError names them."""
    description = body.get("description", "")
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
        raise RuleError(f"description: expected a string of at most {MAX_DESCRIPTION} characters")
    if not storable(description):
        raise RuleError("description: must not contain NUL characters or unpaired surrogates")
    enabled = body.get("enabled", True)
    if not isinstance(enabled, bool):
        raise RuleError("enabled: expected true or false")
    return description, enabled


def parse_match(match: Any) -> Match:
    """A match from its JSON form; RuleError names the first bad field."""
    if not isinstance(match, Mapping):
        raise RuleError("match: expected an object")
    unknown = set(match) - _MATCH_FIELDS
    if unknown:
        raise RuleError(f"match: unknown field(s) {quoted(unknown)}; allowed: "
                        f"{sorted(_MATCH_FIELDS)}")  # fmt: skip
    return Match(
        kinds=frozenset(_texts(match, "kinds")),
        tenants=frozenset(_texts(match, "tenants")),
        job_tags=_tag_match(match, "job_tags"),
        worker_tags=_tag_match(match, "worker_tags"),
        same=tuple(_keys(match, "same")),
        differ=tuple(_keys(match, "differ")),
    )


def _texts(m: Mapping[str, Any], name: str, patterns: bool = False) -> list[str]:
    value = m.get(name, [])
    if not isinstance(value, list) or len(value) > MAX_LIST:
        raise RuleError(f"{name}: expected a list of at most {MAX_LIST} strings")
    for v in value:
        if not isinstance(v, str) or not v or len(v) > MAX_TEXT:
            raise RuleError(f"{name}: {quote(v)} is not a non-empty string of at most {MAX_TEXT} "
                            "chars")  # fmt: skip
        if not v.isprintable() or not storable(v):
            raise RuleError(f"{name}: {quote(v)} contains control characters or unpaired "
                            "surrogates")  # fmt: skip
        if "*" in v and not (patterns and v.endswith(":*") and v.count("*") == 1 and len(v) > 2):
            raise RuleError(f"{name}: {quote(v)}: '*' is only allowed as a whole value, as in "
                            "'key:*'")  # fmt: skip
    return list(dict.fromkeys(value))


def storable(text: str) -> bool:
    """PostgreSQL text and jsonb take neither NUL characters nor unpaired surrogates."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _keys(m: Mapping[str, Any], name: str) -> list[str]:
    keys = _texts(m, name)
    for k in keys:
        if ":" in k:
            raise RuleError(f"{name}: {quote(k)}: give the tag key without ':' (e.g. 'region')")
    return keys


def _tag_match(m: Mapping[str, Any], name: str) -> TagMatch:
    value = m.get(name, {})
    if not isinstance(value, Mapping):
        raise RuleError(f"{name}: expected an object with all/any/none lists")
    unknown = set(value) - _TAG_FIELDS
    if unknown:
        raise RuleError(f"{name}: unknown field(s) {quoted(unknown)}; allowed: all, any, none")
    try:
        parts = {k: tuple(_texts(value, k, patterns=True)) for k in _TAG_FIELDS if k in value}
    except RuleError as exc:
        raise RuleError(f"{name}.{exc}") from None
    return TagMatch(**parts)
