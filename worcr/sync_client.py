"""The blocking producer client, for code without an event loop (web views, scripts, Celery-style
call sites). `SyncClient` has the surface of `Client` and runs one on a private event loop in a
background daemon thread; any number of threads may call it at once (calls are handed to the loop
with `run_coroutine_threadsafe`, and pipelined on its single connection).

    with SyncClient("127.0.0.1:7401") as client:
        client.enqueue("email.send", "bob@example.com")
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar, Unpack

from worcr.client import DEFAULT_NODE, Client
from worcr.spec import EnqueueResult, JobOptions, JobSpec

__all__ = ["SyncClient"]

T = TypeVar("T")


class SyncClient:
    """Thread-safe blocking producer; `close()` it (or use `with`) to stop its thread."""

    def __init__(self, nodes: str | Sequence[str] = DEFAULT_NODE, **kwargs: Any) -> None:
        """Same arguments as `Client` (`token=`, `retry_deadline=`, ...). Connects lazily."""
        self._client: Client | None = Client(nodes, **kwargs)  # needs no loop to be built
        self._closed = False
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="worcr-sync-client", daemon=True
        )
        self._thread.start()

    @classmethod
    def connect(
        cls, nodes: str | Sequence[str] = DEFAULT_NODE, token: str | None = None, **kwargs: Any
    ) -> Self:
        """Create a client and connect now."""
        client = cls(nodes, token=token, **kwargs)
        try:
            client.open()
        except BaseException:
            client.close()
            raise
        return client

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def client(self) -> Client:
        """The underlying asyncio client (use it only from the private loop)."""
        if self._client is None:
            raise RuntimeError("the SyncClient is closed")
        return self._client

    def open(self) -> None:
        self._run(self.client.open())

    def enqueue(self, kind: str, *positional: Any, **options: Unpack[JobOptions]) -> EnqueueResult:
        """See `Client.enqueue`."""
        return self._run(self.client.enqueue(kind, *positional, **options))

    def enqueue_many(self, specs: Iterable[JobSpec | Mapping[str, Any]]) -> list[EnqueueResult]:
        """See `Client.enqueue_many`."""
        return self._run(self.client.enqueue_many(list(specs)))

    def close(self) -> None:
        """Close the connection and stop the private loop (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            if self._client is not None:
                self._run(self._client.close())
        finally:
            self._client = None
            self._stop_loop()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("SyncClient cannot be called from its own event loop thread")
        if not self._thread.is_alive():
            coro.close()
            raise RuntimeError("the SyncClient is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _stop_loop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._loop.close()
