"""Start a worker from the command line: `worcr worker my.jobs` / `python -m worcr.worker my.jobs`.

The module (or `module:attribute`) is imported from the current directory; its handlers come from
a `Worker` instance named `worker` (or the named attribute) if it has one, else from the
handlers registered with the module-level `@worcr.job`. Command-line options override what the
module's `Worker` set; environment variables give the defaults (`WORCR_NODES`, `WORCR_TOKEN`,
`WORCR_CONCURRENCY`, `WORCR_PREFETCH`, `WORCR_THREADS`, `WORCR_TAGS`, `WORCR_SHUTDOWN_TIMEOUT`,
`WORCR_YIELD_TIMEOUT`, `WORCR_LOG_LEVEL`; `worcr worker --help` lists them).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
import textwrap
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from worcr.errors import RemoteError
from worcr.registry import default_registry
from worcr.worker import Worker

__all__ = ["load_worker", "main", "prepare_worker", "run_coroutine", "run_worker_module"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def run_coroutine(coro: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` on uvloop when it is installed (the SDK does not require it)."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def load_worker(target: str) -> Worker:
    """The `Worker` for `module` or `module:attribute` (see the module docstring)."""
    module_name, _, attribute = target.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    if attribute:
        found = getattr(module, attribute, None)
        if not isinstance(found, Worker):
            raise LookupError(f"{target!r} is not a worcr.Worker (got {type(found).__name__})")
        worker = found
    else:
        candidate = getattr(module, "worker", None)
        worker = candidate if isinstance(candidate, Worker) else Worker(registry=default_registry)
    if worker.registry is not default_registry:
        worker.registry.merge(default_registry)
    if not len(worker.registry):
        raise LookupError(
            f"module {module_name!r} registers no job handler: decorate functions with"
            " @worcr.job('kind') or define `worker = worcr.Worker(...)` with @worker.job"
        )
    return worker


async def run_worker_module(
    module_name: str,
    nodes: str | Sequence[str] | None = None,
    concurrency: int | None = None,
    tags: Sequence[str] | None = None,
    *,
    install_signal_handlers: bool = True,
    **overrides: Any,
) -> int:
    """Load the module's worker, apply the overrides (None keeps a setting), run it until it
    shuts down; returns 0. `overrides`: prefetch, token, threads, shutdown_timeout."""
    worker = prepare_worker(module_name, nodes, concurrency, tags, **overrides)
    return await worker.run(install_signal_handlers=install_signal_handlers)


def prepare_worker(
    module_name: str,
    nodes: str | Sequence[str] | None = None,
    concurrency: int | None = None,
    tags: Sequence[str] | None = None,
    *,
    prefetch: int | None = None,
    token: str | None = None,
    threads: int | None = None,
    shutdown_timeout: float | None = None,
    yield_timeout: float | None = None,
) -> Worker:
    """`load_worker` plus the command-line overrides."""
    worker = load_worker(module_name)
    worker.configure(
        nodes=nodes,
        tags=tags,
        concurrency=concurrency,
        prefetch=prefetch,
        token=token,
        threads=threads,
        shutdown_timeout=shutdown_timeout,
        yield_timeout=yield_timeout,
    )
    log.info(
        "worker %s: kinds %s, nodes %s, concurrency %d, capacity %d",
        worker.worker_id,
        ",".join(worker.registry.kinds()),
        ",".join(worker.nodes),
        worker.concurrency,
        worker.capacity,
    )
    return worker


# (flags, environment variable, type, metavar, help): every option of `worcr worker`
_OPTIONS: tuple[tuple[tuple[str, ...], str, type, str, str], ...] = (
    (("--nodes",), "WORCR_NODES", str, "HOST:PORT,...",
     "node worker addresses, a failover list (see below) (default 127.0.0.1:7401)"),
    (("--concurrency", "-c"), "WORCR_CONCURRENCY", int, "N", "jobs run at once (default 10)"),
    (("--prefetch",), "WORCR_PREFETCH", int, "N",
     "jobs held beyond --concurrency, waiting to start, so the next one starts without a round "
     "trip (default: as many as --concurrency; 0 for none)"),
    (("--threads",), "WORCR_THREADS", int, "N",
     "thread pool for plain-function (non-async) handlers (default: --concurrency)"),
    (("--tags",), "WORCR_TAGS", str, "TAG,...",
     "comma-separated worker tags the node's rules match on (default none)"),
    (("--token",), "WORCR_TOKEN", str, "TOKEN",
     "worker token, when the node requires one (default none)"),
    (("--shutdown-timeout",), "WORCR_SHUTDOWN_TIMEOUT", float, "SECONDS",
     "how long running jobs may finish after SIGTERM before they are yielded (default 30)"),
    (("--yield-timeout",), "WORCR_YIELD_TIMEOUT", float, "SECONDS",
     "how long a job the node asks to yield has to stop at a safe point (default 5)"),
    (("--log-level",), "WORCR_LOG_LEVEL", str, "LEVEL",
     "DEBUG, INFO, WARNING or ERROR (default INFO)"),
)  # fmt: skip

_EPILOG = """\
--nodes is a failover list, not a spread: the worker holds one connection, to the first node
of the list that answers, and moves to the next one only when that node stops (SHUTTING_DOWN) or
cannot be reached; nothing rebalances later. To spread workers over several nodes, give each
worker the list in a different order (e.g. a,b,c / b,c,a / c,a,b).

