"""Where function calls run: a separate process (production) or this one (unit tests, benches).

`FunctionRunner` (runner.py) decides what to call and what an answer means; a `FunctionHost`
runs the call. Both hosts answer the same requests (`functions/child.py` holds their logic):

- `ProcessHost`: the node's. A child process (`python -m worcr_node.functions.child`), started
  on the first call, runs the calls one after another while the node's event loop goes on:
  a function can hold the loop for no longer than it takes to write a frame and read one. A
  call still running `kill_after` seconds after it started (the sandboxes' own CPU caps stop
  well-behaved overruns far sooner; this catches what they miss, e.g. one engine operation on
  a huge string) gets the child killed: that call fails with kind "timeout", the calls queued
  behind it go to a new child, which recompiles what it is asked for. A child that dies by
  itself (a crash in an engine) fails the call it was running the same way ("error"); so no
  function can take the node down with it.
- `InlineHost`: the same requests answered synchronously in this process, for tests and
  benchmarks that measure the sandboxes themselves.

An answer is a `Reply`: the value, or the `CallError` / `CompileError`, and the CPU seconds the
call took in the process that ran it (the breaker's measure).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgpack

from worcr_node.functions.child import Functions, encode
from worcr_node.functions.sandbox import CallError, Caps, CompileError

__all__ = ["SKIPPED", "SKIPPED_KIND", "FunctionHost", "InlineHost", "ProcessHost", "Reply"]

log = logging.getLogger(__name__)

_HEAD = struct.Struct(">I")
Key = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Reply:
    value: Any = None
    error: CallError | CompileError | None = None
    cpu: float = 0.0  # CPU seconds in the process that ran the call


class FunctionHost(Protocol):
    async def call(self, key: Key, language: str, source: str, entry: str,
                   args: tuple[Any, ...]) -> Reply: ...  # fmt: skip

    async def call_many(self, key: Key, language: str, source: str, entry: str,
                        many: list[tuple[Any, ...]]) -> list[Reply]: ...  # fmt: skip

    async def check(self, language: str, source: str, entry: str) -> Reply: ...

    async def trial(self, language: str, source: str, entry: str,
                    args: tuple[Any, ...]) -> Reply: ...  # fmt: skip

    def forget(self, keys: Iterable[Key]) -> None: ...

    async def close(self) -> None: ...


SKIPPED_KIND = "skipped"  # a call of a batch not run: one before it hit a cap
SKIPPED = Reply(None, CallError(SKIPPED_KIND, "not run: an earlier call of its batch hit a cap"))


def _reply(answer: list[Any]) -> Reply:
    status = answer[1]
    if status == "ok":
        return Reply(answer[2], None, float(answer[3]))
    if status == "call":
        return Reply(None, CallError(answer[2], answer[3]), float(answer[4]))
    if status == "compile":
        return Reply(None, CompileError(answer[2], answer[3], answer[4]), float(answer[5]))
    if status == "skipped":  # a call of a batch not run: one before it hit a cap
        return SKIPPED
    return Reply(None, CallError("error", f"unexpected answer from the function process: {status}"))


class InlineHost:
    """Calls run here, synchronously (the caller's thread): for tests and benchmarks. Requests
    and answers go through msgpack as they do to and from the function process, so both hosts
    hand the runner the same values."""

    def __init__(self, caps: Caps | None = None) -> None:
        self.functions = Functions(caps or Caps())

    def _answers(self, request: list[Any]) -> list[Reply]:
        request = msgpack.unpackb(msgpack.packb(request, use_bin_type=True), raw=False,
                                  strict_map_key=False)  # fmt: skip
        return [_reply(msgpack.unpackb(encode(a)[_HEAD.size :], raw=False, strict_map_key=False))
                for a in self.functions.answers(request)]  # fmt: skip

    def _handle(self, request: list[Any]) -> Reply:
        return self._answers(request)[0]

    def call_now(self, key: Key, language: str, source: str, entry: str,
                 args: tuple[Any, ...]) -> Reply:  # fmt: skip
        return self._handle(["call", 0, list(key), language, source, entry, list(args)])

    async def call(self, key: Key, language: str, source: str, entry: str,
                   args: tuple[Any, ...]) -> Reply:  # fmt: skip
        return self.call_now(key, language, source, entry, args)

    async def call_many(self, key: Key, language: str, source: str, entry: str,
                        many: list[tuple[Any, ...]]) -> list[Reply]:  # fmt: skip
        return self._answers(["calls", 0, list(key), language, source, entry,
                              [list(a) for a in many]])  # fmt: skip

    async def check(self, language: str, source: str, entry: str) -> Reply:
        return self._handle(["check", 0, language, source, entry])

    async def trial(self, language: str, source: str, entry: str,
                    args: tuple[Any, ...]) -> Reply:  # fmt: skip
        return self._handle(["trial", 0, language, source, entry, list(args)])

    def forget(self, keys: Iterable[Key]) -> None:
        self.functions.handle(["forget", 0, [list(k) for k in keys]])

    async def close(self) -> None:
        self.forget(list(self.functions.compiled))


@dataclass(slots=True)
class _Request:
    op: str
    # after [op, id]; "call": key, language, source, entry, args; "calls": the same with a list
    # of args (one call each)
    parts: list[Any]
    future: asyncio.Future[Any] = field(default_factory=lambda: _loop().create_future())
    results: list[Reply] = field(default_factory=list)  # "calls": the calls answered so far
    serial: bool = False  # "calls": sent one call at a time (after a process was lost)

    @property
    def key(self) -> Key | None:
        return (self.parts[0][0], self.parts[0][1]) if self.op in ("call", "calls") else None

    @property
    def left(self) -> int:
        """Answers still to come."""
        return len(self.parts[4]) - len(self.results) if self.op == "calls" else 1

    def frame(self, rid: int, with_source: bool) -> bytes:
        parts = self.parts
        if self.op in ("call", "calls") and not with_source:
            parts = [parts[0], parts[1], None, *parts[3:]]
        if self.op == "calls":  # the calls not answered yet (after a restart: the rest)
            done = len(self.results)
            parts = [*parts[:4], parts[4][done : done + 1 if self.serial else None]]
        body: bytes = msgpack.packb([self.op, rid, *parts], use_bin_type=True)
        return _HEAD.pack(len(body)) + body


def _loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def _settle(request: _Request, reply: Reply) -> None:
    """The request's last answer: `reply` (for "calls", the last call's, after the others)."""
    if request.op == "calls":
        request.results.append(reply)
        if request.left > 0:
            return
        value: Any = list(request.results)
    else:
        value = reply
    if not request.future.done():  # (its caller may have given up)
        request.future.set_result(value)


def _abandon(request: _Request, reply: Reply) -> None:
    """Every answer still to come is `reply`."""
    while request.left > 0 and not request.future.done():
        _settle(request, reply)


def _failed(message: str, kind: str = "error", cpu: float = 0.0) -> Reply:
    return Reply(None, CallError(kind, message), cpu)


class ProcessHost:
    """Calls run in a child process, one at a time; see the module docstring."""

    def __init__(self, caps: Caps | None = None, kill_after: float | None = None) -> None:
        self.caps = caps or Caps()
        # wall seconds one call may run before its process is killed
        self.kill_after = kill_after if kill_after is not None else max(1.0, 20 * self.caps.time)
        self.kills = 0  # children killed for a call that ran too long
        self.deaths = 0  # children that died by themselves
        self._proc: asyncio.subprocess.Process | None = None
        self._loaded: set[Key] = set()  # keys whose source the current child was sent
        self._queue: dict[int, _Request] = {}  # sent and not answered, oldest first
        self._since = 0.0  # monotonic time the oldest request started running
        self._next_id = 0
        self._lock = asyncio.Lock()
        self._busy = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._killed: int | None = None  # the request whose call got its child killed
        self._resending: list[_Request] = []  # taken from a lost child, not sent again yet
        self._outbox: list[bytes] = []  # frames to write at the end of this turn of the loop
        self._closed = False

    @property
    def pid(self) -> int | None:
        """The running child's process id (None before the first call)."""
        return None if self._proc is None else self._proc.pid

    # -- requests ------------------------------------------------------------------------------

    async def call(self, key: Key, language: str, source: str, entry: str,
                   args: tuple[Any, ...]) -> Reply:  # fmt: skip
        reply: Reply = await self._ask(
            _Request("call", [list(key), language, source, entry, list(args)])
        )
        return reply

    async def call_many(self, key: Key, language: str, source: str, entry: str,
                        many: list[tuple[Any, ...]]) -> list[Reply]:  # fmt: skip
        """The same function called with each args, in one request (one answer per call, so the
        watchdog still times each call)."""
        if not many:
            return []
        request = _Request("calls", [list(key), language, source, entry, [list(a) for a in many]])
        answer = await self._ask(request)
        return answer if isinstance(answer, list) else [answer] * len(many)

    async def check(self, language: str, source: str, entry: str) -> Reply:
        reply: Reply = await self._ask(_Request("check", [language, source, entry]))
        return reply

    async def trial(self, language: str, source: str, entry: str,
                    args: tuple[Any, ...]) -> Reply:  # fmt: skip
        reply: Reply = await self._ask(_Request("trial", [language, source, entry, list(args)]))
        return reply

    def forget(self, keys: Iterable[Key]) -> None:
        gone = [k for k in keys if k in self._loaded]
        if gone and self._proc is not None and not self._closed:
            self._loaded.difference_update(gone)
            with contextlib.suppress(RuntimeError):
                self._send(_Request("forget", [[list(k) for k in gone]]))

    async def _ask(self, request: _Request) -> Any:
        """The request's answer: a Reply, or for "calls" a list of them (a Reply if it could
        not be sent at all)."""
        if self._closed:
            return _failed("the node is stopping")
        try:
            if self._proc is None:
                async with self._lock:
                    if self._proc is None:
                        await self._start()
            self._send(request)
        except Exception as exc:  # no process could be started, a request that cannot be sent
            log.error("function process: %s", exc)
            return _failed(f"the function process: {exc}")
        return await request.future

    def _send(self, request: _Request) -> None:
        if self._proc is None or self._proc.stdin is None:
            raise RuntimeError("the function process is not running")
        rid = self._next_id + 1
        with_source = True
        key = request.key
        if key is not None:
            with_source = key not in self._loaded
        frame = request.frame(rid, with_source)  # first: a request that cannot be packed
        self._next_id = rid  # is refused before it is queued
        if key is not None:
            self._loaded.add(key)
        if not self._queue:
            self._since = time.monotonic()
            self._busy.set()
        self._queue[rid] = request
        # frames sent in one turn of the loop (a batch's calls) go out in one write
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush, self._proc)
        self._outbox.append(frame)

    def _flush(self, proc: asyncio.subprocess.Process) -> None:
        frames, self._outbox = self._outbox, []
        if proc is self._proc and proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.write(b"".join(frames))

    # -- the child -----------------------------------------------------------------------------

    async def _start(self) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worcr_node.functions.child",
            repr(self.caps.time), str(self.caps.memory),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 26,
        )  # fmt: skip
        if self._closed:  # the node stopped meanwhile
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise RuntimeError("the node is stopping")
        self._proc = proc
        self._loaded.clear()
        self._tasks = [
            asyncio.create_task(self._read(proc), name="function-host-read"),
            asyncio.create_task(self._watch(proc), name="function-host-watch"),
        ]

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        try:
            while True:
                head = await proc.stdout.readexactly(_HEAD.size)
                (size,) = _HEAD.unpack(head)
                answer = msgpack.unpackb(await proc.stdout.readexactly(size), raw=False,
                                         strict_map_key=False)  # fmt: skip
                self._answered(answer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except Exception:  # a frame that makes no sense: this process is not to be trusted
            log.exception("function process: bad answer; replacing the process")
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        if not self._closed:
            await self._lost(proc)

    def _answered(self, answer: list[Any]) -> None:
        rid = answer[0]
        request = self._queue.get(rid)
        self._since = time.monotonic()  # the next call (of this request or the next) starts
        if request is None:
            return
        missing = answer[1] == "missing"
        if missing and request.future.done():  # its caller gave up: not sent again
            del self._queue[rid]
            if not self._queue:
                self._busy.clear()
            return
        if missing or request.left <= 1 or request.serial:
            del self._queue[rid]
            if not self._queue:
                self._busy.clear()
        if missing:  # sent before a restart without its source: again, with it
            key = request.key
            if key is not None:
                self._loaded.discard(key)
            self._send(request)
            return
        _settle(request, _reply(answer))
        if request.serial and request.left > 0:
            self._send(request)  # its next call

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        """Kill the child when one call runs longer than `kill_after`."""
        while proc.returncode is None:
            await self._busy.wait()
            if not self._queue:
                continue
            head, since = next(iter(self._queue)), self._since
            await asyncio.sleep(max(0.0, since + self.kill_after - time.monotonic()))
            if self._queue and next(iter(self._queue)) == head and self._since == since:
                self._killed = head
                self.kills += 1
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                return

    async def _lost(self, proc: asyncio.subprocess.Process) -> None:
        """The child is gone: fail the call it was running, send the rest to a new one. Whatever
        happens meanwhile (the node stops, no new process starts), no request is left waiting."""
        code = await proc.wait()
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        queue, self._queue = self._queue, {}
        self._busy.clear()
        if self._proc is proc:
            self._proc = None
        killed, self._killed = self._killed, None
        if queue:
            rid, running = next(iter(queue.items()))
            del queue[rid]
            if rid == killed:
                reply = _failed(f"still running after {self.kill_after:g} s: its process was "
                                "killed", "timeout", self.kill_after)  # fmt: skip
            else:
                self.deaths += 1
                reply = _failed(f"the function process died (exit code {code}) while running "
                                "this call")  # fmt: skip
                log.error("the function process died (exit code %s) while running a %s",
                          code, running.op)  # fmt: skip
            if running.op == "calls" and running.left > 1 and not running.serial:
                # Which of its calls was running is not known (the process writes a batch's
                # answers a few at a time): its calls not answered go to the next process one
                # at a time, and the guilty one fails then, alone.
                running.serial = True
            else:
                _settle(running, reply)  # its other calls (if any) go to the next process
            if running.left > 0:
                queue = {rid: running, **queue}
        else:
            self.deaths += 1
            log.error("the function process exited (code %s)", code)
        self._resending = rest = [r for r in queue.values()
                                  if r.op != "forget" and not r.future.done()]  # fmt: skip
        sent: list[_Request] = []
        try:
            if rest and not self._closed:
                async with self._lock:
                    if self._proc is None:
                        await self._start()
                for r in rest:
                    self._send(r)
                    sent.append(r)
        except Exception as exc:
            log.error("function process: could not start a new one: %s", exc)
        finally:
            self._resending = []
            for r in rest[len(sent) :]:  # not sent: the node stopped, or no process
                _abandon(r, _failed("the function process is not running"))

    async def close(self) -> None:
        self._closed = True
        proc, self._proc = self._proc, None
        for task in self._tasks:
            task.cancel()
        for request in [*self._queue.values(), *self._resending]:
            _abandon(request, _failed("the node is stopping"))
        self._queue.clear()
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 2.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
