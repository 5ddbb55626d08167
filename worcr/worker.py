"""The Python worker: connect to a node, take pushed jobs, run them, report, shut down cleanly.

    worker = Worker(nodes=["127.0.0.1:7401"], concurrency=10)

    @worker.job("email.send")
    async def send(ctx, address): ...

    worker.run_sync()            # or: await worker.run(); or: python -m worcr.worker my.module

Data flow: `hello` (capacity = concurrency + prefetch) -> the node pushes `jobs` while this worker
holds fewer than that -> the `JobExecutor` runs them (at most `concurrency` at once) -> the
`Reporter` batches `ack`/`fail`/`yield`. Heartbeats keep the leases alive. When the node is lost,
the worker reconnects with backoff (rotating over `nodes`) while its jobs keep running, and lists
them in `hello.running` so the new session adopts their leases. On SIGTERM/SIGINT it announces
capacity 0, yields what has not started, lets running jobs finish within `shutdown_timeout`,
cancels and yields the rest (after their last checkpoints are stored), flushes its reports, says
`bye`. A `yield` notification (a job's maximum run time is up) yields that job the same way.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from worcr.backoff import Backoff
from worcr.capture import OutputCapture
from worcr.client import DEFAULT_NODE, normalize_nodes
from worcr.connection import Connection
from worcr.errors import ConnectionClosed, RemoteError
from worcr.executor import JobExecutor
from worcr.limits import NodeLink
from worcr.registry import Registry
from worcr.results import Reporter
from worcr.session import SessionLoop
from worcr.wire import PROTOCOL_VERSION, ErrorCode, Limits

__all__ = ["Worker", "main", "run_worker_module"]

LIMITS = Limits()  # defaults are readable on an instance only: Limits has __slots__

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

_FINAL_FLUSH_TIMEOUT = 10.0  # seconds to get the last reports answered at shutdown


class Worker:
    """Runs job handlers for one or more nodes (one connection at a time)."""

    def __init__(
        self,
        nodes: str | Sequence[str] = (DEFAULT_NODE,),
        *,
        tags: Sequence[str] = (),
        concurrency: int = 10,
        prefetch: int | None = None,
        token: str | None = None,
        worker_id: str | None = None,
        name: str | None = None,
        shutdown_timeout: float = 30.0,
        threads: int | None = None,
        registry: Registry | None = None,
        backoff: Backoff | None = None,
        connect_timeout: float = 10.0,
        report_batch: int = 64,
        report_delay: float = 0.0005,
        capture_output: bool = True,
        yield_timeout: float = 5.0,
    ) -> None:
        """`prefetch` defaults to `concurrency`; `threads` (the pool for plain-function
        handlers) too. `report_batch`/`report_delay`: when batched reports are sent.
        `capture_output`: copy what jobs print and log (records that pass the loggers' levels)
        to their log on the node; the output still goes where it went. `yield_timeout`: seconds
        an async handler asked to yield by the node has to stop at a safe point (`raise
        worcr.Yield`) before it is cancelled."""
        host = socket.gethostname()
        self.registry = registry if registry is not None else Registry()
        self.worker_id = worker_id or f"{host}-{os.getpid()}-{os.urandom(3).hex()}"
        self.name = name or f"{host}:{os.getpid()}"
        self.backoff = backoff or Backoff(base=0.2, cap=10.0)
        self.connect_timeout = connect_timeout
        self.report_batch = report_batch
        self.report_delay = report_delay
        self.capture_output = capture_output
        self.yield_timeout = yield_timeout
        self.nodes: list[str] = []
        self.tags: list[str] = []
        self.token: str | None = None
        self.concurrency = 1
        self.shutdown_timeout = shutdown_timeout
        self._prefetch: int | None = None
        self._threads: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.configure(
            nodes=nodes,
            tags=tags,
            concurrency=concurrency,
            prefetch=prefetch,
            token=token,
            threads=threads,
        )
        self.ready = asyncio.Event()  # set after the first successful hello
        self.node_id: str | None = None
        self._stop_requested = False
        self._stop_event: asyncio.Event | None = None
        self._signalled = False
        self._link: SessionLoop | None = None
        self._reporter: Reporter | None = None
        self._executor: JobExecutor | None = None
        self._node = NodeLink()

    # -- configuration --------------------------------------------------------------------------

    def job(self, kind: str, *, is_async: bool | None = None) -> Callable[[F], F]:
        """Decorator: `@worker.job("email.send")` registers the function for that job kind."""
        return self.registry.job(kind, is_async=is_async)

    def register(self, kind: str, fn: Callable[..., Any], *, is_async: bool | None = None) -> None:
        self.registry.register(kind, fn, is_async=is_async)

    def configure(
        self,
        *,
        nodes: str | Sequence[str] | None = None,
        tags: Sequence[str] | None = None,
        concurrency: int | None = None,
        prefetch: int | None = None,
        token: str | None = None,
        threads: int | None = None,
        shutdown_timeout: float | None = None,
        yield_timeout: float | None = None,
    ) -> None:
        """Change settings before `run` (None keeps a setting); the CLI overrides with it."""
        if self._running():
            raise RuntimeError("configure() a worker before it runs")
        if nodes is not None:
            self.nodes = normalize_nodes(nodes)
        if tags is not None:
            if isinstance(tags, str):
                raise TypeError(
                    f"tags must be a list of str, not a string (did you mean [{tags!r}]?)"
                )
            self.tags = list(tags)
        for label, value in (("concurrency", concurrency), ("threads", threads)):
            if value is not None and value < 1:
                raise ValueError(f"{label} must be >= 1, got {value}")
        if prefetch is not None and prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch}")
        self.concurrency = concurrency or self.concurrency
        self._prefetch = prefetch if prefetch is not None else self._prefetch
        self._threads = threads or self._threads
        self.token = token if token is not None else self.token
        self.shutdown_timeout = (
            shutdown_timeout if shutdown_timeout is not None else self.shutdown_timeout
        )
        if yield_timeout is not None:
            if yield_timeout < 0:
                raise ValueError(f"yield_timeout must be >= 0, got {yield_timeout}")
            self.yield_timeout = yield_timeout

    @property
    def prefetch(self) -> int:
        return self.concurrency if self._prefetch is None else self._prefetch

    @property
    def threads(self) -> int:
        return self._threads or self.concurrency

    @property
    def capacity(self) -> int:
        """Jobs the node may push to this worker at once: concurrency + prefetch."""
        return min(self.concurrency + self.prefetch, LIMITS.max_capacity)

    @property
    def held(self) -> int:
        """Jobs received and not yet reported (running or waiting for a slot)."""
        return len(self._executor.held) if self._executor is not None else 0

    def _running(self) -> bool:
        return self._loop is not None

    # -- life cycle -----------------------------------------------------------------------------

    def stop(self) -> None:
        """Begin a graceful shutdown; callable from any thread, before or during `run`."""
        self._stop_requested = True
        loop, event = self._loop, self._stop_event
        if loop is None or event is None or loop.is_closed():
            return
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        if current is loop:
            event.set()
        else:
            loop.call_soon_threadsafe(event.set)

    def run_sync(self) -> int:
        """Run until shut down, on a new event loop (uvloop when installed); returns 0."""
        from worcr.runner import run_coroutine

        return run_coroutine(self.run())

    async def run(self, *, install_signal_handlers: bool = True) -> int:
        """Run until `stop()` or SIGTERM/SIGINT, then shut down gracefully; returns 0.

        Raises `RemoteError` if the first `hello` is refused for good (bad token, version),
        ValueError if no handler is registered.
        """
        if self._running():
            raise RuntimeError("this worker is already running")
        if not len(self.registry):
            # `kinds: []` means "any kind" to the node: this worker would fail every job.
            raise ValueError("the worker has no job handler: register one with @worker.job(kind)")
        loop = self._loop = asyncio.get_running_loop()
        self.ready.clear()
        self._signalled = False
        self._stop_event = asyncio.Event()
        if self._stop_requested:
            self._stop_event.set()
        self._node = NodeLink()
        reporter = self._reporter = Reporter(batch_size=self.report_batch, delay=self.report_delay)
        capture = OutputCapture() if self.capture_output else None
        executor = self._executor = JobExecutor(
            self.registry,
            reporter,
            concurrency=self.concurrency,
            threads=self.threads,
            worker_id=self.worker_id,
            node=self._node,
            capture=capture,
            yield_timeout=self.yield_timeout,
        )
        link = self._link = SessionLoop(
            self.nodes,
            hello_params=self._hello_params,
            on_notification=self._on_notification,
            on_session=self._on_session,
            backoff=self.backoff,
            connect_timeout=self.connect_timeout,
        )
        signals = self._install_signal_handlers(loop) if install_signal_handlers else []
        if capture is not None:
            capture.install()
        sessions = loop.create_task(link.run(), name=f"worcr-worker-{self.worker_id}")
        stop_wait = loop.create_task(self._stop_event.wait(), name="worcr-worker-stop")
        try:
            await asyncio.wait([sessions, stop_wait], return_when=asyncio.FIRST_COMPLETED)
            if sessions.done():
                sessions.result()  # raises the fatal hello error
            await self._shutdown(executor, reporter)
        finally:
            for task in (sessions, stop_wait):
                task.cancel()
            await asyncio.gather(sessions, stop_wait, return_exceptions=True)
            await link.aclose()
            executor.close()
            if capture is not None:
                capture.uninstall()
            for sig in signals:
                loop.remove_signal_handler(sig)
            self._loop = self._stop_event = None
            self._stop_requested = False
        log.info("worker %s stopped", self.worker_id)
        return 0

    @property
    def _stopped(self) -> bool:
        """Shutdown finished its work: a lost connection is expected, not news."""
        return self._stop_event is None or self._stop_event.is_set()

    def _install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> list[int]:
        installed: list[int] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self._on_signal, sig)
            except (NotImplementedError, RuntimeError, ValueError):  # not main thread, Windows
                continue
            installed.append(sig)
        return installed

    def _on_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        if self._signalled and sig == signal.SIGINT:
            log.warning("second interrupt: exiting now; unreported jobs re-run after their lease")
            logging.shutdown()
            os._exit(130)
        if self._signalled:
            log.info("%s received: already shutting down", name)
            return
        self._signalled = True
        log.info("%s received: shutting down gracefully (Ctrl-C again to exit now)", name)
        self.stop()

    # -- sessions -------------------------------------------------------------------------------

    def _hello_params(self) -> dict[str, Any]:
        executor = self._executor
        stopping = executor is None or executor.stopping
        params: dict[str, Any] = {
            "protocol": PROTOCOL_VERSION,
            "worker_id": self.worker_id,
            "name": self.name,
            "tags": self.tags,
            "capacity": 0 if stopping else self.capacity,
            "kinds": self.registry.kinds(),
        }
        if self.token is not None:
            params["token"] = self.token
        if executor is not None and executor.held:
            params["running"] = executor.running_list()
        return params

    def _on_session(self, conn: Connection | None, hello: dict[str, Any]) -> None:
        """A session started (`conn`) or was lost (None)."""
        reporter = self._reporter
        assert reporter is not None
        self._node.attach(conn)
        if conn is None:
            reporter.attach(None)
            if not self._stopped:
                log.warning(
                    "no node: %d job(s) held, %d report(s) unanswered; reconnecting",
                    self.held,
                    reporter.queued + reporter.in_flight,
                )
            return
        node_id = hello.get("node_id")
        self.node_id = node_id if isinstance(node_id, str) else None
        log.info("worker %s serving node %s, capacity %d", self.worker_id, node_id, self.capacity)
        self._drop_stale(hello.get("stale"))
        reporter.attach(conn)
        self.ready.set()

    def _drop_stale(self, stale: Any) -> None:
        """Proposed `hello` result field `stale`: ids of `running` jobs the node did not adopt."""
        executor = self._executor
        if executor is None or not isinstance(stale, list):
            return
        for job_id in stale:
            ctx = executor.held.get(job_id) if isinstance(job_id, str) else None
            if ctx is not None:
                log.warning("job %s was not re-adopted by the node: dropping it", ctx.id)
                executor.abandon(ctx)

    def _on_notification(self, method: str, params: dict[str, Any]) -> None:
        executor = self._executor
        if executor is None:
            return
        if method == "jobs":
            jobs = params.get("jobs")
            executor.on_jobs(jobs if isinstance(jobs, list) else [])
        elif method == "cancel":
            executor.on_cancel(params)
        elif method == "yield":
            executor.on_yield(params)
        elif method == "error":
            if params.get("code") == ErrorCode.SHUTTING_DOWN:  # a restart: routine, not an error
                log.info("node is stopping (%s): moving on", params.get("message"))
            else:
                log.error("node error: %s: %s", params.get("code"), params.get("message"))
        else:
            log.debug("ignoring unknown notification %r", method)

    # -- shutdown -------------------------------------------------------------------------------

    async def _shutdown(self, executor: JobExecutor, reporter: Reporter) -> None:
        executor.stopping = True
        log.info(
            "worker %s stopping: %d running, %d waiting",
            self.worker_id,
            executor.active,
            executor.waiting,
        )
        conn = self._link.conn if self._link is not None else None
        if conn is not None and not conn.closed:
            conn.call("capacity", {"capacity": 0}).add_done_callback(_log_refusal)
        executor.yield_waiting()
        try:
            async with asyncio.timeout(self.shutdown_timeout):
                await executor.wait_idle()
        except TimeoutError:
            log.warning(
                "shutdown timeout of %.1f s reached: yielding %d running job(s)",
                self.shutdown_timeout,
                executor.active,
            )
            await executor.yield_running()
        try:
            async with asyncio.timeout(_FINAL_FLUSH_TIMEOUT):
                await reporter.drain()
        except TimeoutError:
            log.error(
                "%d job report(s) unanswered at exit: those jobs re-run when their lease expires",
                reporter.queued + reporter.in_flight,
            )
        conn = self._link.conn if self._link is not None else None
        if conn is not None and not conn.closed:
            try:
                async with asyncio.timeout(self.connect_timeout):
                    await conn.request("bye", {})
            except (RemoteError, ConnectionClosed, TimeoutError) as exc:
                log.debug("bye not acknowledged: %s", exc)


def _log_refusal(fut: asyncio.Future[Any]) -> None:
    exc = None if fut.cancelled() else fut.exception()
    if exc is not None:
        log.debug("capacity 0 not acknowledged: %s", exc)


def main(argv: Sequence[str] | None = None) -> int:
    """`worcr worker` / `python -m worcr.worker`: see `worcr.runner.main`."""
    from worcr.runner import main as runner_main

    return runner_main(argv)


async def run_worker_module(module_name: str, *args: Any, **kwargs: Any) -> int:
    """See `worcr.runner.run_worker_module`."""
    from worcr.runner import run_worker_module as run

    return await run(module_name, *args, **kwargs)


if __name__ == "__main__":
    raise SystemExit(main())
