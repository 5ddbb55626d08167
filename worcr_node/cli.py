"""The `worcr` command: `node` (production), `dev` (embedded PostgreSQL + Redis), `worker`,
`migrate`.

`worcr node` reads everything from the environment and embeds nothing. `worcr dev` starts a
throwaway PostgreSQL and Redis under .worcr/, a node, and optionally a demo worker and demo jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import logging
import os
import signal
import sys
from pathlib import Path

from worcr_node.config import Config, ConfigError
from worcr_node.settings import settings_help

__all__ = ["main"]

log = logging.getLogger("worcr")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _install_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _run_node(config: Config, ready_message: str | None = None) -> int:
    from worcr_node.node import Node

    node = Node(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await node.start()
    except Exception as exc:
        log.error("node could not start: %s", exc)
        await node.stop()
        return 1
    print(f"worcr node {config.node_id}: HTTP API {node.http_address}, workers tcp://"
          f"{node.worker_address}", flush=True)  # fmt: skip
    if ready_message:
        print(ready_message, flush=True)
    crashed = asyncio.create_task(node.crashed.wait())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({crashed, stopped}, return_when=asyncio.FIRST_COMPLETED)
    crashed.cancel()
    stopped.cancel()
    print("stopping node...", flush=True)
    await node.stop()
    return 1 if node.crashed.is_set() else 0


# What a node imports beyond the SDK: the "node" extra (pyproject.toml). Without it, this install
# is the worker/producer SDK only, and the node's commands say so in one line.
NODE_MODULES = ("aiohttp", "asyncpg", "redis", "lupa", "quickjs", "psutil", "uuid_utils")


def _node_installed(command: str) -> bool:
    missing = [m for m in NODE_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        print(f"worcr {command}: this install is the worker SDK only (missing: "
              f"{', '.join(missing)}); a node needs the node extra: pip install 'worcr[node]'",
              file=sys.stderr)  # fmt: skip
    return not missing


def _config() -> Config | None:
    try:
        return Config.from_env()
    except ConfigError as exc:
        print(f"worcr: configuration error: {exc}", file=sys.stderr)
        return None


def cmd_node(args: argparse.Namespace) -> int:
    config = _config()
    if config is None:
        return 2
    _install_uvloop()
    return asyncio.run(_run_node(config))


def cmd_migrate(args: argparse.Namespace) -> int:
    config = _config()
    if config is None:
        return 2

    async def run() -> None:
        import asyncpg

        from worcr_node.store.migrate import migrate

        conn = await asyncpg.connect(config.database_url)
        try:
            applied = await migrate(conn)
        finally:
            await conn.close()
        print("applied: " + (", ".join(applied) or "nothing (up to date)"))

    asyncio.run(run())
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from worcr_node.devmode import run_dev

    _install_uvloop()
    return run_dev(Path(args.dir), demo=args.demo, http=args.http, listen=args.listen)


def cmd_worker(args: argparse.Namespace) -> int:
    from worcr.worker import main as worker_main

    return worker_main(args.rest)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["worker"]:  # its own options (and --help), parsed by the SDK's runner
        return cmd_worker(argparse.Namespace(rest=argv[1:]))
    parser = argparse.ArgumentParser(prog="worcr", description="Worcr background-job server")
    parser.add_argument("--log-level", default=os.environ.get("WORCR_LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True)
    raw = argparse.RawDescriptionHelpFormatter
    sub.add_parser(
        "node",
        help="run a node (config from WORCR_* environment variables)",
        description="Run a node against the PostgreSQL and Redis the settings name.",
        epilog=settings_help(),
        formatter_class=raw,
    )
    sub.add_parser("migrate", help="apply database migrations and exit", epilog=settings_help(),
                   formatter_class=raw)  # fmt: skip
    dev = sub.add_parser(
        "dev",
        help="run PostgreSQL + Redis + a node under .worcr/",
        description="Run PostgreSQL and Redis under --dir (kept between runs) and a node; "
        "WORCR_DATABASE_URL / WORCR_REDIS_URL, when set, replace the embedded servers.",
        epilog=settings_help(),
        formatter_class=raw,
    )
    dev.add_argument("--dir", default=".worcr", help="state folder (default .worcr)")
    dev.add_argument("--demo", action="store_true", help="also run a demo worker and demo jobs")
    dev.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="HTTP API address (default: WORCR_HTTP, else 127.0.0.1:7400)",
    )
    dev.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="worker protocol address (default: WORCR_LISTEN, else 127.0.0.1:7401)",
    )
    worker = sub.add_parser("worker", help="run a Python worker: worcr worker some.module [...]",
                            add_help=False)  # fmt: skip
    worker.add_argument("rest", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    _setup_logging(args.log_level)
    if args.command != "worker" and not _node_installed(args.command):
        return 2
    handlers = {"node": cmd_node, "migrate": cmd_migrate, "dev": cmd_dev, "worker": cmd_worker}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
