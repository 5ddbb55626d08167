"""Service: a long-lived component that owns and names its asyncio tasks.

`start()` spawns tasks; `stop()` cancels and awaits them (stop before start and double stop are
fine). If a task dies with an error the service calls `on_crash`, which the node wires to a
clean shutdown: no fire-and-forget tasks anywhere in the node.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["Service"]

log = logging.getLogger(__name__)


class Service:
    name = "service"

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self.stopping = False  # loops check it: some libraries turn a cancel into an error
        self.on_crash: Callable[[str, BaseException], None] = lambda name, exc: None

    async def start(self) -> None:
        """Spawn the service's tasks."""

    def spawn(self, coro: Coroutine[Any, Any, Any], what: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.name}:{what}")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("task %s crashed", task.get_name(), exc_info=exc,
                      extra={"action": "crash"})  # fmt: skip
            self.on_crash(task.get_name(), exc)

    async def stop(self) -> None:
        self.stopping = True
        for _ in range(10):  # a task that swallowed its cancel gets another, up to 5 s in all
            tasks = [t for t in self._tasks if not t.done()]
            if not tasks:
                break
            for t in tasks:
                t.cancel()
            await asyncio.wait(tasks, timeout=0.5)
        else:
            log.error("%s: tasks did not stop: %s", self.name,
                      [t.get_name() for t in self._tasks if not t.done()])  # fmt: skip
        self._tasks.clear()
