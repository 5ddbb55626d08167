"""A scriptable in-process fake node speaking the wire protocol, for SDK tests without services.

It implements just enough of docs/protocol.md: hello (with `running` adoption), enqueue, ack,
fail, yield (with fencing-token checks), capacity, bye, heartbeat, and credit-based pushing of
queued jobs. Every message it receives is recorded; tests wait on conditions, never on sleeps.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from worcr import wire
from worcr.wire import ErrorCode, Limits, RemoteError

MAX_FRAME = Limits().max_frame


class FakeSession:
    def __init__(self, node: FakeNode, writer: asyncio.StreamWriter) -> None:
        self.node = node
        self.writer = writer
        self.hello: dict[str, Any] | None = None
        self.capacity = 0
        self.held: dict[str, int] = {}  # job id -> token
        self.closed = False

    def send(self, frame: bytes) -> None:
        if not self.closed:
            self.writer.write(frame)

    def notify(self, method: str, params: dict[str, Any]) -> None:
        self.send(wire.notification(method, params))

    def close(self) -> None:
        self.closed = True
        self.writer.close()


class FakeNode:
    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.queue: deque[dict[str, Any]] = deque()
        self.sessions: list[FakeSession] = []
        self.jobs: dict[str, dict[str, Any]] = {}  # id -> job as pushed (latest token)
        self.leases: dict[str, int] = {}  # id -> token of the live attempt
        self.finished: list[tuple[str, str]] = []  # (method, id) of accepted reports
        self.drop_on: str | None = None  # close the connection instead of answering this method
        self.enqueued: list[dict[str, Any]] = []
        self.errors: dict[str, deque[RemoteError]] = {}  # method -> errors for its next calls
        self.heartbeat_ms = 50
        self.hello_extra: dict[str, Any] = {}
        self._tokens = itertools.count(1)
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._server: asyncio.Server | None = None
        self._conn_tasks: set[asyncio.Task[None]] = set()
        self.address = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.address = f"127.0.0.1:{port}"

    async def stop(self) -> None:
        for session in self.sessions:
            session.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await asyncio.gather(*self._conn_tasks, return_exceptions=True)

    # -- scripting ------------------------------------------------------------------------------

    def add_job(self, kind: str, args: Any = None, **extra: Any) -> str:
        job_id = extra.pop("id", None) or str(uuid.uuid4())
        job = {
            "id": job_id,
            "kind": kind,
            "args": [] if args is None else args,
            "tags": [],
            "tenant": "default",
            "attempt": 1,
            "max_attempts": 25,
            "reserve_for": 60.0,
            "enqueued_at": 0.0,
            **extra,
        }
        self.queue.append(job)
        self.pump()
        return job_id

    def fail_next(self, method: str, code: str, retryable: bool) -> None:
        self.errors.setdefault(method, deque()).append(RemoteError(code, "injected", retryable))

    def calls(self, method: str) -> list[dict[str, Any]]:
        return [params for name, params in self.received if name == method]

    def items(self, method: str) -> list[dict[str, Any]]:
        return [item for params in self.calls(method) for item in params.get("jobs", [])]

    def cancel(self, job_id: str, reason: str = "cancelled by test") -> None:
        self.leases.pop(job_id, None)
        for session in self.sessions:
            token = session.held.pop(job_id, None)
            if token is not None:
                session.notify(
                    "cancel", {"jobs": [{"id": job_id, "token": token}], "reason": reason}
                )
        self.pump()

    def drop_connections(self) -> None:
        for session in list(self.sessions):
            session.close()

    async def wait_for(self, predicate: Callable[[], bool], within: float = 5.0) -> None:
        if predicate():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((predicate, fut))
        async with asyncio.timeout(within):
            await fut

    # -- protocol -------------------------------------------------------------------------------

    def pump(self) -> None:
        for session in self.sessions:
            if session.closed or session.hello is None:
                continue
            batch = []
            while self.queue and len(session.held) < session.capacity:
                job = dict(self.queue.popleft(), token=next(self._tokens))
                session.held[job["id"]] = job["token"]
                self.leases[job["id"]] = job["token"]
                self.jobs[job["id"]] = job
                batch.append(job)
            if batch:
                session.notify("jobs", {"jobs": batch})

    def _changed(self) -> None:
        for entry in list(self._waiters):
            predicate, fut = entry
            if not fut.done() and predicate():
                fut.set_result(None)
                self._waiters.remove(entry)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conn_tasks.add(task)
        session = FakeSession(self, writer)
        self.sessions.append(session)
        decoder = wire.FrameDecoder(MAX_FRAME)
        try:
            while data := await reader.read(1 << 16):
                for msg in decoder.feed(data):
                    self._on_message(session, msg)
        except ConnectionError:
            pass
        finally:
            session.closed = True
            self.sessions.remove(session)
            writer.close()
            self._changed()
            self._conn_tasks.discard(task)

    def _on_message(self, session: FakeSession, msg: list[Any]) -> None:
        if msg[0] == wire.MsgType.NOTIFICATION:
            self.received.append((msg[1], msg[2]))
        elif msg[0] == wire.MsgType.REQUEST:
            _, msgid, method, params = msg
            self.received.append((method, params))
            if method == self.drop_on:
                self.drop_on = None
                session.close()
                return
            error: dict[str, Any] | None = None
            result: Any = None
            queued = self.errors.get(method)
            if queued:
                error = queued.popleft().to_wire()
            else:
                try:
                    result = self._answer(session, method, params)
                except RemoteError as exc:
                    error = exc.to_wire()
            session.send(wire.response(msgid, error, result))
            self.pump()
        self._changed()

    def _answer(self, session: FakeSession, method: str, params: dict[str, Any]) -> Any:
        if method == "hello":
            if params.get("token") == "bad":
                raise RemoteError(ErrorCode.UNAUTHORIZED, "bad token")
            session.hello = params
            session.capacity = params.get("capacity", 0)
            for item in params.get("running", []):
                session.held[item["id"]] = item["token"]
            return {
                "node_id": "fake",
                "session": "s1",
                "heartbeat_ms": self.heartbeat_ms,
                "limits": {},
                **self.hello_extra,
            }
        if method == "enqueue":
            self.enqueued.extend(params["jobs"])
            return {
                "jobs": [
                    {"id": j["id"], "state": "queued", "duplicate": False} for j in params["jobs"]
                ]
            }
        if method in ("ack", "fail", "yield"):
            results: list[Any] = []
            for item in params["jobs"]:
                if self.leases.get(item["id"]) == item["token"]:
                    del self.leases[item["id"]]
                    for other in self.sessions:
                        other.held.pop(item["id"], None)
                    self.finished.append((method, item["id"]))
                    results.append(None)
                else:
                    results.append({"code": "STALE_TOKEN", "message": "lease lost"})
            return {"results": results}
        if method == "capacity":
            session.capacity = params["capacity"]
            return {}
        if method == "bye":
            session.capacity = 0
            return {}
        raise RemoteError(ErrorCode.UNKNOWN_METHOD, method)


@pytest.fixture
async def fake_node() -> AsyncIterator[FakeNode]:
    node = FakeNode()
    await node.start()
    try:
        yield node
    finally:
        await node.stop()