Every option can also come from the environment (an option wins over its variable; both win over
what the module's Worker set):
"""


def parser(prog: str = "worcr worker") -> argparse.ArgumentParser:
    variables = ", ".join(var for _, var, _, _, _ in _OPTIONS)
    p = argparse.ArgumentParser(
        prog=prog,
        description="Run Worcr job handlers from a module: connect to a node, say which kinds\n"
        "this worker runs, run the jobs it is given. SIGTERM/SIGINT: stop taking jobs, let\n"
        "running ones finish within --shutdown-timeout, yield the rest back to the node.",
        epilog=_EPILOG + textwrap.fill(variables, 96, initial_indent="  ", subsequent_indent="  "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("module", help="module (or module:attribute) that registers the handlers")
    for flags, var, kind, metavar, text in _OPTIONS:
        default: Any = _env(var, kind)
        if var == "WORCR_LOG_LEVEL" and default is None:
            default = "INFO"
        p.add_argument(*flags, type=kind, default=default, metavar=metavar, help=text)
    return p


def main(argv: Sequence[str] | None = None, prog: str = "worcr worker") -> int:
    """Command-line entry; returns the exit code (0 after a graceful shutdown)."""
    args = parser(prog).parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=args.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    tags = [t for t in args.tags.split(",") if t] if args.tags else None
    try:
        worker = prepare_worker(
            args.module,
            args.nodes,
            args.concurrency,
            tags,
            prefetch=args.prefetch,
            token=args.token,
            threads=args.threads,
            shutdown_timeout=args.shutdown_timeout,
            yield_timeout=args.yield_timeout,
        )
    except (ImportError, LookupError, ValueError, TypeError) as exc:
        print(f"worcr worker: cannot start: {exc}", file=sys.stderr)
        return 2
    try:
        code = run_coroutine(worker.run())
    except RemoteError as exc:
        print(f"worcr worker: the node refused this worker: {exc}", file=sys.stderr)
        return 1
    _exit_if_threads_linger(code)
    return code


def _exit_if_threads_linger(code: int) -> None:
    """Handlers still running in threads after a shutdown (yielded jobs) would keep the process
    alive until they return: exit now, their jobs are already back with the node."""
    main_thread = threading.main_thread()
    if any(t.is_alive() and not t.daemon and t is not main_thread for t in threading.enumerate()):
        log.warning("exiting with job handler threads still running (their jobs were yielded)")
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _env(name: str, kind: type) -> Any:
    """The variable's value as `kind`, None if unset; exits with a clear line if malformed."""
    value = os.environ.get(name)
    if not value:
        return None
    try:
        return kind(value)
    except ValueError:
        raise SystemExit(f"worcr worker: {name}={value!r} is not {kind.__name__}") from None
