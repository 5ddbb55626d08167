"""Embedded functions: what one is, which hooks exist, and how a function is validated.

A function is user code in Lua or JavaScript that the node runs at one *hook*:

- `on_enqueue(job)`: change a new job (tags, tenant, weight, run_at, expires_at) or refuse it;
  applies by itself to the jobs its `match` selects (kinds, tenants, job tags).
- `weight(job, worker)`: a weight multiplier; used by a rule with action `multiply`.
- `match(job, worker)`: allow (true) or forbid (false) the pair; used by a rule, action `match`.
- `shed(job)`: "hold", "discard" or nothing; used by a rule with action `shed`.
- `limit_key(job)`: a key, or {key, limit}, for a job limit (`function` instead of `key`).
- `retry(job, error, attempt)`: seconds until the next attempt, or false to give up; applies by
  itself to the failed jobs its `match` selects.

This module is pure: definitions live in PostgreSQL (`functions/store.py`), they are compiled and
called by `functions/runner.py` through the sandboxes of `functions/sandbox.py`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from worcr.wire import quoted
from worcr_node.dispatch.rules import (
    Match,
    RuleError,
    parse_description_enabled,
    parse_match,
)
from worcr_node.functions.sandbox import LANGUAGES

__all__ = [
    "JOB_HOOKS",
    "MAX_FUNCTIONS",
    "MAX_SOURCE",
    "Function",
    "FunctionError",
    "Hook",
    "parse_function",
    "valid_name",
]

MAX_FUNCTIONS = 1000
MAX_SOURCE = 64 * 1024  # characters of source
MAX_NAME = 128
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_FIELDS = frozenset({"language", "hook", "source", "description", "enabled", "match"})


class FunctionError(ValueError):
    """A function definition is invalid; the message names the field. A syntax error carries
    its line and column (1-based) when the language reports them."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        super().__init__(message)
        self.line = line
        self.column = column


class Hook(StrEnum):
    ON_ENQUEUE = "on_enqueue"
    WEIGHT = "weight"
    MATCH = "match"
    SHED = "shed"
    LIMIT_KEY = "limit_key"
    RETRY = "retry"


# Hooks that apply by themselves to the jobs their `match` selects (no rule refers to them).
JOB_HOOKS = frozenset({Hook.ON_ENQUEUE, Hook.RETRY})


@dataclass(frozen=True, slots=True)
class Function:
    name: str
    language: str
    hook: Hook
    source: str
    version: int = 0  # 0: not stored yet
    description: str = ""
    enabled: bool = True
    match: Match = field(default_factory=Match)  # on_enqueue and retry only

    @property
    def key(self) -> tuple[str, int]:
        """Compiled code is cached by (name, version): a version is never changed."""
        return self.name, self.version

    def to_json(self, source: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "language": self.language,
            "hook": self.hook.value,
            "description": self.description,
            "enabled": self.enabled,
        }
        if self.hook in JOB_HOOKS:
            out["match"] = self.match.to_json()
        if source:
            out["source"] = self.source
        return out


def valid_name(name: Any) -> bool:
    return isinstance(name, str) and len(name) <= MAX_NAME and bool(_NAME.fullmatch(name))


def parse_function(body: Any, name: str, version: int = 0) -> Function:
    """A function from its JSON form (without compiling it); FunctionError names the field."""
    if not valid_name(name):
        raise FunctionError(f"name: expected 1 to {MAX_NAME} letters, digits or _.- starting "
                            "with a letter or _")  # fmt: skip
    if not isinstance(body, Mapping):
        raise FunctionError("a function must be a JSON object")
    unknown = set(body) - _FIELDS - {"name"}
    if unknown:
        raise FunctionError(f"unknown field(s) {quoted(unknown)}; allowed: {sorted(_FIELDS)}")
    if "name" in body and body["name"] != name:
        raise FunctionError("name: differs from the name in the path")
    language = body.get("language")
    if language not in LANGUAGES:
        raise FunctionError(f"language: expected one of {list(LANGUAGES)}")
    hook_name, hooks = body.get("hook"), [h.value for h in Hook]
    if not isinstance(hook_name, str) or hook_name not in hooks:  # no str() of a client value
        raise FunctionError(f"hook: expected one of {hooks}")
    hook = Hook(hook_name)
    source = _source(body.get("source"))
    try:
        description, enabled = parse_description_enabled(body)
        match = parse_match(body.get("match", {}))
    except RuleError as exc:
        raise FunctionError(str(exc)) from None
    if hook not in JOB_HOOKS and body.get("match"):
        raise FunctionError(f"match: a {hook} function is used by rules or limits, which say "
                            "what it applies to; only on_enqueue and retry functions match "
                            "jobs themselves")  # fmt: skip
    if match.worker_tags.to_json() or match.same or match.differ:
        raise FunctionError("match: a function matches jobs only (kinds, tenants, job_tags)")
    return Function(name, language, hook, source, version, description, enabled, match)


def _source(source: Any) -> str:
    if not isinstance(source, str) or not source.strip():
        raise FunctionError("source: expected the function's code as a non-empty string")
    if len(source) > MAX_SOURCE:
        raise FunctionError(f"source: longer than {MAX_SOURCE} characters")
    if "\x00" in source:
        raise FunctionError("source: must not contain NUL characters")
    try:
        source.encode("utf-8")
    except UnicodeEncodeError:
        raise FunctionError("source: must not contain unpaired surrogates") from None
    return source
