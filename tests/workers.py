"""Workers for integration tests.

- `WorkerProcess`: `python -m worcr.worker tests.integration.jobs.sample`. Workers announce on
  stdout that a job started (see tests/integration/jobs/sample.py), so tests await that line
  instead of sleeping. The `spawn_worker` fixture (tests/conftest.py) starts them and kills
  whatever is left at the end of the test.
- `worker(node, served, ...)`: a raw wire worker that records the jobs pushed to it, in order,
  and acks them at once (or holds them).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.rawclient import RawClient
from worcr import wire
from worcr_node.node import Node

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = "tests.integration.jobs.sample"


class WorkerProcess:
    """`python -m worcr.worker tests.integration.jobs.sample` as a child process."""

    def __init__(self, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path

    @classmethod
    async def start(cls, node: Node | str, log_path: Path, *options: str) -> WorkerProcess:
        """`node`: an in-process node, or worker addresses ("host:port,host:port")."""
        nodes = node if isinstance(node, str) else node.worker_address
        with log_path.open("ab") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "worcr.worker", SAMPLE,
                "--nodes", nodes, "--log-level", "DEBUG", *options,
                cwd=ROOT,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
            )  # fmt: skip
        return cls(proc, log_path)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    async def started(self, timeout: float = 15.0) -> tuple[str, int, int]:
        """(id, attempt, token) from the next `started` line: a handler is running now."""
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except TimeoutError:
            raise AssertionError(f"no job started in the worker; its log:\n{self.log()}") from None
        if not line:
            await self.proc.wait()
            raise AssertionError(
                f"the worker exited with {self.proc.returncode}; its log:\n{self.log()}"
            )
        word, job_id, attempt, token = line.decode().split()
        assert word == "started", line
        return job_id, int(attempt), int(token)

    async def wait(self, timeout: float) -> int:
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"the worker did not exit; its log:\n{self.log()}") from None

    async def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()


SpawnWorker = Callable[..., Awaitable[WorkerProcess]]


@dataclass
class Served:
    """Jobs in the order they reached one worker."""

    jobs: list[dict[str, Any]] = field(default_factory=list)
    hold: bool = False  # keep jobs running (never ack) while True

    def count(self, key: str) -> Counter[str]:
        return Counter(j[key] for j in self.jobs)


@contextlib.asynccontextmanager
async def worker(node: Node, served: Served, **hello: Any) -> AsyncIterator[RawClient]:
    c = await RawClient.connect(node.worker_address)
    await c.hello(**hello)

    async def serve() -> None:
        # Plain queue reads and fire-and-forget ack requests (answers land in the queue and are
        # skipped): no asyncio.wait_for, which on Python 3.11 can swallow the cancel below.
        msgids = itertools.count(1 << 30)
        while True:
            msg = await c.notifications.get()
            if msg[0] != wire.MsgType.NOTIFICATION or msg[1] != "jobs":
                continue
            batch = msg[2]["jobs"]
            served.jobs.extend(batch)
            if not served.hold:
                acks = {"jobs": [{"id": j["id"], "token": j["token"]} for j in batch]}
                c.send_raw(wire.request(next(msgids), "ack", acks))

    task = asyncio.create_task(serve())
    try:
        yield c
    finally:
        task.cancel()
        await asyncio.wait({task}, timeout=5)
        assert task.done()
        await c.close()
