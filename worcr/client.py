"""The asyncio producer client: enqueue jobs into a Worcr cluster over the TCP protocol.

    async with Client("127.0.0.1:7401") as client:
        result = await client.enqueue("email.send", "bob@example.com", tags=["eu"])

The client holds one connection (opened lazily, re-opened when lost, rotating over the given
nodes). Retryable failures (`UNAVAILABLE`, `SHUTTING_DOWN`, a lost connection, a timeout) are
retried with capped exponential backoff until a total deadline; this is safe because every job
gets its id on the client before the first try, so a re-sent enqueue is deduplicated by the node.
`enqueue_many` splits into batches of at most `Limits.max_batch` jobs (and under the frame limit)
and pipelines them on the connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, Unpack

from worcr.backoff import Backoff
from worcr.connection import Connection
from worcr.errors import ConnectionClosed, FrameTooLarge, RemoteError
from worcr.spec import EnqueueResult, JobOptions, JobSpec, new_job_id, spec_from_mapping
from worcr.wire import PROTOCOL_VERSION, ErrorCode, Limits

__all__ = ["DEFAULT_NODE", "Client", "build_spec", "normalize_nodes"]

LIMITS = Limits()  # defaults are readable on an instance only: Limits has __slots__

log = logging.getLogger(__name__)

DEFAULT_NODE = "127.0.0.1:7401"
_UNSET: Any = object()


def normalize_nodes(nodes: str | Sequence[str]) -> list[str]:
    """One address, a comma-separated list, or a sequence of addresses -> a non-empty list."""
    items = nodes.split(",") if isinstance(nodes, str) else list(nodes)
    out = [item.strip() for item in items if item and item.strip()]
    if not out:
        raise ValueError("no node address given: pass e.g. '127.0.0.1:7401'")
    return out


def build_spec(kind: str, positional: tuple[Any, ...], options: JobOptions) -> JobSpec:
    """The JobSpec of `enqueue(kind, *positional, **options)`."""
    spec = JobSpec(kind, **options)
    if positional:
        if "args" in options:
            raise TypeError("pass job arguments positionally or as args=..., not both")
        spec.args = list(positional)
    return spec


class Client:
    """Asyncio producer. `await Client.connect(...)`, or `async with Client(...)`."""

    def __init__(
        self,
        nodes: str | Sequence[str] = DEFAULT_NODE,
        *,
        token: str | None = None,
        name: str | None = None,
        connect_timeout: float = 10.0,
        request_timeout: float = 30.0,
        retry_deadline: float = 30.0,
        backoff: Backoff | None = None,
        pipeline: int = 8,
        id_factory: Callable[[], str] = new_job_id,
    ) -> None:
        self.nodes = normalize_nodes(nodes)
        self.token = token
        self.name = name
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.retry_deadline = retry_deadline
        self.backoff = backoff or Backoff()
        self.pipeline = max(1, pipeline)
        self._id_factory = id_factory
        self._conn: Connection | None = None
        self._dropped: set[Connection] = set()
        self._next_node = 0
        self._lock: asyncio.Lock | None = None
        self._closed = False
        self.hello: dict[str, Any] = {}
        self.max_batch = LIMITS.max_batch

    @classmethod
    async def connect(
        cls, nodes: str | Sequence[str] = DEFAULT_NODE, token: str | None = None, **kwargs: Any
    ) -> Self:
        """Create a client and open its connection (retrying until `retry_deadline`)."""
        client = cls(nodes, token=token, **kwargs)
        await client.open()
        return client

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    async def open(self) -> None:
        """Connect and say hello now rather than on the first enqueue."""
        self._closed = False
        await self._with_retry(self._ensure_connection)

    async def close(self) -> None:
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            self._dropped.add(conn)
        dropped, self._dropped = list(self._dropped), set()
        for old in dropped:
            await old.aclose()

    async def enqueue(
        self, kind: str, *positional: Any, **options: Unpack[JobOptions]
    ) -> EnqueueResult:
        """Enqueue one job. Arguments go positionally (`enqueue("k", 1, 2)`) or as `args=`
        (any msgpack value: a dict is passed to the handler as keyword arguments)."""
        wire_spec = build_spec(kind, positional, options).to_wire(self._id_factory)
        results = await self._enqueue_batch([wire_spec])
        return results[0]

    async def enqueue_many(
        self, specs: Iterable[JobSpec | Mapping[str, Any]]
    ) -> list[EnqueueResult]:
        """Enqueue many jobs, in order; every spec is validated before anything is sent.

        Batches are pipelined; if one fails for good the error is raised (earlier batches may
        have been enqueued: give ids to make a re-run idempotent).
        """
        wire_specs = [
            (spec if isinstance(spec, JobSpec) else spec_from_mapping(spec)).to_wire(
                self._id_factory
            )
            for spec in specs
        ]
        if not wire_specs:
            return []
        size = max(1, self.max_batch)
        batches = [wire_specs[i : i + size] for i in range(0, len(wire_specs), size)]
        if len(batches) == 1:
            return await self._enqueue_batch(batches[0])
        window = asyncio.Semaphore(self.pipeline)

        async def send(batch: list[dict[str, Any]]) -> list[EnqueueResult]:
            async with window:
                return await self._enqueue_batch(batch)

        tasks = [asyncio.create_task(send(batch)) for batch in batches]
        try:
            parts = await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return [result for part in parts for result in part]

    # -- internals ------------------------------------------------------------------------------

    async def _enqueue_batch(self, jobs: list[dict[str, Any]]) -> list[EnqueueResult]:
        try:
            answer = await self._call("enqueue", {"jobs": jobs})
        except FrameTooLarge:
            if len(jobs) == 1:
                raise
            half = len(jobs) // 2
            first = await self._enqueue_batch(jobs[:half])
            return first + await self._enqueue_batch(jobs[half:])
        items = answer.get("jobs") if isinstance(answer, dict) else None
        if not isinstance(items, list) or len(items) != len(jobs):
            raise RemoteError(
                ErrorCode.INTERNAL,
                f"the node answered enqueue of {len(jobs)} jobs with a malformed result",
            )
        return [
            EnqueueResult(str(item["id"]), str(item["state"]), bool(item.get("duplicate", False)))
            for item in items
        ]

    async def _call(self, method: str, params: dict[str, Any]) -> Any:
        async def attempt() -> Any:
            conn = await self._ensure_connection()
            try:
                async with asyncio.timeout(self.request_timeout):
                    return await conn.request(method, params)
            except TimeoutError:
                raise TimeoutError(
                    f"no answer from node {conn.name} to {method!r} in {self.request_timeout:g} s"
                ) from None

        return await self._with_retry(attempt)

    async def _with_retry(self, operation: Callable[[], Any]) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_deadline
        tries = 0
        while True:
            try:
                return await operation()
            except RemoteError as exc:
                if not exc.retryable:
                    raise
                if exc.code == ErrorCode.SHUTTING_DOWN:
                    self._drop_connection("node is shutting down")
                error: Exception = exc
            except (ConnectionClosed, OSError, TimeoutError) as exc:
                self._drop_connection(str(exc))
                error = exc
            if self._closed:
                raise ConnectionClosed("the client was closed") from error
            delay = self.backoff.delay(tries)
            tries += 1
            if loop.time() + delay > deadline:
                raise error
            log.warning("retrying in %.2f s after: %s", delay, error)
            await asyncio.sleep(delay)

    async def _ensure_connection(self) -> Connection:
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        if self._closed:
            raise ConnectionClosed("the client is closed")
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            conn = self._conn
            if conn is not None and not conn.closed:
                return conn
            address = self.nodes[self._next_node % len(self.nodes)]
            self._next_node += 1
            conn = await Connection.open(address, connect_timeout=self.connect_timeout)
            try:
                async with asyncio.timeout(self.connect_timeout):
                    hello = await conn.request("hello", self._hello_params())
            except BaseException:
                await conn.aclose()
                raise
            self.hello = hello if isinstance(hello, dict) else {}
            limits = self.hello.get("limits")
            if isinstance(limits, dict) and isinstance(limits.get("max_batch"), int):
                self.max_batch = max(1, limits["max_batch"])
            log.debug("connected to node %s (%s)", address, self.hello.get("node_id"))
            self._conn = conn
            return conn

    def _hello_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"protocol": PROTOCOL_VERSION, "tags": [], "capacity": 0}
        if self.token is not None:
            params["token"] = self.token
        if self.name is not None:
            params["name"] = self.name
        return params

    def _drop_connection(self, reason: str) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close(reason)
            # Kept so that close() can wait for its transport; finished ones are forgotten.
            self._dropped = {old for old in self._dropped if not old.finished}
            self._dropped.add(conn)
