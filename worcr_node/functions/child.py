"""The function process: where the node's user functions actually run (`python -m` this module).

`functions/host.py` starts it and talks to it over its stdin and stdout: frames of a 4-byte
big-endian length and a msgpack array, one request after another, each answered in order. It
holds the compiled functions (one interpreter state each, `sandbox.compile_function`, with the
caps of argv) keyed by (name, version), so a function is compiled once per process. Requests:

    ["call", id, [name, version], language, source or nil, entry, args]
        source is sent the first time this process sees the key (and again after a restart)
    ["calls", id, [name, version], language, source or nil, entry, [args, ...]]
        the same function called with each args in turn: one answer per call, in order, written
        a few at a time (every FLUSH_EVERY seconds); after a call that hit a cap (timeout,
        memory), each call left is answered [id, "skipped"] without running
    ["forget", id, [[name, version], ...]]      free those states
    ["check", id, language, source, entry]      compile, then free (the API's syntax check)
    ["trial", id, language, source, entry, args] compile, call once, free (a draft's trial)

Answers: [id, "ok", value, cpu] | [id, "call", kind, message, cpu] (CallError) |
[id, "compile", message, line, column, cpu] (CompileError) | [id, "missing", message] (a key
this process does not have: the host sends the source again). `cpu` is the process CPU seconds
the request took. Nothing else may write to stdout: the sandboxes cannot, and `print` goes to
stderr. The host kills this process when a call runs too long; it exits by itself when stdin
closes.
"""

from __future__ import annotations

import struct
import sys
import time
from collections.abc import Iterator
from typing import Any, BinaryIO

import msgpack

from worcr_node.functions.engines import compile_function
from worcr_node.functions.sandbox import CallError, Caps, Compiled, CompileError

__all__ = ["main"]

_HEAD = struct.Struct(">I")
FLUSH_EVERY = 0.005  # seconds: answers of a "calls" request written together
HEAVY = ("timeout", "memory")  # failures after which the rest of a "calls" request is skipped


def _read(stream: BinaryIO) -> Any | None:
    head = stream.read(_HEAD.size)
    if len(head) < _HEAD.size:
        return None
    (size,) = _HEAD.unpack(head)
    body = stream.read(size)
    if len(body) < size:
        return None
    return msgpack.unpackb(body, raw=False, strict_map_key=False)


def encode(answer: list[Any]) -> bytes:
    """An answer as a frame. A value msgpack cannot carry (an integer past 64 bits, which a
    JavaScript number can be) is answered as a "result" error instead."""
    try:
        body: bytes = msgpack.packb(answer, use_bin_type=True)
    except (OverflowError, TypeError, ValueError) as exc:
        cpu = answer[3] if answer[1] == "ok" else 0.0
        body = msgpack.packb([answer[0], "call", "result", f"cannot be brought back: {exc}",
                              cpu], use_bin_type=True)  # fmt: skip
    return _HEAD.pack(len(body)) + body


def _write(stream: BinaryIO, answer: list[Any]) -> None:
    stream.write(encode(answer))
    stream.flush()


def _send(stream: BinaryIO, frames: list[bytes]) -> None:
    if frames:
        stream.write(b"".join(frames))
        stream.flush()
        frames.clear()


class Functions:
    """The compiled functions of this process, and the requests on them."""

    def __init__(self, caps: Caps) -> None:
        self.caps = caps
        self.compiled: dict[tuple[str, int], Compiled | CompileError] = {}

    def answers(self, request: list[Any]) -> Iterator[list[Any]]:
        """The answers to a request: one, or one per call of a "calls" request (each as soon
        as its call returned)."""
        if request[0] != "calls":
            yield self.handle(request)
            return
        _, rid, key, language, source, entry, many = request
        for i, args in enumerate(many):
            answer = self.handle(["call", rid, key, language, source, entry, args])
            yield answer
            if answer[1] == "missing":
                return
            if answer[1] == "call" and answer[2] in HEAVY:
                # the function hit a cap: the host's breaker decides about the rest, which it
                # sends again (one at a time) if it wants them run
                for _ in range(len(many) - i - 1):
                    yield [rid, "skipped"]
                return

    def handle(self, request: list[Any]) -> list[Any]:
        op, rid = request[0], request[1]
        cpu = time.process_time()
        try:
            if op == "call":
                _, _, key, language, source, entry, args = request
                code = self._code((key[0], key[1]), language, source, entry)
                if code is None:
                    return [rid, "missing", f"{key[0]} v{key[1]} is not loaded"]
                return [rid, "ok", code.call(*args), time.process_time() - cpu]
            if op == "forget":
                for key in request[2]:
                    old = self.compiled.pop((key[0], key[1]), None)
                    if old is not None and not isinstance(old, CompileError):
                        old.close()
                return [rid, "ok", None, 0.0]
            if op in ("check", "trial"):
                language, source, entry = request[2:5]
                fresh = compile_function(language, source, entry, self.caps)
                try:
                    value = fresh.call(*request[5]) if op == "trial" else None
                finally:
                    fresh.close()
                return [rid, "ok", value, time.process_time() - cpu]
            raise ValueError(f"unknown request {op!r}")
        except CallError as exc:
            return [rid, "call", exc.kind, exc.message, time.process_time() - cpu]
        except CompileError as exc:
            return [rid, "compile", exc.message, exc.line, exc.column, time.process_time() - cpu]
        except Exception as exc:  # e.g. arguments the runtime cannot pass in: this call fails
            message = f"{type(exc).__name__}: {exc}"[:1000]
            return [rid, "call", "error", message, time.process_time() - cpu]

    def _code(self, key: tuple[str, int], language: str, source: str | None, entry: str) -> Any:
        code = self.compiled.get(key)
        if code is None:
            if source is None:
                return None
            try:
                code = compile_function(language, source, entry, self.caps)
            except CompileError as exc:
                code = exc
            self.compiled[key] = code
        if isinstance(code, CompileError):
            raise code
        return code


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    caps = Caps(time=float(args[0]), memory=int(args[1]))
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # the pipe carries answers only
    functions = Functions(caps)
    while True:
        request = _read(stdin)
        if request is None:
            return 0
        # the answers of a "calls" request go out together every FLUSH_EVERY seconds (the host
        # wakes once per write, not once per call; it still sees steady progress)
        pending: list[bytes] = []
        flushed = time.monotonic()
        try:
            for answer in functions.answers(request):
                pending.append(encode(answer))
                if time.monotonic() - flushed >= FLUSH_EVERY:
                    _send(stdout, pending)
                    flushed = time.monotonic()
            _send(stdout, pending)
        except Exception as exc:  # a malformed request: answered, never fatal
            _send(stdout, pending)
            _write(stdout, [request[1] if len(request) > 1 else 0, "call", "error", repr(exc), 0.0])


if __name__ == "__main__":
    sys.exit(main())
