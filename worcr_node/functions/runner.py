"""Calls the policy's functions at their hooks: compiled once per version, checked, contained.

The `PolicyWatcher` hands every new policy's functions to `FunctionRunner.set_functions`; code of
a (name, version) already compiled is kept, so a change to one function recompiles that one only.
Each hook method converts its inputs to plain values (`views.py`), calls the sandbox
(`sandbox.py`: CPU-time and memory caps per call), checks the result's type and range, and on any
failure returns the hook's documented fallback together with the error, which is also handed to
the error log (`errors.py`: PostgreSQL, `GET /api/v1/functions/{name}/errors`).

A function that keeps hitting its CPU or memory cap is *tripped* (`TRIP_AFTER` such failures
among its last `WINDOW` calls, or one call that ran `OVERRUN` times past the CPU cap, which the
engines check only every so many operations): its calls fail at once with kind "tripped" for
`TRIP_FOR` seconds, doubled for each trip in a row (at most `MAX_TRIP`), so a broken function
costs the node a few capped calls, not one per job. Calls run in the runner's `FunctionHost`
(`host.py`: a child process in a node, so no call holds the event loop); dispatch-time answers
are remembered per (function version, lane, worker class) (`known`, `answer`), so those calls
are rare.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from worcr_node.dispatch.rules import TagSet
from worcr_node.functions.host import SKIPPED_KIND, FunctionHost, InlineHost, Reply
from worcr_node.functions.model import Function, Hook
from worcr_node.functions.sandbox import CallError, Caps, CompileError, SandboxError

__all__ = [
    "CHECKS",
    "FALLBACKS",
    "PASSING",
    "TRIP_AFTER",
    "TRIP_FOR",
    "FunctionFailure",
    "FunctionRunner",
    "Outcome",
    "Recorder",
]

log = logging.getLogger(__name__)

TRIP_AFTER = 3  # timeouts or memory errors among the last WINDOW calls
WINDOW = 20
TRIP_FOR = 10.0  # seconds, doubled for each trip in a row
MAX_TRIP = 600.0
OVERRUN = 5  # a call that took this many times the CPU cap trips its function at once
MAX_ANSWERS = 200_000  # remembered dispatch-time answers (then forgotten all at once)
MAX_RECENT = 10_000  # answers for failures that may pass, kept for RECENT_FOR seconds
RECENT_FOR = 1.0  # (less than the dispatcher's doubt period: a doubtful verdict asks again)
PIPELINE = 4  # calls of one function in flight at once (1 while it is hitting its caps)
FIRST_CHUNK = 8  # calls sent together by `call_many` at first; doubled while all goes well
MAX_CHUNK = 128
PASSING = frozenset({"timeout", "memory", "tripped"})  # failures not remembered
MAX_FACTOR = 1e6
MAX_RETRY_DELAY = 30 * 86400.0
MAX_KEY = 256


@dataclass(frozen=True, slots=True)
class FunctionFailure:
    """One failed call: which function, and what went wrong."""

    function: str
    version: int
    hook: str
    kind: str  # error | timeout | memory | result | tripped | compile | missing
    message: str

    def __str__(self) -> str:
        return f"function {self.function!r} (v{self.version}, {self.hook}): {self.kind}: " \
               f"{self.message}"  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {"function": self.function, "version": self.version, "hook": self.hook,
                "kind": self.kind, "message": self.message, "at": time.time()}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Outcome:
    """A hook's answer: the value to use (the fallback when the call failed) and the failure."""

    value: Any
    failure: FunctionFailure | None = None
    seconds: float = 0.0


# (failure, job id or None, lane or None): where the error log takes failures
Recorder = Callable[[FunctionFailure, str | None, str | None], None]


