"""The engines behind the sandbox: `compile_function` picks the runtime of a function's language
(`lua_runtime.py`, `js_runtime.py`; each imported on first use). The types they share (caps,
errors, the `Compiled` protocol) are in `sandbox.py`, which imports no engine.
"""

from __future__ import annotations

from worcr_node.functions.sandbox import LANGUAGES, Caps, Compiled

__all__ = ["compile_function"]

DEFAULT_CAPS = Caps()


def compile_function(language: str, source: str, entry: str, caps: Caps = DEFAULT_CAPS) -> Compiled:
    """Compile `source` and return its global function named `entry` (e.g. "weight").

    Raises CompileError: a syntax error (with line and column), "the source must define a function
    named 'weight'" when that global is missing or not a function, or an error raised while the
    top-level code ran (capped like a call). ValueError for an unknown language or an `entry` that
    is not an identifier.
    """
    if not entry.isidentifier() or not entry.isascii():
        raise ValueError(f"not a function name: {entry!r}")
    if language == "lua":
        from worcr_node.functions.lua_runtime import compile_lua

        return compile_lua(source, entry, caps)
    if language == "javascript":
        from worcr_node.functions.js_runtime import compile_js

        return compile_js(source, entry, caps)
    raise ValueError(f"unknown language {language!r} (known: {', '.join(LANGUAGES)})")
