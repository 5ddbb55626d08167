"""Worker processes for integration tests: `python -m worcr.worker tests.integration.jobs.sample`.

Workers announce on stdout that a job started (see tests/integration/jobs/sample.py), so tests
await that line instead of sleeping. The `spawn_worker` fixture (tests/conftest.py) starts them
and kills whatever is left at the end of the test.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from worcr_node.node import Node

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = "tests.integration.jobs.sample"


class WorkerProcess:
    """`python -m worcr.worker tests.integration.jobs.sample` as a child process."""

    def __init__(self, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path

    @classmethod
    async def start(cls, node: Node, log_path: Path, *options: str) -> WorkerProcess:
        with log_path.open("ab") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "worcr.worker", SAMPLE,
                "--nodes", node.worker_address, "--log-level", "DEBUG", *options,
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