class _Breaker:
    """Trips a function after `TRIP_AFTER` cap hits among its last `WINDOW` calls (so one that
    hits its cap on every other job trips too), or one far overrun. Each trip lasts twice the
    previous one, until `WINDOW` calls in a row go well."""

    __slots__ = ("one", "recent", "slots", "trips", "until")

    def __init__(self) -> None:
        self.recent: deque[bool] = deque(maxlen=WINDOW)  # True: the call hit a cap
        self.trips = 0
        self.until = 0.0  # tripped until (monotonic)
        # Calls in flight: a few at once (they queue up in the host), one at a time while
        # the function is suspect, so the breaker sees each capped call before the next is sent.
        self.slots = asyncio.Semaphore(PIPELINE)
        self.one = asyncio.Lock()

    @property
    def suspect(self) -> bool:
        return any(self.recent)

    def heavy_failure(self, overran: bool) -> None:
        """A call hit a cap; `overran`: it ran far past the CPU cap (an engine checks its cap
        only every so many operations: a loop of operations on huge values overruns it), so
        the function is tripped at once."""
        self.recent.append(True)
        if sum(self.recent) >= TRIP_AFTER or overran:
            self.recent.clear()
            self.until = time.monotonic() + min(MAX_TRIP, TRIP_FOR * 2**self.trips)
            self.trips += 1

    def ok(self) -> None:
        self.recent.append(False)
        if len(self.recent) == WINDOW and not any(self.recent):
            self.trips = 0


