"""The TCP transport: accepts worker and producer connections and feeds bytes to Sessions.

Built on asyncio.Protocol (no stream objects per message) for throughput. Garbage, truncated or
oversized frames end only the offending connection; the server keeps serving the others.

Every connection is bounded (docs/protocol.md section 11): the node refuses connections over
`max_connections` in total or `max_connections_per_ip` from one address (an `error` notification
TOO_MANY_CONNECTIONS, then close); it closes a connection that has not completed hello within
`hello_timeout` seconds; and it stops reading from a connection while more than `max_unsent`
bytes wait to be sent to it (a client that does not read cannot make the node queue answers
without end), resuming once they drop below a quarter of that.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import cast

from worcr import wire
from worcr.wire import ErrorCode, Limits
from worcr_node.config import HostPort
from worcr_node.listen import listen_error
from worcr_node.service import Service
from worcr_node.transport.session import Hub, Session

__all__ = ["ConnectionState", "TcpServer"]

log = logging.getLogger(__name__)

REFUSALS_LOGGED_EVERY = 10.0  # seconds


@dataclass(frozen=True, slots=True)
class ConnectionState:
    """One open connection as the transport sees it."""

    peer: str
    ip: str
    authenticated: bool
    reading: bool  # False while back-pressure holds (or the connection is closing)
    unsent: int  # bytes written to it that the peer has not taken yet


class _Gate:
    """The open connections, counted in total and per peer address against the limits."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.open: set[_Connection] = set()
        self.by_ip: dict[str, int] = {}
        self.refused = 0  # refusals not logged yet
        self.logged_at = float("-inf")

    def admit(self, conn: _Connection) -> str | None:
        """Count a new connection in; or, if it is one too many, say why (it is not counted)."""
        if len(self.open) >= self.limits.max_connections:
            return f"the node has {len(self.open)} connections, its limit"
        held = self.by_ip.get(conn.ip, 0)
        if held >= self.limits.max_connections_per_ip:
            return f"{held} connections from this address already, the limit"
        self.open.add(conn)
        self.by_ip[conn.ip] = held + 1
        return None

    def log_refusal(self, ip: str, why: str) -> None:
        """A warning at most every REFUSALS_LOGGED_EVERY seconds, with how many were refused
        since (a flood of connections must not become a flood of log lines)."""
        self.refused += 1
        now = asyncio.get_running_loop().time()
        if now - self.logged_at >= REFUSALS_LOGGED_EVERY:
            log.warning("refused %d connection(s) since the last warning; the latest from %s: %s",
                        self.refused, ip, why, extra={"action": "connection_refused"})  # fmt: skip
            self.refused = 0
            self.logged_at = now

    def release(self, conn: _Connection) -> None:
        self.open.remove(conn)
        left = self.by_ip[conn.ip] - 1
        if left:
            self.by_ip[conn.ip] = left
        else:
            del self.by_ip[conn.ip]


class _Connection(asyncio.Protocol):
    def __init__(self, hub: Hub, gate: _Gate) -> None:
        self.hub = hub
        self.gate = gate
        self.transport: asyncio.Transport | None = None
        self.session: Session | None = None
        self.peer = ""
        self.ip = ""
        self._hello_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = t = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer)
        self.ip = str(peer[0]) if isinstance(peer, tuple) else self.peer
        refused = self.gate.admit(self)
        if refused is not None:
            self.gate.log_refusal(self.ip, refused)
            message = f"too many connections: {refused}; retry later or use another node"
            t.write(wire.notification("error", {"code": ErrorCode.TOO_MANY_CONNECTIONS,
                                                "message": message}))  # fmt: skip
            t.close()
            return
        limits = self.hub.limits
        t.set_write_buffer_limits(high=limits.max_unsent, low=limits.max_unsent // 4)
        self.session = s = Session(self.hub, t.write, t.close, self.peer)
        self._hello_timer = asyncio.get_running_loop().call_later(limits.hello_timeout, s.hello_due)

    def data_received(self, data: bytes) -> None:
        if self.session is not None:
            self.session.data_received(data)

    def pause_writing(self) -> None:
        # More than max_unsent bytes wait for the peer: read no more requests until it reads.
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        if self.session is not None:
            self.session.connection_lost()
            self.session = None
            self.gate.release(self)


class TcpServer(Service):
    name = "tcp"

    def __init__(self, hub: Hub, address: HostPort) -> None:
        super().__init__()
        self.hub = hub
        self.address = address
        self.host = address.host
        self.port = address.port
        self._server: asyncio.Server | None = None
        self._gate = _Gate(hub.limits)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: _Connection(self.hub, self._gate), self.host, self.port,
                reuse_address=True,
            )  # fmt: skip
        except OSError as exc:
            raise listen_error("workers", self.address, "WORCR_LISTEN", exc) from None
        sock = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])
        log.info("worker protocol on %s:%d", self.host, self.port, extra={"action": "listen"})

    def connections(self) -> list[ConnectionState]:
        """The connections open now (refused ones are never counted)."""
        out = []
        for c in self._gate.open:
            if c.transport is None or c.session is None:  # never, while admitted
                continue
            out.append(
                ConnectionState(
                    c.peer,
                    c.ip,
                    c.session.authenticated,
                    c.transport.is_reading(),
                    c.transport.get_write_buffer_size(),
                )
            )
        return out

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def stop(self) -> None:
        """Graceful: requests already read are answered (an ack being committed gets its
        answer), later ones are refused with SHUTTING_DOWN (not applied: the worker sends them
        to another node), then every connection gets SHUTTING_DOWN and is closed."""
        self.stop_accepting()
        sessions = list(self.hub.sessions)
        for s in sessions:
            s.refusing = True
        under_way = [t for s in sessions for t in s.requests_under_way()]
        if under_way:
            await asyncio.wait(under_way, timeout=5)
        for s in list(self.hub.sessions):
            s.fatal(ErrorCode.SHUTTING_DOWN, "node is stopping: reconnect to another node")
        if self._server is not None:
            # Python >= 3.11.5 waits here for every connection to finish closing.
            try:
                await asyncio.wait_for(self._server.wait_closed(), 5)
            except TimeoutError:
                log.warning("connections still open at shutdown", extra={"action": "stop"})
            self._server = None
        await super().stop()
