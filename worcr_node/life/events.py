"""The event stream: job progress, log lines and state changes, from any node to every watcher.

A node that stores an update publishes it on the bus (`JobEvents`, a batch of events per
message); every node, this one included, hears it through Redis (`via_redis`) and hands each
event to its local subscribers (HTTP streams), filtered by job, kind or tenant. Going through
Redis even for local subscribers gives one order for everyone.

Events are published only while somebody watches: a node with subscribers keeps a short-lived
Redis key set, and every node checks it once a second, so a cluster nobody watches pays nothing
for events (nor decodes them: a node without subscribers ignores the channel's messages). A new
watcher may miss up to a second of events from other nodes (a job's stream re-reads the job for
that). A subscriber that cannot keep up loses events rather than slow the node: it is told how
many.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from worcr_node.bus import Bus
from worcr_node.messages import JobEvents
from worcr_node.service import Service
from worcr_node.store.redis_index import IndexUnavailable, RedisIndex

__all__ = ["EventStreams", "Subscription"]

log = logging.getLogger(__name__)

WATCH_TTL_MS = 5000  # the watched key outlives its refresh (every 1 s) several times over
QUEUE_SIZE = 2000  # events a subscriber may have waiting before it starts losing them
MAX_PENDING = 50_000  # events waiting to be published (Redis slow or down) before new ones drop
CHUNK = 500  # events per published message (Redis client output buffers stay small)

Event = dict[str, Any]


class Subscription:
    """Events for one watcher: all jobs, or one job, optionally only some kinds and tenants."""

    def __init__(
        self,
        streams: EventStreams,
        job: str | None = None,
        kinds: Iterable[str] = (),
        tenants: Iterable[str] = (),
        types: Iterable[str] = (),
    ) -> None:
        self.streams = streams
        self.job = job
        self.kinds = frozenset(kinds)
        self.tenants = frozenset(tenants)
        self.types = frozenset(types)
        self.queue: asyncio.Queue[Event] = asyncio.Queue(QUEUE_SIZE)
        self.lost = 0  # events dropped because the queue was full (the reader resets it)

    def wants(self, event: Event) -> bool:
        if self.job is not None and event.get("job") != self.job:
            return False
        if self.types and event.get("type") not in self.types:
            return False
        if self.kinds and event.get("kind") not in self.kinds:
            return False
        return not (self.tenants and event.get("tenant") not in self.tenants)

    def offer(self, event: Event) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.lost += 1

    async def get(self, within: float) -> Event | None:
        """The next event, or None after `within` seconds without one."""
        try:
            async with asyncio.timeout(within):
                return await self.queue.get()
        except TimeoutError:
            return None

    def close(self) -> None:
        self.streams.unsubscribe(self)


class EventStreams(Service):
    name = "events"

    def __init__(self, index: RedisIndex, bus: Bus) -> None:
        super().__init__()
        self.index = index  # the watched key
        self.bus = bus  # JobEvents, to this node's streams and the others'
        self.subscribers: set[Subscription] = set()
        self.watched = False  # some node streams events: publish state changes too
        self.published = 0
        self.dropped = 0  # events not published: over MAX_PENDING, or Redis failed
        self._pending: list[Event] = []
        self._flushing = False
        self._wake = asyncio.Event()

    async def start(self) -> None:
        self.spawn(self._watch(), "watch")
        self.spawn(self._publisher(), "publish")

    # -- producing -------------------------------------------------------------------------------

    def publish(self, events: Iterable[Event]) -> None:
        """Queue events for the channel (while somebody watches); sent as soon as the previous
        message is out."""
        if not self.watched:
            return
        room = MAX_PENDING - len(self._pending)
        batch = list(events)
        if len(batch) > room:
            self.dropped += len(batch) - max(room, 0)
            batch = batch[: max(room, 0)]
        self._pending.extend(batch)
        if self._pending:
            self._wake.set()

    def publish_states(self, changes: Iterable[tuple[str, str, str, str]]) -> None:
        """(job id, new state, kind, tenant) changes (not even built unless somebody watches)."""
        if self.watched:
            self.publish(
                {"type": "state", "job": job, "state": state, "kind": kind, "tenant": tenant}
                for job, state, kind, tenant in changes
            )

    async def _publisher(self) -> None:
        while not self.stopping:
            await self._wake.wait()
            self._wake.clear()
            pending, self._pending = self._pending, []
            for i in range(0, len(pending), CHUNK):
                batch = pending[i : i + CHUNK]
                try:
                    await self.bus.publish(JobEvents(tuple(batch)))
                    self.published += len(batch)
                except Exception as exc:  # events are a view: the stored state stays readable
                    self.dropped += len(batch)
                    log.warning("%d event(s) not published: %s", len(batch), exc)

    # -- consuming -------------------------------------------------------------------------------

    def subscribe(
        self,
        job: str | None = None,
        kinds: Iterable[str] = (),
        tenants: Iterable[str] = (),
        types: Iterable[str] = (),
    ) -> Subscription:
        sub = Subscription(self, job, kinds, tenants, types)
        first = not self.subscribers
        self.subscribers.add(sub)
        if first:
            self.watched = True
            self.spawn(self._mark_watched(), "mark-watched")
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self.subscribers.discard(sub)

    def deliver(self, message: JobEvents) -> None:
        """Events of any node (`JobEvents` on the bus) to this node's subscribers."""
        if not self.subscribers:
            return
        for item in message.events:
            event = dict(item)
            for sub in self.subscribers:
                if sub.wants(event):
                    sub.offer(event)

    async def _mark_watched(self) -> None:
        try:
            await self.index.watched_set(WATCH_TTL_MS)
        except IndexUnavailable:
            pass

    async def _watch(self) -> None:
        """Once a second: keep the watched key set while this node has subscribers, and learn
        whether any node has."""
        while not self.stopping:
            try:
                if self.subscribers:
                    await self.index.watched_set(WATCH_TTL_MS)
                    self.watched = True
                else:
                    self.watched = await self.index.watched()
            except IndexUnavailable:
                pass
            await asyncio.sleep(1.0)
