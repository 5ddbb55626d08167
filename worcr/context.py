"""What a job handler sees and how it is called: `JobContext`, argument binding, failure reports.

A handler is called as `fn(ctx, *args)` when the job's args are a list, `fn(ctx, **args)` when
they are a map with string keys, and `fn(ctx, args)` otherwise. An exception becomes a `fail`
report: `"{Type}: {message}"` plus the traceback, both cut to the protocol limits, retryable
unless the exception is `worcr.Permanent` or says `retryable = False`.

`JobContext` is built for every job on the worker's hot path, so it is a slotted object whose
logger and reporting channel (`worcr.job_life`: checkpoints, progress, log lines) are made only
when first used.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from worcr.job_life import JobReports
from worcr.limits import Grant, NodeLink, acquire
from worcr.wire import Limits

__all__ = [
    "CancelFlag",
    "JobContext",
    "argument_mismatch",
    "describe_exception",
    "invoke",
    "is_retryable",
    "truncate_backtrace",
]

LIMITS = Limits()  # defaults are readable on an instance only: Limits has __slots__

job_log = logging.getLogger("worcr.job")

_flag_lock = threading.Lock()


class CancelFlag:
    """Set when the job should stop: the node cancelled it, or the worker is yielding it.

    Reads like `threading.Event`: `is_set()` and `wait(timeout)` from handler threads,
    `await flag.wait_async()` from async handlers (which are also cancelled outright). Only the
    worker's event loop sets it. Nothing is allocated until somebody waits.
    """

    __slots__ = ("_event", "_is_set", "_waiters")

    def __init__(self) -> None:
        self._is_set = False
        self._event: threading.Event | None = None
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._is_set

    def __bool__(self) -> bool:
        return self._is_set

    def set(self) -> None:
        """Set the flag (worker event-loop thread only) and wake every waiter."""
        self._is_set = True  # published before the event is read: see wait()
        event = self._event
        if event is not None:
            event.set()
        waiters, self._waiters = self._waiters, None
        for fut in waiters or ():
            if not fut.done():
                fut.set_result(None)

    def wait(self, timeout: float | None = None) -> bool:
        """Block the calling thread until set or `timeout`; returns whether it is set.

        Never call it from the event loop thread (use `wait_async`).
        """
        if self._is_set:
            return True
        with _flag_lock:
            if self._event is None:
                self._event = threading.Event()
        # set() writes _is_set before reading _event, so either it sees our event or we see it set.
        if self._is_set:
            return True
        return self._event.wait(timeout)

    async def wait_async(self) -> None:
        """Wait on the worker's event loop until the flag is set."""
        if self._is_set:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(fut)
        await fut


