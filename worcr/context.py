"""What a job handler sees and how it is called: `JobContext`, argument binding, failure reports.

A handler is called as `fn(ctx, *args)` when the job's args are a list, `fn(ctx, **args)` when
they are a map with string keys, and `fn(ctx, args)` otherwise. An exception becomes a `fail`
report: `"{Type}: {message}"` plus the traceback, both cut to the protocol limits, retryable
unless the exception is `worcr.Permanent` or says `retryable = False`.

`JobContext` is built for every job on the worker's hot path, so it is a slotted object whose
logger is made only when asked for. Checkpoints, progress and log streaming will hang off it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

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
    `enqueued_at` (Unix seconds), `cancelled` (a `CancelFlag`), and `logger`.
    """

    __slots__ = (
        "_abandoned",
        "_link",
        "_logger",
        "_loop",
        "_started",
        "_task",
        "args",
        "attempt",
        "cancelled",
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
        self.cancelled = CancelFlag()
        self._logger: logging.LoggerAdapter[logging.Logger] | None = None
        # Worker bookkeeping: the asyncio task of an async handler; whether the job left a
        # local slot; whether its outcome must be dropped (cancelled by the node or yielded).
        self._task: asyncio.Task[None] | None = None
        self._started = False
        self._abandoned = False
        self._link: NodeLink | None = None  # set by the executor: requests to the node
        self._loop: asyncio.AbstractEventLoop | None = None

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
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _ref(self) -> dict[str, Any]:
        return {"id": self.id, "token": self.token}

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
