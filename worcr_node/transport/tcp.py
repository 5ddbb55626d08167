"""The TCP transport: accepts worker and producer connections and feeds bytes to Sessions.

Built on asyncio.Protocol (no stream objects per message) for throughput. Garbage, truncated or
oversized frames end only the offending connection; the server keeps serving the others.
"""

from __future__ import annotations

import asyncio
import logging
from typing import cast

from worcr.wire import ErrorCode
from worcr_node.config import HostPort
from worcr_node.listen import listen_error
from worcr_node.service import Service
from worcr_node.transport.session import Hub, Session

__all__ = ["TcpServer"]

log = logging.getLogger(__name__)


class _Connection(asyncio.Protocol):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.transport: asyncio.Transport | None = None
        self.session: Session | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.session = Session(self.hub, self.transport.write, self.transport.close, str(peer))

    def data_received(self, data: bytes) -> None:
        if self.session is not None:
            self.session.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.session is not None:
            self.session.connection_lost()


class TcpServer(Service):
    name = "tcp"

    def __init__(self, hub: Hub, address: HostPort) -> None:
        super().__init__()
        self.hub = hub
        self.address = address
        self.host = address.host
        self.port = address.port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: _Connection(self.hub), self.host, self.port, reuse_address=True
            )
        except OSError as exc:
            raise listen_error("workers", self.address, "WORCR_LISTEN", exc) from None
        sock = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])
        log.info("worker protocol on %s:%d", self.host, self.port, extra={"action": "listen"})

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def stop(self) -> None:
        self.stop_accepting()
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
