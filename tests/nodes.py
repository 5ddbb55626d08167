"""Nodes as separate processes (`python -m worcr_node node`), for tests that kill -9 a node.

In-process nodes (the `node_factory` fixture) cannot be killed without killing the test. A
`NodeProcess` runs against the test's PostgreSQL database and Redis prefix, on free loopback
ports, and is killed at the end of the test by the `spawn_node` fixture (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from worcr_node.embedded import free_port

ROOT = Path(__file__).resolve().parents[1]


class NodeProcess:
    def __init__(self, proc: asyncio.subprocess.Process, worker_address: str, log: Path) -> None:
        self.proc = proc
        self.worker_address = worker_address
        self.log_path = log
        self.http_address = ""  # http://host:port of its HTTP API

    @classmethod
    async def start(
        cls,
        database_url: str,
        redis_url: str,
        prefix: str,
        name: str,
        log: Path,
        extra_env: Mapping[str, str] | None = None,
        *,
        listen: str | None = None,
        http: str | None = None,
    ) -> NodeProcess:
        """A node on free ports, or on `listen` / `http` (a restart on the same addresses)."""
        listen = listen or f"127.0.0.1:{free_port()}"
        http = http or f"127.0.0.1:{free_port()}"
        env = dict(
            os.environ,
            WORCR_DATABASE_URL=database_url,
            WORCR_REDIS_URL=redis_url,
            WORCR_REDIS_PREFIX=prefix,
            WORCR_LISTEN=listen,
            WORCR_HTTP=http,
            WORCR_NODE_ID=name,
            WORCR_HEARTBEAT_MS="200",
        )
        env.update(extra_env or {})
        with log.open("ab") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "worcr_node", "node",
                cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
            )  # fmt: skip
        node = cls(proc, listen, log)
        node.http_address = f"http://{http}"
        await node._wait_listening()
        return node

    async def _wait_listening(self, timeout: float = 30.0) -> None:
        host, port = self.worker_address.rsplit(":", 1)
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            if self.proc.returncode is not None:
                raise AssertionError(f"node exited at start; its log:\n{self.log()}")
            try:
                _, writer = await asyncio.open_connection(host, int(port))
            except OSError:
                if loop.time() > end:
                    raise AssertionError(f"node not listening; its log:\n{self.log()}") from None
                await asyncio.sleep(0.05)  # no event to await: the port opens when it is ready
                continue
            writer.close()
            await writer.wait_closed()
            return

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def kill(self) -> None:
        """SIGKILL: no shutdown, no goodbye to its workers."""
        if self.proc.returncode is None:
            self.proc.kill()

    async def close(self) -> None:
        self.kill()
        await self.proc.wait()


SpawnNode = Callable[..., Awaitable[NodeProcess]]