class FunctionRunner:
    def __init__(
        self,
        caps: Caps | None = None,
        record: Recorder | None = None,
        host: FunctionHost | None = None,
    ) -> None:
        self.caps = caps or Caps()
        self.record: Recorder = record or (lambda f, job, lane: None)
        self.host: FunctionHost = host or InlineHost(self.caps)
        self.functions: dict[str, Function] = {}
        self._hooks: set[Hook] = set()
        self._by_hook: dict[Hook, list[Function]] = {}
        self._breakers: dict[tuple[str, int], _Breaker] = {}
        # (name, version, hook, lane, worker class) -> answer, for weight, match and shed
        self._answers: dict[tuple[Any, ...], Outcome] = {}
        # answers not remembered (failures that may pass), kept a moment: (answer, until)
        self._recent: dict[tuple[Any, ...], tuple[Outcome, float]] = {}
        self._asking: dict[tuple[Any, ...], asyncio.Task[Outcome]] = {}
        self._unkeyed: set[asyncio.Task[Outcome]] = set()
        self._answered = asyncio.Event()
        self._answered_keys: set[tuple[Any, ...]] = set()
        self.calls = 0
        self.failures = 0

    # -- definitions -------------------------------------------------------------------------------

    def set_functions(self, functions: Iterable[Function]) -> None:
        """The functions of a new policy. Compiled code of unchanged versions is kept."""
        old = {f.key for f in self.functions.values()}
        self.functions = {f.name: f for f in functions}
        self._hooks = {f.hook for f in self.functions.values() if f.enabled}
        self._by_hook = {h: [f for f in sorted(self.functions.values(), key=lambda f: f.name)
                             if f.hook == h and f.enabled] for h in self._hooks}  # fmt: skip
        keep = {f.key for f in self.functions.values()}
        if any((k[0], k[1]) not in keep for k in self._answers):
            self._answers = {k: v for k, v in self._answers.items() if (k[0], k[1]) in keep}
        for key in [k for k in self._breakers if k not in keep]:
            del self._breakers[key]
        self.host.forget(old - keep)

    def for_jobs(self, hook: Hook, kind: str, tenant: str, tags: TagSet) -> list[Function]:
        """Enabled functions of a job hook (on_enqueue, retry) whose match selects the job, in
        name order."""
        return [f for f in self._by_hook.get(hook, ())
                if f.match.job_side(kind, tenant, tags) is None]  # fmt: skip

    def enabled(self, hook: Hook) -> list[Function]:
        """The enabled functions of a hook, in name order."""
        return self._by_hook.get(hook, [])

    def has(self, hook: Hook) -> bool:
        """Some enabled function serves `hook` (cheap: asked once per batch)."""
        return hook in self._hooks

    async def close(self) -> None:
        for task in [*self._asking.values(), *self._unkeyed]:
            task.cancel()
        await self.host.close()

    # -- calls -------------------------------------------------------------------------------------

    async def call(
        self,
        name: str,
        hook: Hook,
        args: tuple[Any, ...],
        check: Callable[[Any], Any],
        fallback: Any,
        job: str | None = None,
        lane: str | None = None,
        fn: Function | None = None,
    ) -> Outcome:
        """Call function `name` (or `fn`, for a trial) at `hook`; `check` turns its raw result
        into the hook's value or raises ValueError. Never raises."""
        fn = fn or self.functions.get(name)
        if fn is None or fn.hook != hook:
            return self._missing(name, hook, fn, fallback, job, lane)
        breaker = self._breaker(fn)
        async with breaker.slots:
            if not breaker.suspect:
                return await self._call(fn, breaker, args, check, fallback, job, lane)
            async with breaker.one:
                return await self._call(fn, breaker, args, check, fallback, job, lane)

    async def _call(
        self,
        fn: Function,
        breaker: _Breaker,
        args: tuple[Any, ...],
        check: Callable[[Any], Any],
        fallback: Any,
        job: str | None,
        lane: str | None,
    ) -> Outcome:
        now = time.monotonic()
        if breaker.until > now:
            failure = FunctionFailure(fn.name, fn.version, fn.hook, "tripped",
                              "kept hitting its CPU or memory cap; calls skipped for "
                              f"{breaker.until - now:.0f} s more")  # fmt: skip
            return self._failed(failure, fallback, 0.0, job, lane)
        self.calls += 1
        started = time.perf_counter()
        reply = await self.host.call(fn.key, fn.language, fn.source, fn.hook.value, args)
        self._forget_if_replaced(fn)
        return self.outcome(fn, reply, check, fallback, time.perf_counter() - started, job, lane)

    async def call_many(
        self,
        fn: Function,
        many: Sequence[tuple[Any, ...]],
        check: Callable[[Any], Any],
        fallback: Any,
        jobs: Sequence[str | None],
    ) -> list[Outcome]:
        """`call` of `fn` with each args of `many`, sent to the host together: in chunks of
        `FIRST_CHUNK` calls, doubled while the function does well, one call at a time while it
        is suspect (so a function that hits its caps costs a few capped calls, not a batch);
        once it is tripped, the rest fail at once. Never raises."""
        breaker = self._breaker(fn)
        outs: list[Outcome] = []
        size = FIRST_CHUNK
        async with breaker.slots:
            while len(outs) < len(many):
                if breaker.suspect:
                    async with breaker.one:
                        i = len(outs)
                        outs.append(await self._call(fn, breaker, many[i], check, fallback,
                                                     jobs[i], None))  # fmt: skip
                    continue
                now = time.monotonic()
                if breaker.until > now:  # (tripped by a concurrent call)
                    i = len(outs)
                    outs.append(await self._call(fn, breaker, many[i], check, fallback,
                                                 jobs[i], None))  # fmt: skip
                    continue
                part = list(many[len(outs) : len(outs) + size])
                started = time.perf_counter()
                replies = await self.host.call_many(fn.key, fn.language, fn.source,
                                                    fn.hook.value, part)  # fmt: skip
                each = (time.perf_counter() - started) / len(part)
                for reply in replies:
                    if isinstance(reply.error, CallError) and reply.error.kind == SKIPPED_KIND:
                        continue  # not run: asked again below, one at a time
                    self.calls += 1
                    outs.append(self.outcome(fn, reply, check, fallback, each, jobs[len(outs)]))
                size = min(MAX_CHUNK, size * 2)
        self._forget_if_replaced(fn)
        return outs

    def _forget_if_replaced(self, fn: Function) -> None:
        """`fn` was replaced while its calls waited: the host may have compiled it again for
        them, and nothing else would free it."""
        current = self.functions.get(fn.name)
        if current is None or current.key != fn.key:
            self.host.forget([fn.key])

    def _breaker(self, fn: Function) -> _Breaker:
        found = self._breakers.get(fn.key)
        if found is None:
            found = self._breakers[fn.key] = _Breaker()
        return found

    def outcome(
        self,
        fn: Function,
        reply: Reply,
        check: Callable[[Any], Any],
        fallback: Any,
        seconds: float,
        job: str | None = None,
        lane: str | None = None,
    ) -> Outcome:
        """A host's reply as the hook's answer (checked; the fallback on failure, recorded)."""
        hook = fn.hook
        breaker = self._breaker(fn)
        error = reply.error
        if isinstance(error, CompileError):
            failure = FunctionFailure(fn.name, fn.version, hook, "compile", str(error))
        elif isinstance(error, CallError):
            failure = FunctionFailure(fn.name, fn.version, hook, error.kind, error.message)
            if error.kind in ("timeout", "memory"):
                # CPU time, like the cap (a loaded machine stretches wall time, not this)
                breaker.heavy_failure(reply.cpu > OVERRUN * self.caps.time)
        else:
            try:
                value = check(reply.value)
            except (ValueError, TypeError, SandboxError) as exc:
                failure = FunctionFailure(fn.name, fn.version, hook, "result", str(exc))
            else:
                breaker.ok()
                return Outcome(value, None, seconds)
        return self._failed(failure, fallback, seconds, job, lane)

    def _missing(
        self,
        name: str,
        hook: Hook,
        fn: Function | None,
        fallback: Any,
        job: str | None,
        lane: str | None,
    ) -> Outcome:
        what = "does not exist" if fn is None else f"is a {fn.hook} function"
        failure = FunctionFailure(name, 0, hook, "missing", f"{name!r} {what}")
        return self._failed(failure, fallback, 0.0, job, lane)

    def _failed(
        self,
        failure: FunctionFailure,
        fallback: Any,
        seconds: float,
        job: str | None,
        lane: str | None,
    ) -> Outcome:
        self.failures += 1
        try:
            self.record(failure, job, lane)
        except Exception:  # the error log must never break a hook
            log.exception("could not record a function failure")
        return Outcome(fallback, failure, seconds)

    # -- hooks -------------------------------------------------------------------------------------

    # Dispatch-time hooks (weight, match, shed): an answer depends only on the function version,
    # the lane (its id names kind, tenant, tags and weight) and the worker class, so it is
    # remembered across policy versions; a change elsewhere in the policy does not call every
    # function again for every (lane, class). The dispatcher reads answers synchronously
    # (`known`): a missing one is asked in the background, and `answered()` wakes the dispatcher
    # when it comes. Failures that may pass (timeout, memory, tripped) are not remembered: such
    # an answer is kept for `RECENT_FOR` seconds only, so the pair is asked again later.

    def answer_key(self, name: str, hook: Hook, lane: str | None,
                   worker: Mapping[str, Any] | None) -> tuple[Any, ...] | None:  # fmt: skip
        """What an answer is remembered by (None: not remembered)."""
        fn = self.functions.get(name)
        if lane is None or fn is None:
            return None
        wkey = None if worker is None else (tuple(worker["kinds"]), tuple(worker["tags"]))
        return (name, fn.version, hook, lane, wkey)

    def known(
        self,
        name: str,
        hook: Hook,
        args: tuple[Any, ...],
        lane: str | None,
        worker: Mapping[str, Any] | None,
    ) -> Outcome | None:
        """The answer if there is one now; else None, and it is asked in the background (its
        key is among those `answered()` returns once it came)."""
        fn = self.functions.get(name)
        if fn is None or fn.hook != hook:  # answered at once, as `call` would
            return self._missing(name, hook, fn, FALLBACKS[hook], None, lane)
        key = self.answer_key(name, hook, lane, worker)
        out = self._cached(key)
        if out is None:
            self._ask(key, name, hook, args, lane)
        return out

    def _cached(self, key: tuple[Any, ...] | None) -> Outcome | None:
        """The remembered answer of `key`, or the recent one of a failure that may pass."""
        if key is None:
            return None
        out = self._answers.get(key)
        if out is not None:
            return out
        found = self._recent.get(key)
        if found is None:
            return None
        if found[1] < time.monotonic():
            del self._recent[key]
            return None
        return found[0]

    async def answer(
        self,
        name: str,
        hook: Hook,
        args: tuple[Any, ...],
        lane: str | None,
        worker: Mapping[str, Any] | None,
    ) -> Outcome:
        """The answer, asked now if it is not known (and remembered like any other)."""
        key = self.answer_key(name, hook, lane, worker)
        out = self._cached(key)
        if out is not None:
            return out
        return await asyncio.shield(self._ask(key, name, hook, args, lane))

    def _ask(
        self, key: tuple[Any, ...] | None, name: str, hook: Hook, args: tuple[Any, ...],
        lane: str | None,
    ) -> asyncio.Task[Outcome]:  # fmt: skip
        task = self._asking.get(key) if key is not None else None
        if task is None:
            task = asyncio.get_running_loop().create_task(self._asked(key, name, hook, args, lane))
            if key is not None:
                self._asking[key] = task
            else:  # (kept referenced until done)
                self._unkeyed.add(task)
                task.add_done_callback(self._unkeyed.discard)
        return task

    async def _asked(
        self, key: tuple[Any, ...] | None, name: str, hook: Hook, args: tuple[Any, ...],
        lane: str | None,
    ) -> Outcome:  # fmt: skip
        try:
            out = await self.call(name, hook, args, CHECKS[hook], FALLBACKS[hook], lane=lane)
        finally:
            if key is not None:
                self._asking.pop(key, None)
        if key is not None:
            if out.failure is None or out.failure.kind not in PASSING:
                if len(self._answers) >= MAX_ANSWERS:
                    self._answers.clear()
                self._answers[key] = out
            else:
                if len(self._recent) >= MAX_RECENT:
                    self._recent.clear()
                self._recent[key] = (out, time.monotonic() + RECENT_FOR)
            self._answered_keys.add(key)
            self._answered.set()
        return out

    async def answered(self) -> set[tuple[Any, ...]]:
        """The keys of the answers that came since the last call (waits for one)."""
        await self._answered.wait()
        self._answered.clear()
        keys, self._answered_keys = self._answered_keys, set()
        return keys

    async def weight(self, name: str, job: Mapping[str, Any], worker: Mapping[str, Any],
                     lane: str | None = None) -> Outcome:  # fmt: skip
        """A weight factor; fallback 1 (the rule has no effect)."""
        return await self.answer(name, Hook.WEIGHT, (job, worker), lane, worker)

    async def match(self, name: str, job: Mapping[str, Any], worker: Mapping[str, Any],
                    lane: str | None = None) -> Outcome:  # fmt: skip
        """True: allowed; fallback False (forbidden: a broken match rule fails closed, the jobs
        wait for the fix rather than go to the wrong workers)."""
        return await self.answer(name, Hook.MATCH, (job, worker), lane, worker)

    async def shed(self, name: str, job: Mapping[str, Any], lane: str | None = None) -> Outcome:
        """ "hold", "discard" or None; fallback None (a broken function sheds nothing)."""
        return await self.answer(name, Hook.SHED, (job,), lane, None)

    # Job-time hooks: asked for each job.

    async def limit_key(self, name: str, job: Mapping[str, Any], job_id: str | None) -> Outcome:
        """(key, limit or None), or None if the limit does not apply to the job; fallback
        ("!error", None): every job whose key failed shares one key, still limited."""
        return await self.call(name, Hook.LIMIT_KEY, (job,), check_limit_key,
                               FALLBACKS[Hook.LIMIT_KEY], job=job_id)  # fmt: skip

    async def on_enqueue_many(
        self, fn: Function, jobs: Sequence[Mapping[str, Any]], job_ids: Sequence[str]
    ) -> list[Outcome]:
        """`on_enqueue` for the jobs of a batch, sent together (`call_many`)."""
        return await self.call_many(fn, [(job,) for job in jobs], check_enqueue,
                                    FALLBACKS[Hook.ON_ENQUEUE], [*job_ids])  # fmt: skip

    async def on_enqueue(self, fn: Function, job: Mapping[str, Any], job_id: str) -> Outcome:
        """The function's raw answer, checked by the enqueue path (functions/enqueue.py);
        fallback None (the job as it was)."""
        return await self.call(fn.name, Hook.ON_ENQUEUE, (job,), check_enqueue,
                               FALLBACKS[Hook.ON_ENQUEUE], job=job_id, fn=fn)  # fmt: skip


