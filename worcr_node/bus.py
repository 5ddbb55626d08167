"""The bus: how the parts of every node hear the messages of `messages.py`, whichever node sent
them.

`publish(message)` hands the message to this node's handlers at once, then publishes it (one
envelope, `messages.encode`) for the other nodes. The bus listens, on one Redis connection, to
the topics its handlers want; a message from this node itself (its echo) is dropped there, in
this one place, so every handler hears each message exactly once. One type is the exception:
`JobEvents` (`via_redis`) reach this node's handlers through Redis too, like everyone's, so all
watchers see one order of events. A message that cannot be read
is logged and dropped; a handler that raises is logged and the others still run. Messages are
hints that save time: a node that misses one (Redis restarting, a full output buffer) learns the
same from its periodic reads (ready lanes, policy version, leases), so nothing is lost with
them. The store publishes one message itself: `LanesReady`, in the pipeline that pushes the
ready jobs (it encodes with `messages.encode` and this bus's `sender`; the node that pushed
tells its own dispatcher directly).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from worcr_node.messages import BadMessage, Message, decode, encode
from worcr_node.service import Service

__all__ = ["Bus", "Transport"]

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)


class Transport(Protocol):
    """Where envelopes travel (RedisIndex: pub/sub channels named after their topics)."""

    def channel(self, topic: str) -> str: ...

    async def publish(self, channel: str, text: str) -> None: ...

    async def listen_many(
        self,
        channels: list[str],
        handle: Callable[[str, str], None],
        stopping: Callable[[], bool],
    ) -> None: ...


class Bus(Service):
    name = "bus"

    def __init__(self, transport: Transport, sender: str | None = None) -> None:
        super().__init__()
        self.transport = transport
        self.sender = sender or uuid.uuid4().hex  # names this node's messages
        self._handlers: dict[str, list[Callable[[Any], None]]] = {}
        self.received = 0  # messages from other nodes, handled
        self.dropped = 0  # messages that could not be read

    def subscribe(self, kind: type[M], handler: Callable[[M], None]) -> None:
        """Call `handler` with every message of `kind` (this node's and the others'). Before
        `start`."""
        self._handlers.setdefault(kind.topic, []).append(handler)

    async def start(self) -> None:
        channels = [self.transport.channel(t) for t in self._handlers]
        if channels:
            self.spawn(self.transport.listen_many(channels, self._heard, lambda: self.stopping),
                       "listen")  # fmt: skip

    async def publish(self, message: Message, *, here: bool = True) -> None:
        """To this node's handlers now (unless `here` is False: they were given it already,
        with `deliver`), then to the other nodes (IndexUnavailable if Redis is down: the local
        handlers have heard it anyway)."""
        if here and not message.via_redis:
            self.deliver(message)
        await self.transport.publish(self.transport.channel(message.topic),
                                     encode(message, self.sender))  # fmt: skip

    def deliver(self, message: Message) -> None:
        """To this node's handlers only."""
        for handler in self._handlers.get(message.topic, ()):
            try:
                handler(message)
            except Exception:  # one handler's bug must not silence the others
                log.exception("bus: a %s handler failed", message.topic)

    def _heard(self, channel: str, text: str) -> None:
        try:
            envelope = decode(text)
        except BadMessage as exc:
            self.dropped += 1
            log.warning("bus: dropped a message on %s: %s", channel, exc)
            return
        if envelope.sender == self.sender and not envelope.message.via_redis:
            return  # its echo: this node's handlers heard it when it was published
        self.received += 1
        self.deliver(envelope.message)
