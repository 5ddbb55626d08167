"""Running pushed jobs: local slots, handler calls, outcomes handed to the `Reporter`.

The node pushes up to `capacity` jobs; the executor runs at most `concurrency` of them at once
and keeps the others waiting in arrival order. An `async def` handler runs as an asyncio task on
the worker's loop; a plain function runs in the thread pool and posts its outcome back with
`call_soon_threadsafe`. A job cancelled by the node (or yielded at shutdown) is "abandoned": its
flag is set, its task cancelled, its slot freed, and whatever it returns later is dropped.

A job asked to yield (by the node, its run time being up, or at shutdown) has its flag set and
`yield_requested` true. The handler should stop at a safe point (`raise worcr.Yield`); an async
handler that has not within `yield_timeout` seconds (at shutdown: at once, as it already had the
shutdown timeout) is cancelled at its next await. Either way the job is reported as yielded.
Before any job's end is reported, what it reported about itself (checkpoints, progress, log
lines) is flushed first.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgpack

from worcr.capture import OutputCapture, current_job
from worcr.context import (
    JobContext,
    argument_mismatch,
    describe_exception,
    invoke,
    is_retryable,
    truncate_backtrace,
)
from worcr.errors import Yield
from worcr.limits import NodeLink
from worcr.registry import Handler, Registry
from worcr.results import Reporter
from worcr.spec import check_json_form
from worcr.wire import Limits

__all__ = ["JobExecutor", "result_problem"]

LIMITS = Limits()  # defaults are readable on an instance only: Limits has __slots__

log = logging.getLogger(__name__)

_CANCEL_GRACE = 1.0  # seconds for cancelled async handlers to unwind before they are yielded
_FLUSH_TIMEOUT = 30.0  # seconds to get a job's last checkpoints, progress and lines answered

Outcome = tuple[bool, Any, str | None]  # (succeeded, result or exception, traceback)


class JobExecutor:
    """Runs jobs for one worker. All methods are called on the worker's event loop."""

    def __init__(
        self,
        registry: Registry,
        reporter: Reporter,
        *,
        concurrency: int,
        threads: int,
        worker_id: str = "",
        node: NodeLink | None = None,
        capture: OutputCapture | None = None,
        yield_timeout: float = 5.0,
    ) -> None:
        self.yield_timeout = yield_timeout
        self.node = node  # requests jobs make to the node (rate limits, checkpoints, ...)
        self.capture = capture  # the job's logging/stdout copied to its log, if installed
        self.registry = registry
        self.reporter = reporter
        self.concurrency = concurrency
        self.worker_id = worker_id
        self.held: dict[str, JobContext] = {}  # received and not reported: waiting + running
        self.active = 0  # jobs occupying a local slot
        self.stopping = False  # set at shutdown: jobs pushed from now on are yielded at once
        self._waiting: deque[tuple[JobContext, Handler]] = deque()
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="worcr-job")
        self._idle: asyncio.Event | None = None
        # attempts (id, token) flushing their reports before their end is reported
        self._ending: dict[tuple[str, int], asyncio.Task[None]] = {}

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def running_list(self) -> list[dict[str, Any]]:
        """`hello.running`: every job held, so that a new node adopts their leases."""
        return [{"id": ctx.id, "token": ctx.token} for ctx in self.held.values()]

    def close(self) -> None:
        """Cancel async handlers still running and stop the thread pool (threads are not
        interrupted: a handler still running in a thread finishes on its own)."""
        for ctx in list(self.held.values()):
            ctx._abandoned = True
            ctx.cancelled.set()
            if ctx._task is not None:
                ctx._task.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- from the node --------------------------------------------------------------------------

    def on_jobs(self, jobs: list[Any]) -> None:
        """The `jobs` notification."""
        for raw in jobs:
            try:
                ctx = JobContext.from_wire(raw)
            except ValueError as exc:
                log.error("ignoring a malformed pushed job: %s", exc)
                continue
            old = self.held.get(ctx.id)
            if old is not None:
                if old.token == ctx.token:
                    log.warning("job %s pushed twice: ignoring the copy", ctx.id)
                    continue
                log.warning("job %s pushed again with a new lease: dropping the old run", ctx.id)
                self.abandon(old)
            if self.stopping:
                self.reporter.yield_(ctx.id, ctx.token)
                continue
            handler = self.registry.get(ctx.kind)
            if handler is None:
                known = ", ".join(self.registry.kinds()) or "none"
                self.reporter.fail(
                    ctx.id,
                    ctx.token,
                    f"no handler for job kind {ctx.kind!r} on worker {self.worker_id}"
                    f" (it runs: {known})"[: LIMITS.max_error_len],
                    retryable=False,
                )
                continue
            self.held[ctx.id] = ctx
            ctx.attach(self.node, asyncio.get_running_loop())
            if self.active < self.concurrency:
                self._start(ctx, handler)
            else:
                self._waiting.append((ctx, handler))

    def on_cancel(self, params: dict[str, Any]) -> None:
        """The `cancel` notification: stop these jobs and do not report them."""
        items = params.get("jobs")
        reason = params.get("reason") or "cancelled"
        for item in items if isinstance(items, list) else ():
            ctx = self.held.get(str(item.get("id"))) if isinstance(item, dict) else None
            if ctx is not None and ctx.token == item.get("token"):
                log.info("job %s cancelled by the node: %s", ctx.id, reason)
                self.abandon(ctx)

    def on_yield(self, params: dict[str, Any]) -> None:
        """The `yield` notification: the node asks these jobs to yield (their run time is up)."""
        items = params.get("jobs")
        for item in items if isinstance(items, list) else ():
            ctx = self.held.get(str(item.get("id"))) if isinstance(item, dict) else None
            if ctx is not None and ctx.token == item.get("token"):
                log.info("job %s asked to yield: %s", ctx.id, params.get("reason"))
                self.request_yield(ctx)

    def request_yield(self, ctx: JobContext) -> None:
        if ctx._yield_requested or (ctx.id, ctx.token) in self._ending:
            return
        ctx._yield_requested = True
        ctx.cancelled.set()
        if not ctx._started:  # still waiting for a slot: give it back at once
            self._waiting = deque(w for w in self._waiting if w[0] is not ctx)
            del self.held[ctx.id]
            self.reporter.yield_(ctx.id, ctx.token)
        elif ctx._task is not None:  # cancelled unless it yields at a safe point in time
            task = ctx._task
            asyncio.get_running_loop().call_later(self.yield_timeout, _cancel, task)

    def abandon(self, ctx: JobContext) -> None:
        """Forget a held job without reporting it: flag it, cancel its task, free its slot."""
        ctx._abandoned = True
        ctx.cancelled.set()
        if ctx._task is not None:
            ctx._task.cancel()
        if self.capture is not None:
            self.capture.end_job(ctx, send=False)
        if self.held.get(ctx.id) is ctx:
            del self.held[ctx.id]
        if ctx._started:
            self._release()

    # -- running --------------------------------------------------------------------------------

    def _start(self, ctx: JobContext, handler: Handler) -> None:
        ctx._started = True
        self.active += 1
        loop = asyncio.get_running_loop()
        if handler.is_async:
            ctx._task = loop.create_task(self._run_async(ctx, handler, None))
        else:
            self._pool.submit(self._run_in_thread, loop, ctx, handler)

    def _release(self) -> None:
        self.active -= 1
        waiting = self._waiting
        while waiting and self.active < self.concurrency:
            ctx, handler = waiting.popleft()
            if not ctx._abandoned:
                self._start(ctx, handler)
        if self._idle is not None and self.active == 0:
            self._idle.set()

    async def _run_async(self, ctx: JobContext, handler: Handler, awaitable: Any) -> None:
        current_job.set(ctx)  # this task's own context: for the job's captured output
        try:
            result = await (invoke(handler.fn, ctx) if awaitable is None else awaitable)
        except asyncio.CancelledError:
            if ctx._abandoned:
                return  # cancelled by the node: nothing to report
            if ctx._yield_requested:
                self._end(ctx, lambda: self.reporter.yield_(ctx.id, ctx.token))
                return
            raise
        except Exception as exc:
            self._failed(ctx, handler, exc, traceback.format_exc())
        else:
            self._succeeded(ctx, result)

    def _run_in_thread(
        self, loop: asyncio.AbstractEventLoop, ctx: JobContext, handler: Handler
    ) -> None:
        if ctx._abandoned:
            return
        outcome: Outcome
        reset = current_job.set(ctx)
        try:
            outcome = (True, invoke(handler.fn, ctx), None)
        except Exception as exc:
            outcome = (False, exc, traceback.format_exc())
        finally:
            current_job.reset(reset)
        try:
            loop.call_soon_threadsafe(self._thread_done, ctx, handler, outcome)
        except RuntimeError:  # the loop is closed: the worker is gone
            pass

    def _thread_done(self, ctx: JobContext, handler: Handler, outcome: Outcome) -> None:
        ok, value, backtrace = outcome
        if ok and asyncio.iscoroutine(value):  # an `async def` hidden behind a plain wrapper
            ctx._task = asyncio.get_running_loop().create_task(self._run_async(ctx, handler, value))
        elif ok:
            self._succeeded(ctx, value)
        else:
            self._failed(ctx, handler, value, backtrace)

    def _succeeded(self, ctx: JobContext, result: Any) -> None:
        if ctx._abandoned:
            return
        if result is not None:
            problem = result_problem(result)
            if problem is not None:
                self._report_failure(ctx, problem, None, retryable=False)
                return
        self._end(ctx, lambda: self.reporter.ack(ctx.id, ctx.token, result))

    def _end(self, ctx: JobContext, report: Callable[[], None]) -> None:
        """Report the job's end, once what it reported about itself is answered."""
        if self.capture is not None:
            self.capture.end_job(ctx)
        reports = ctx.reports
        if reports is None or not reports.busy:
            del self.held[ctx.id]
            report()
            if reports is not None:
                reports.close()
            self._release()
            return
        key = (ctx.id, ctx.token)
        task = asyncio.get_running_loop().create_task(self._end_after_flush(ctx, report))
        self._ending[key] = task
        task.add_done_callback(lambda _: self._ending.pop(key, None))

    async def _end_after_flush(self, ctx: JobContext, report: Callable[[], None]) -> None:
        reports = ctx.reports
        assert reports is not None
        try:
            async with asyncio.timeout(_FLUSH_TIMEOUT):
                await reports.flush()
        except TimeoutError:
            log.warning("job %s: its last checkpoints/progress/lines are unanswered", ctx.id)
        if ctx._abandoned or self.held.get(ctx.id) is not ctx:
            return  # cancelled by the node meanwhile (and its slot freed)
        del self.held[ctx.id]
        report()
        reports.close()
        self._release()

    def _failed(
        self, ctx: JobContext, handler: Handler, exc: BaseException, backtrace: str | None
    ) -> None:
        if ctx._abandoned:
            return
        if isinstance(exc, Yield):
            self._end(ctx, lambda: self.reporter.yield_(ctx.id, ctx.token))
            return
        error = describe_exception(exc)
        retryable = is_retryable(exc)
        if isinstance(exc, TypeError) and retryable:
            mismatch = argument_mismatch(handler.fn, ctx)
            if mismatch is not None:
                error, retryable = describe_exception(TypeError(mismatch)), False
        self._report_failure(ctx, error, backtrace, retryable=retryable)

    def _report_failure(
        self, ctx: JobContext, error: str, backtrace: str | None, *, retryable: bool
    ) -> None:
        log.info("job %s (%s) failed on attempt %d: %s", ctx.id, ctx.kind, ctx.attempt, error)
        self._end(
            ctx,
            lambda: self.reporter.fail(
                ctx.id,
                ctx.token,
                error[: LIMITS.max_error_len],
                truncate_backtrace(backtrace) if backtrace else None,
                retryable,
            ),
        )

    # -- shutdown -------------------------------------------------------------------------------

    def yield_waiting(self) -> int:
        """Yield every job received but not started; returns how many."""
        count = 0
        while self._waiting:
            ctx, _ = self._waiting.popleft()
            if not ctx._abandoned:
                del self.held[ctx.id]
                self.reporter.yield_(ctx.id, ctx.token)
                count += 1
        return count

    async def wait_idle(self) -> None:
        """Wait until no job occupies a slot (bound it with `asyncio.timeout`)."""
        if not self.active:
            return
        self._idle = asyncio.Event()
        try:
            await self._idle.wait()
        finally:
            self._idle = None

    async def yield_running(self) -> int:
        """Cancel what still runs (async handlers get a moment to unwind) and yield it all, each
        job after its last checkpoints are answered."""
        left = [ctx for ctx in self.held.values() if (ctx.id, ctx.token) not in self._ending]
        tasks = []
        for ctx in left:
            ctx._yield_requested = True
            ctx.cancelled.set()
            if ctx._task is not None:
                ctx._task.cancel()
                tasks.append(ctx._task)
        if tasks:  # a cancelled async handler reports its own yield (after its flush)
            await asyncio.wait(tasks, timeout=_CANCEL_GRACE)
        count = len(left)
        for ctx in left:
            key = (ctx.id, ctx.token)
            if self.held.get(ctx.id) is ctx and key not in self._ending:
                # a thread still running, or an async handler that would not unwind: its
                # outcome is dropped from now on
                ctx._abandoned = True
                self._ending[key] = asyncio.get_running_loop().create_task(
                    self._yield_after_flush(ctx)
                )
        ending = list(self._ending.values())
        if ending:
            await asyncio.wait(ending, timeout=_FLUSH_TIMEOUT)
        return count

    async def _yield_after_flush(self, ctx: JobContext) -> None:
        try:
            if ctx.reports is not None:
                async with asyncio.timeout(_FLUSH_TIMEOUT):
                    await ctx.reports.flush()
        except TimeoutError:
            log.warning("job %s: its last checkpoints are unanswered", ctx.id)
        finally:
            self._ending.pop((ctx.id, ctx.token), None)
        if self.held.get(ctx.id) is ctx:
            del self.held[ctx.id]
            self.reporter.yield_(ctx.id, ctx.token)
            if ctx.reports is not None:
                ctx.reports.close()


def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()  # a no-op once the task is done


def result_problem(result: Any) -> str | None:
    """Why a handler's return value cannot be sent as an ack `result`, or None if it can."""
    try:
        size = len(msgpack.packb(result, use_bin_type=True))
    except Exception as exc:
        return f"the job's result cannot be encoded as msgpack: {describe_exception(exc)}"
    try:
        check_json_form(result, "the job's result")
    except (ValueError, TypeError) as exc:
        return f"the job's result cannot be stored: {exc}"
    if size > LIMITS.max_result:
        return (
            f"the job's result is {size} bytes of msgpack, over the limit of {LIMITS.max_result}:"
            " store large results elsewhere and return a reference"
        )
    return None