# -- result checks (pure; raise ValueError with what was expected) ---------------------------------


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_factor(value: Any) -> float:
    if not _number(value) or not math.isfinite(value) or not 0 < value <= MAX_FACTOR:
        raise ValueError(f"expected a number > 0 and <= {MAX_FACTOR:g}, got {_show(value)}")
    return float(value)


def check_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_show(value)}")
    return value


def check_shed(value: Any) -> str | None:
    if value is None or value is False:
        return None
    if value in ("hold", "discard"):
        return str(value)
    raise ValueError(f'expected "hold", "discard" or nothing, got {_show(value)}')


def check_limit_key(value: Any) -> tuple[str, int | None] | None:
    if value is None or value is False:
        return None
    limit = None
    if isinstance(value, dict):
        unknown = set(value) - {"key", "limit"}
        if unknown:
            raise ValueError(f"unknown field(s) {sorted(unknown)}: expected {{key, limit}}")
        limit = value.get("limit")
        if limit is not None and (
            not isinstance(limit, int | float) or isinstance(limit, bool)
            or not 1 <= limit <= 1_000_000_000 or limit != int(limit)
        ):  # fmt: skip
            raise ValueError(f"limit: expected an integer from 1 to 1e9, got {_show(limit)}")
        value = value.get("key")
    if _number(value) and not isinstance(value, float):
        value = str(value)
    if not isinstance(value, str) or not value or len(value) > MAX_KEY:
        raise ValueError(f"expected a key (a string of 1 to {MAX_KEY} characters) or "
                         f"{{key, limit}}, got {_show(value)}")  # fmt: skip
    if not value.isprintable():
        raise ValueError(f"a key must not contain control characters, got {_show(value)}")
    return value, None if limit is None else int(limit)