class JobContext:
    """The job being run, passed as the first argument of every handler.

    Attributes: `id`, `kind`, `args`, `tags`, `tenant`, `attempt` (1 for the first run),
    `max_attempts`, `token` (the fencing token of this attempt), `reserve_for` (lease seconds),
    `enqueued_at` (Unix seconds), `checkpoints` (the latest value of each named checkpoint, as
    the last attempt left them; empty on a first run), `cancelled` (a `CancelFlag`, also set
    when the node asks the job to yield), `yield_requested`, and `logger`.
    """

    __slots__ = (
        "_abandoned",
        "_link",
        "_logger",
        "_loop",
        "_reports",
        "_started",
        "_task",
        "_yield_requested",
        "args",
        "attempt",
        "cancelled",
        "checkpoints",
        "enqueued_at",
        "id",
        "kind",
        "max_attempts",
        "reserve_for",
        "tags",
        "tenant",
        "token",
    )

    def __init__(
        self,
        id: str,
        token: int,
        kind: str,
        args: Any = None,
        tags: Sequence[str] = (),
        tenant: str = "default",
        attempt: int = 1,
        max_attempts: int = 1,
        reserve_for: float = 60.0,
        enqueued_at: float = 0.0,
        checkpoints: dict[str, Any] | None = None,
    ) -> None:
        self.id = id
        self.token = token
        self.kind = kind
        self.args = args
        self.tags = tags
        self.tenant = tenant
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.reserve_for = reserve_for
        self.enqueued_at = enqueued_at
        self.checkpoints: dict[str, Any] = checkpoints if checkpoints is not None else {}
        self.cancelled = CancelFlag()
        self._yield_requested = False
        self._reports: JobReports | None = None
        self._logger: logging.LoggerAdapter[logging.Logger] | None = None
        # Worker bookkeeping: the asyncio task of an async handler; whether the job left a
        # local slot; whether its outcome must be dropped (cancelled by the node or yielded).
        self._task: asyncio.Task[None] | None = None
        self._started = False
        self._abandoned = False
        self._link: NodeLink | None = None  # set by the executor: requests to the node
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- checkpoints, progress, logs ---------------------------------------------------------------

    @property
    def yield_requested(self) -> bool:
        """The node asked this job to yield (its maximum run time is up) or the worker is shutting
        down: at the next safe point (the last item's checkpoint answered), `raise worcr.Yield`.
        An async handler that does not is cancelled at an await after the worker's
        `yield_timeout` (at shutdown, after `shutdown_timeout`)."""
        return self._yield_requested

    async def checkpoint(self, name: str, value: Any) -> None:
        """Store `value` under `name`; returns once it is durable. The next attempt of this job
        (after a crash, a yield, a retry) finds it in `ctx.checkpoints`. `None` removes it."""
        await self.checkpoint_many({name: value})

    async def checkpoint_many(self, values: Mapping[str, Any]) -> None:
        """Store several checkpoints at once (one durable write)."""
        await self._channel().checkpoint(values)
        for name, value in values.items():
            if value is None:
                self.checkpoints.pop(name, None)
            else:
                self.checkpoints[name] = value

    def checkpoint_sync(self, name: str, value: Any) -> None:
        """`checkpoint` for handlers that are plain functions (they run in worker threads)."""
        self._run_sync(self.checkpoint(name, value))

    async def progress(self, name: str, current: float, total: float | None = None) -> None:
        """Set the progress counter `name` to `current` (of `total`). Returns at once: only the
        latest value of each counter is sent, and it is stored before the job's end is."""
        self._channel().progress(name, current, total)

    def progress_sync(self, name: str, current: float, total: float | None = None) -> None:
        """`progress` from a handler thread (returns at once too)."""
        self._call_soon(lambda: self._channel().progress(name, current, total))

    def log(self, message: str, level: str = "info") -> None:
        """Send a line to the job's log on the node (stored per attempt, streamed to watchers).
        Callable from async handlers and handler threads alike; returns at once. Levels: debug,
        info, warning, error, critical, stdout, stderr."""
        at = time.time()
        self._call_soon(lambda: self._channel().log(level, str(message), at))

    def _channel(self) -> JobReports:
        if self._reports is None:
            self._reports = JobReports(self._require_link(), self.id, self.token)
        return self._reports

    def _call_soon(self, fn: Callable[[], None]) -> None:
        loop = self._loop
        if loop is None:
            raise RuntimeError("this job context is not attached to a running worker")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            fn()
        else:
            loop.call_soon_threadsafe(fn)

    # -- rate limits ------------------------------------------------------------------------------

    async def acquire(
        self, limit: str, key: str | None = None, units: int = 1, *, wait: float | None = None
    ) -> Grant:
        """Take `units` of the rate limit named `limit` (for `key`, or the key the limit's
        template computes from this job), waiting until the node grants them; raises
        `LimitTimeout` after `wait` seconds (None: as long as it takes). Units of a concurrency
        limit are held until the job ends (or `release`); others are spent."""
        return await acquire(self._require_link(), self._ref(), limit, key, units, wait)

    async def try_acquire(self, limit: str, key: str | None = None, units: int = 1) -> Grant:
        """Ask once: the `Grant` says granted, or how long to wait (`retry_after`)."""
        params = dict(self._ref(), limit=limit, units=units)
        if key is not None:
            params["key"] = key
        return Grant.from_wire(await self._require_link().request("acquire", params))

    async def release(self, limit: str, key: str | None = None, units: int = 1) -> int:
        """Give concurrency units back before the job ends; returns how many were held. Not
        repeated after a lost connection (raises ConnectionClosed): the units come back with
        the job's end anyway."""
        params = dict(self._ref(), limit=limit, units=units)
        if key is not None:
            params["key"] = key
        answer = await self._require_link().request("release", params, resend=False)
        return int(answer.get("released", 0)) if isinstance(answer, dict) else 0

    def acquire_sync(
        self, limit: str, key: str | None = None, units: int = 1, *, wait: float | None = None
    ) -> Grant:
        """`acquire` for handlers that are plain functions (they run in worker threads)."""
        grant: Grant = self._run_sync(self.acquire(limit, key, units, wait=wait))
        return grant

    def release_sync(self, limit: str, key: str | None = None, units: int = 1) -> int:
        released: int = self._run_sync(self.release(limit, key, units))
        return released

    def _run_sync(self, coro: Any) -> Any:
        if self._loop is None:
            coro.close()
            raise RuntimeError("this job context is not attached to a running worker")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:  # waiting here would block the loop that must answer
            coro.close()
            raise RuntimeError(
                "the *_sync methods are for handlers that are plain functions; in an async"
                " handler, await the method without _sync"
            )
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _ref(self) -> dict[str, Any]:
        return {"id": self.id, "token": self.token}

    def attach(self, link: NodeLink | None, loop: asyncio.AbstractEventLoop) -> None:
        """Where this job's requests go (the executor, when the job is pushed)."""
        self._link = link
        self._loop = loop

    @property
    def reports(self) -> JobReports | None:
        """What this job told the node about itself (None until it told anything)."""
        return self._reports

    def _require_link(self) -> NodeLink:
        if self._link is None:
            raise RuntimeError("this job context is not attached to a running worker")
        return self._link

    @classmethod
    def from_wire(cls, job: Any) -> JobContext:
        """A context from a pushed job map; raises ValueError if `id`, `token` or `kind` is bad."""
        if not isinstance(job, dict):
            raise ValueError(f"a pushed job must be a map, got {type(job).__name__}")
        job_id, token, kind = job.get("id"), job.get("token"), job.get("kind")
        if not isinstance(job_id, str) or not isinstance(token, int) or not isinstance(kind, str):
            raise ValueError(f"a pushed job lacks a valid id/token/kind (id={job_id!r})")
        return cls(
            job_id,
            token,
            kind,
            job.get("args"),
            job.get("tags") or (),
            job.get("tenant") or "default",
            job.get("attempt") or 1,
            job.get("max_attempts") or 1,
            job.get("reserve_for") or 60.0,
            job.get("enqueued_at") or 0.0,
            checkpoints if isinstance(checkpoints := job.get("checkpoints"), dict) else None,
        )

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger whose records carry `job_id` and `job_kind` in their `extra`."""
        if self._logger is None:
            self._logger = logging.LoggerAdapter(
                job_log, {"job_id": self.id, "job_kind": self.kind, "attempt": self.attempt}
            )
        return self._logger

    def __repr__(self) -> str:
        return f"<JobContext {self.kind} {self.id} attempt {self.attempt}/{self.max_attempts}>"


def invoke(fn: Callable[..., Any], ctx: JobContext) -> Any:
    """Call a handler with the job's arguments bound as documented at the top of this module."""
    args = ctx.args
    if type(args) is list:
        return fn(ctx, *args)
    if type(args) is dict and all(type(key) is str for key in args):
        return fn(ctx, **args)
    return fn(ctx, args)


