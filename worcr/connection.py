"""One msgpack-RPC connection to a node: the transport under the producer client and the worker.

A single reader task feeds `wire.FrameDecoder` and dispatches what arrives: responses resolve the
future of their `msgid` (many requests may be in flight), notifications and requests from the node
go to the handlers given by the owner. Outgoing frames written in the same event-loop iteration are
coalesced into one `transport.write` (one syscall), and the writer only waits for the socket to
drain when the transport buffer grows large. When the connection closes, every request still in
flight fails with `ConnectionClosed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from worcr import wire
from worcr.errors import ConnectionClosed, FrameTooLarge, RemoteError
from worcr.wire import ErrorCode, Limits

__all__ = ["DEFAULT_PORT", "Connection", "parse_address"]

LIMITS = Limits()  # defaults are readable on an instance only: Limits has __slots__

log = logging.getLogger(__name__)

DEFAULT_PORT = 7401
_READ_SIZE = 256 << 10
_HIGH_WATER = 1 << 20  # bytes buffered in the transport before a writer awaits drain()

NotificationHandler = Callable[[str, dict[str, Any]], None]
RequestHandler = Callable[[str, dict[str, Any]], Awaitable[Any]]
CloseHandler = Callable[[ConnectionClosed], None]

_REQUEST = int(wire.MsgType.REQUEST)
_RESPONSE = int(wire.MsgType.RESPONSE)


def parse_address(address: str) -> tuple[str, int]:
    """`tcp://host:port`, `host:port`, `host`, `[::1]:port` -> (host, port)."""
    text = address.strip()
    scheme, sep, rest = text.partition("://")
    if sep:
        if scheme != "tcp":
            raise ValueError(f"unsupported scheme {scheme!r} in {address!r}: use tcp://host:port")
        text = rest
    text = text.rstrip("/")
    if not text:
        raise ValueError(f"empty node address {address!r}: use host:port")
    if text.startswith("["):
        host, _, tail = text[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad port {port_text!r} in node address {address!r}")
    return host, int(port_text)


class Connection:
    """A msgpack-RPC peer over asyncio streams. Create with `await Connection.open(address)`."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        on_notification: NotificationHandler | None = None,
        on_request: RequestHandler | None = None,
        on_close: CloseHandler | None = None,
        max_frame: int = LIMITS.max_frame,
        max_in_flight: int = LIMITS.max_in_flight_requests,
        name: str = "",
    ) -> None:
        self.name = name or _peer_name(writer)
        self._reader = reader
        self._writer = writer
        self._transport = writer.transport
        self._loop = asyncio.get_running_loop()
        self._on_notification = on_notification
        self._on_request = on_request
        self._on_close = on_close
        self._max_frame = max_frame
        self._max_in_flight = max_in_flight
        self._decoder = wire.FrameDecoder(max_frame)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._slot_waiters: list[asyncio.Future[None]] = []
        self._next_id = 0
        self._out: list[bytes] = []
        self._out_size = 0
        self._closed = False
        self._close_error: ConnectionClosed | None = None
        self._node_error: tuple[str, str] | None = None
        self._closed_event = asyncio.Event()
        self._request_tasks: set[asyncio.Task[None]] = set()
        self._reader_task = self._loop.create_task(
            self._read_loop(), name=f"worcr-read-{self.name}"
        )

    @classmethod
    async def open(
        cls,
        address: str,
        *,
        connect_timeout: float | None = 10.0,
        on_notification: NotificationHandler | None = None,
        on_request: RequestHandler | None = None,
        on_close: CloseHandler | None = None,
        max_frame: int = LIMITS.max_frame,
    ) -> Connection:
        """Connect to `address` (see `parse_address`); raises OSError or TimeoutError."""
        host, port = parse_address(address)
        async with asyncio.timeout(connect_timeout):
            reader, writer = await asyncio.open_connection(host, port, limit=_READ_SIZE)
        return cls(
            reader,
            writer,
            on_notification=on_notification,
            on_request=on_request,
            on_close=on_close,
            max_frame=max_frame,
            name=address,
        )

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def finished(self) -> bool:
        """Closed and its reader task done: nothing left to wait for."""
        return self._closed and self._reader_task.done()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    # -- sending --------------------------------------------------------------------------------

    def call(self, method: str, params: dict[str, Any]) -> asyncio.Future[Any]:
        """Send a request now and return the future of its result (no in-flight limit, no drain).

        The future fails with `RemoteError` if the node answers an error and with
        `ConnectionClosed` if the connection closes first. Raises `ConnectionClosed` at once if it
        is already closed and `FrameTooLarge` if the message is over the frame limit.
        """
        if self._closed:
            raise self._closed_exception()
        msgid = self._next_id
        pending = self._pending
        while msgid in pending:
            msgid = (msgid + 1) & 0xFFFFFFFF
        self._next_id = (msgid + 1) & 0xFFFFFFFF
        try:
            frame = wire.request(msgid, method, params)
        except (TypeError, ValueError, OverflowError) as exc:
            raise TypeError(f"cannot encode the {method!r} request as msgpack: {exc}") from None
        self._send(frame)
        fut: asyncio.Future[Any] = self._loop.create_future()
        pending[msgid] = fut
        return fut

    async def request(self, method: str, params: dict[str, Any]) -> Any:
        """Send a request and wait for its result, respecting the in-flight limit and drain.

        Bound the wait with `asyncio.timeout()`: a cancelled request frees its in-flight slot.
        """
        while len(self._pending) >= self._max_in_flight and not self._closed:
            waiter: asyncio.Future[None] = self._loop.create_future()
            self._slot_waiters.append(waiter)
            try:
                await waiter
            finally:
                if not waiter.done():
                    waiter.cancel()
        fut = self.call(method, params)
        try:
            if self._out_size + self._transport.get_write_buffer_size() > _HIGH_WATER:
                await self.drain()
            return await fut
        except asyncio.CancelledError:
            self._forget(fut)
            raise

    def notify(self, method: str, params: dict[str, Any]) -> None:
        """Send a notification; raises `ConnectionClosed` if the connection is closed."""
        if self._closed:
            raise self._closed_exception()
        self._send(wire.notification(method, params))

    async def drain(self) -> None:
        """Write what is buffered and wait until the transport buffer is below its high water."""
        self._flush_out()
        try:
            await self._writer.drain()
        except (ConnectionError, RuntimeError) as exc:
            self.close(f"write failed: {exc}")
            raise self._closed_exception() from None

    def _send(self, frame: bytes) -> None:
        size = len(frame) - 4
        if size > self._max_frame:
            raise FrameTooLarge(size, self._max_frame)
        out = self._out
        out.append(frame)
        self._out_size += len(frame)
        if len(out) == 1:
            self._loop.call_soon(self._flush_out)

    def _flush_out(self) -> None:
        out = self._out
        if not out or self._transport.is_closing():
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self._out_size = 0
        self._writer.write(data)

    # -- receiving ------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        reason = "the node closed the connection"
        reader = self._reader
        feed = self._decoder.feed
        try:
            while True:
                data = await reader.read(_READ_SIZE)
                if not data:
                    break
                for msg in feed(data):
                    self._dispatch(msg)
        except wire.ProtocolError as exc:
            reason = f"the node sent an invalid frame ({exc})"
            with contextlib.suppress(ConnectionClosed):
                self.notify("error", {"code": exc.code, "message": exc.message})
        except (ConnectionError, OSError) as exc:
            reason = f"connection lost ({exc})"
        except asyncio.CancelledError:
            reason = "connection closed"
        self.close(reason)

    def _dispatch(self, msg: list[Any]) -> None:
        kind = msg[0]
        if kind == _RESPONSE:
            fut = self._pending.pop(msg[1], None)
            if self._slot_waiters:
                self._wake_slot_waiter()
            if fut is None or fut.done():
                return
            error = msg[2]
            if error is None:
                fut.set_result(msg[3])
            else:
                fut.set_exception(_remote_error(error))
        elif kind == _REQUEST:
            task = self._loop.create_task(self._answer(msg[1], msg[2], msg[3]))
            self._request_tasks.add(task)
            task.add_done_callback(self._request_tasks.discard)
        else:
            method, params = msg[1], msg[2]
            if method == "error":
                self._node_error = (str(params.get("code", "")), str(params.get("message", "")))
            handler = self._on_notification
            if handler is None:
                return
            try:
                handler(method, params)
            except Exception:
                log.exception("handler for %r notification from %s failed", method, self.name)

    async def _answer(self, msgid: int, method: str, params: dict[str, Any]) -> None:
        error: dict[str, Any] | None = None
        result: Any = None
        if self._on_request is None:
            error = RemoteError(ErrorCode.UNKNOWN_METHOD, f"unknown method {method!r}").to_wire()
        else:
            try:
                result = await self._on_request(method, params)
            except RemoteError as exc:
                error = exc.to_wire()
            except Exception as exc:
                log.exception("handler for %r request from %s failed", method, self.name)
                error = RemoteError(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}").to_wire()
        if not self._closed:
            self._send(wire.response(msgid, error, result))

    def _forget(self, fut: asyncio.Future[Any]) -> None:
        """Drop a request whose caller gave up waiting, freeing its in-flight slot."""
        for msgid, other in self._pending.items():
            if other is fut:
                del self._pending[msgid]
                self._wake_slot_waiter()
                return

    def _wake_slot_waiter(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return

    # -- closing --------------------------------------------------------------------------------

    def close(self, reason: str = "connection closed by the client") -> None:
        """Close now (idempotent): buffered frames are written, pending requests fail."""
        if self._closed:
            return
        self._flush_out()
        self._closed = True
        code = None
        if self._node_error is not None:
            code, message = self._node_error
            reason = f"the node closed the connection: {code}: {message}"
        self._close_error = ConnectionClosed(f"{reason} [{self.name}]", code)
        with contextlib.suppress(RuntimeError):  # loop already closed
            self._writer.close()
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(self._closed_exception())
        for waiter in self._slot_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._slot_waiters.clear()
        if self._reader_task is not asyncio.current_task():
            self._reader_task.cancel()
        self._closed_event.set()
        if self._on_close is not None:
            try:
                self._on_close(self._close_error)
            except Exception:
                log.exception("close handler of connection %s failed", self.name)

    @property
    def node_error(self) -> str | None:
        """The code of the fatal `error` the node sent before closing (e.g. SHUTTING_DOWN)."""
        return None if self._node_error is None else self._node_error[0]

    async def wait_closed(self) -> None:
        """Wait until the connection is closed (by either side) and its tasks are done."""
        await self._closed_event.wait()
        tasks: list[asyncio.Future[Any]] = [self._reader_task, *self._request_tasks]
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self._writer.wait_closed()

    async def aclose(self, reason: str = "connection closed by the client") -> None:
        self.close(reason)
        await self.wait_closed()

    def _closed_exception(self) -> ConnectionClosed:
        base = self._close_error
        if base is None:
            return ConnectionClosed(f"connection to {self.name} is closed")
        return ConnectionClosed(str(base), base.code)


def _remote_error(error: dict[str, Any]) -> RemoteError:
    return RemoteError(
        str(error.get("code", ErrorCode.INTERNAL)),
        str(error.get("message", "")),
        bool(error.get("retryable", False)),
    )


def _peer_name(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)