def check_retry(value: Any) -> float | bool | None:
    if value is None or value is False:
        return None if value is None else False
    if not _number(value) or not math.isfinite(value) or not 0 <= value <= MAX_RETRY_DELAY:
        raise ValueError(f"expected seconds from 0 to {MAX_RETRY_DELAY:g}, false to give up, "
                         f"or nothing for the job's backoff; got {_show(value)}")  # fmt: skip
    return float(value)


def check_enqueue(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"expected the job (changed), a table/object of changes or nothing; "
                         f"got {_show(value)}")  # fmt: skip
    return value


# What each hook uses when its function fails (documented in docs/functions.md).
FALLBACKS: dict[Hook, Any] = {
    Hook.WEIGHT: 1.0,  # the rule has no effect
    Hook.MATCH: False,  # forbidden: a broken match rule fails closed
    Hook.SHED: None,  # nothing is shed
    Hook.LIMIT_KEY: ("!error", None),  # one shared key, still limited
    Hook.RETRY: None,  # the job's backoff
    Hook.ON_ENQUEUE: None,  # the job as it was
}
CHECKS: dict[Hook, Callable[[Any], Any]] = {
    Hook.WEIGHT: check_factor,
    Hook.MATCH: check_bool,
    Hook.SHED: check_shed,
    Hook.LIMIT_KEY: check_limit_key,
    Hook.RETRY: check_retry,
    Hook.ON_ENQUEUE: check_enqueue,
}


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