def argument_mismatch(fn: Callable[..., Any], ctx: JobContext) -> str | None:
    """Why the job's arguments cannot bind to `fn`, or None if they can (or it cannot be told).

    Called after a handler raised TypeError, to tell a programming error (never worth a retry)
    from a TypeError raised inside the handler.
    """
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    args = ctx.args
    try:
        if type(args) is list:
            signature.bind(ctx, *args)
        elif type(args) is dict and all(type(key) is str for key in args):
            signature.bind(ctx, **args)
        else:
            signature.bind(ctx, args)
    except TypeError as exc:
        return f"arguments of job {ctx.kind!r} do not match handler {_name(fn)}{signature}: {exc}"
    return None


def is_retryable(exc: BaseException) -> bool:
    """False for `worcr.Permanent` and any exception whose `retryable` attribute is False."""
    return getattr(exc, "retryable", True) is not False


def describe_exception(exc: BaseException, limit: int = LIMITS.max_error_len) -> str:
    """`"{Type}: {message}"`, cut to `limit` characters."""
    message = str(exc)
    name = type(exc).__qualname__
    text = f"{name}: {message}" if message else name
    return text if len(text) <= limit else text[: limit - 3] + "..."


def truncate_backtrace(text: str, limit: int = LIMITS.max_backtrace_len) -> str:
    """Keep the end of a traceback (where the error is) within `limit` characters."""
    if len(text) <= limit:
        return text
    marker = "...(traceback truncated)...\n"
    return marker + text[len(text) - (limit - len(marker)) :]


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)
