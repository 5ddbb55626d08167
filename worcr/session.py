"""The worker's link to the cluster: one live session with a node at a time, kept up forever.

Connect to a node, say `hello`, send `heartbeat` notifications every `heartbeat_ms`, and when the
connection drops (or a node cannot be reached) try again with backoff and jitter, rotating over the
configured nodes; after a drop the same node is tried first, except after the node said
SHUTTING_DOWN (it is going away: the next node is tried at once). The `hello` parameters are asked
from the owner at each attempt, so a reconnecting worker lists the jobs it still holds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from worcr.backoff import Backoff
from worcr.connection import Connection, NotificationHandler
from worcr.errors import ConnectionClosed, RemoteError
from worcr.wire import ErrorCode

__all__ = ["SessionLoop"]

log = logging.getLogger(__name__)

DEFAULT_HEARTBEAT = 5.0  # seconds, when the node's hello result does not say


class SessionLoop:
    """Keeps a session up; `on_session(conn, hello)` on each start, `(None, {})` on each loss."""

    def __init__(
        self,
        nodes: list[str],
        *,
        hello_params: Callable[[], dict[str, Any]],
        on_notification: NotificationHandler,
        on_session: Callable[[Connection | None, dict[str, Any]], None],
        backoff: Backoff,
        connect_timeout: float,
    ) -> None:
        self.nodes = nodes
        self.backoff = backoff
        self.connect_timeout = connect_timeout
        self.conn: Connection | None = None  # the connection of the live session
        self.established = False  # whether a hello ever succeeded
        self._hello_params = hello_params
        self._on_notification = on_notification
        self._on_session = on_session
        self._conns: set[Connection] = set()  # every open connection (at most two, briefly)

    async def run(self) -> None:
        """Run forever (cancel to stop). Raises `RemoteError` if the very first hello is
        refused for good (bad token, unsupported version): retrying would not help."""
        tries = 0
        index = 0
        while True:
            address = self.nodes[index % len(self.nodes)]
            index += 1
            session = await self._connect(address)
            if session is not None:
                conn, hello = session
                tries = 0
                try:
                    await self._serve(conn, hello, address)
                finally:
                    await self._discard(conn)
                if conn.node_error == ErrorCode.SHUTTING_DOWN and len(self.nodes) > 1:
                    continue  # the node is going away: the next one now, no backoff
                index -= 1  # after another drop, try the same node first
            delay = self.backoff.delay(tries)
            tries += 1
            log.info("reconnecting in %.2f s", delay)
            await asyncio.sleep(delay)

    async def aclose(self) -> None:
        """Close every connection (after cancelling `run`)."""
        for conn in list(self._conns):
            await self._discard(conn)

    async def _connect(self, address: str) -> tuple[Connection, dict[str, Any]] | None:
        """Open a connection and say hello; None (logged) if the node cannot be used now."""
        conn = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                conn = await Connection.open(address, on_notification=self._on_notification)
                self._conns.add(conn)  # closed by aclose() if cancelled from here on
                hello = await conn.request("hello", self._hello_params())
        except RemoteError as exc:
            await self._discard(conn)
            if not exc.retryable and not self.established:
                raise
            log.warning("node %s refused hello: %s", address, exc)
            return None
        except (OSError, TimeoutError, ConnectionClosed) as exc:
            await self._discard(conn)
            log.warning(
                "cannot reach node %s: %s (is it running? the worker keeps retrying)",
                address,
                exc or type(exc).__name__,
            )
            return None
        return conn, hello if isinstance(hello, dict) else {}

    async def _serve(self, conn: Connection, hello: dict[str, Any], address: str) -> None:
        beat = hello.get("heartbeat_ms")
        interval = beat / 1000 if isinstance(beat, int | float) and beat > 0 else DEFAULT_HEARTBEAT
        log.info("connected to node %s (%s)", address, hello.get("node_id"))
        self.established = True
        self.conn = conn
        self._on_session(conn, hello)
        beats = asyncio.get_running_loop().create_task(
            self._heartbeat(conn, interval), name=f"worcr-heartbeat-{address}"
        )
        try:
            await conn.wait_closed()
        finally:
            beats.cancel()
            self.conn = None
            self._on_session(None, {})
            await asyncio.gather(beats, return_exceptions=True)
        log.info("connection to node %s closed", address)

    async def _heartbeat(self, conn: Connection, interval: float) -> None:
        while not conn.closed:
            await asyncio.sleep(interval)
            try:
                conn.notify("heartbeat", {})
            except ConnectionClosed:
                return

    async def _discard(self, conn: Connection | None) -> None:
        if conn is not None:
            await conn.aclose()
            self._conns.discard(conn)
