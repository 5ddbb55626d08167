"""Compiles and calls user functions (hooks) in a sandbox: the common types and the dispatch.

The function process (`worcr_node/functions/child.py`, driven by the runner through `host.py`)
compiles each stored function once with `engines.compile_function` and calls the result many times,
synchronously, one call at a time. Each language has its own runtime module: `lua_runtime.py` (Lua
5.4 through lupa) and `js_runtime.py` (QuickJS through the `quickjs` package). Both give every
compiled function its own interpreter state (a Lua state, a JS runtime), cap each call's CPU time
and the state's memory, pass the arguments in as fresh native values on each call and bring the
result back as plain Python values (None, bool, int, float, str, list, dict with str keys), or raise
`CallError`.

What a function can reach, what it cannot, and what the caps do and do not cover is written at the
top of each runtime module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "LANGUAGES",
    "MAX_DEPTH",
    "MAX_STRING",
    "MAX_VALUES",
    "CallError",
    "Caps",
    "CompileError",
    "Compiled",
    "SandboxError",
    "token_column",
]

LANGUAGES = ("lua", "javascript")

# What a function may return (both languages): nesting, number of values, length of one string.
MAX_DEPTH = 32  # levels of tables / arrays / objects
MAX_VALUES = 10_000  # values in total, containers included
MAX_STRING = 1 << 20  # bytes (UTF-8) in one string

CALL_ERROR_KINDS = ("error", "timeout", "memory", "result")


@dataclass(frozen=True, slots=True)
class Caps:
    """Caps on one compiled function."""

    time: float = 0.05  # CPU seconds per call (process CPU time, see the runtime modules)
    memory: int = 32 * 1024 * 1024  # bytes for the function's own Lua state / JS runtime


class SandboxError(Exception):
    """Base of the errors raised by the sandboxes."""


class CompileError(SandboxError):
    """The source could not be turned into a callable function: a syntax error (with its line and
    column, 1-based, when known), no function named like the hook, or an error raised while the
    top-level code ran (which is capped like a call)."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        self.message = message
        self.line = line
        self.column = column
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.line is None:
            return self.message
        if self.column is None:
            return f"line {self.line}: {self.message}"
        return f"line {self.line}, column {self.column}: {self.message}"


class CallError(SandboxError):
    """A call failed. `kind`: "error" (the function raised, or a runtime error), "timeout" (the CPU
    cap), "memory" (the memory cap) or "result" (a value that cannot be brought back: functions,
    userdata, cycles, nested deeper than 32 levels, more than 10,000 values, a string over 1 MiB,
    invalid UTF-8, a Lua table mixing keys)."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


class Compiled(Protocol):
    """A compiled function. Not thread-safe: call it from one thread at a time."""

    language: str

    def call(self, *args: Any) -> Any:
        """Call the function with JSON-like arguments; its result as plain values; CallError."""
        ...

    def close(self) -> None:
        """Free the interpreter state now (later calls raise CallError)."""
        ...


def missing_entry(entry: str) -> CompileError:
    return CompileError(f"the source must define a function named {entry!r}")


def token_column(source: str, line: int, token: str | None) -> int | None:
    """The 1-based column of the first `token` on `line` of `source` (a parser names the token it
    stopped at, not where it is); "<eof>" / None-token cases are the caller's. None when the line
    does not exist or does not hold the token."""
    lines = source.split("\n")
    if not token or not 1 <= line <= len(lines):
        return None
    at = lines[line - 1].find(token)
    return at + 1 if at >= 0 else None


def end_of_source(source: str) -> tuple[int, int]:
    """(line, column) just past the last character: where "end of input" errors point."""
    lines = source.split("\n")
    return len(lines), len(lines[-1]) + 1
