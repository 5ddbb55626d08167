"""A minimal wire-protocol client for tests: raw frames over a real TCP connection.

Deliberately independent of the SDK, so node tests exercise the protocol as documented and the
SDK is tested against the node separately.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from worcr import wire


class RawClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = wire.FrameDecoder(1 << 24)
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[list[Any]]] = {}
        self.notifications: asyncio.Queue[list[Any]] = asyncio.Queue()
        self.closed = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def connect(cls, address: str) -> RawClient:
        host, port = address.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        return cls(reader, writer)

    async def _read(self) -> None:
        try:
            while data := await self.reader.read(65536):
                for msg in self.decoder.feed(data):
                    if msg[0] == wire.MsgType.RESPONSE and msg[1] in self.pending:
                        self.pending.pop(msg[1]).set_result(msg)
                    else:
                        self.notifications.put_nowait(msg)
        except (ConnectionError, OSError):
            pass
        finally:
            self.closed.set()
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("closed"))

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    async def call_raw(self, method: str, params: dict[str, Any]) -> list[Any]:
        """The whole response message [1, msgid, error, result]."""
        msgid = next(self.ids)
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self.pending[msgid] = fut
        self.writer.write(wire.request(msgid, method, params))
        return await asyncio.wait_for(fut, 10)

    async def call(self, method: str, params: dict[str, Any]) -> Any:
        msg = await self.call_raw(method, params)
        if msg[2] is not None:
            raise wire.RemoteError(
                msg[2]["code"], msg[2]["message"], msg[2].get("retryable", False)
            )
        return msg[3]

    def notify(self, method: str, params: dict[str, Any]) -> None:
        self.writer.write(wire.notification(method, params))

    async def hello(self, **params: Any) -> Any:
        return await self.call("hello", {"protocol": 1, **params})

    async def next_notification(self, method: str, timeout: float = 10) -> dict[str, Any]:
        while True:
            msg = await asyncio.wait_for(self.notifications.get(), timeout)
            if msg[0] == wire.MsgType.NOTIFICATION and msg[1] == method:
                params: dict[str, Any] = msg[2]
                return params

    async def jobs(self, n: int, timeout: float = 10) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while len(out) < n:
            out.extend((await self.next_notification("jobs", timeout))["jobs"])
        return out

    async def close(self) -> None:
        self.writer.close()
        self._task.cancel()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass
