"""The bus messages (one envelope, strict reading) and the bus itself (each handler hears each
message once, its own node's included; echoes dropped in one place), over an in-memory
transport that carries envelopes between several buses like Redis pub/sub does."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest

from worcr_node.bus import Bus
from worcr_node.messages import (
    BadMessage,
    JobEvents,
    LanesReady,
    Message,
    PolicyChanged,
    StopAttempts,
    UnitsFreed,
    YieldAttempts,
    decode,
    encode,
)

SAMPLES: list[Message] = [
    LanesReady({"a": 3, "b": None}),
    StopAttempts((("j1", 4), ("j2", 1)), "max_run_time"),
    YieldAttempts((("j1", 4),), "max_run_time"),
    UnitsFreed(("L:k1", "L:k1", "L:k2")),
    PolicyChanged(),
    JobEvents(({"type": "progress", "job": "j1", "counters": {"n": [1, 2]}},)),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_comes_back_as_sent(message: Message) -> None:
    envelope = decode(encode(message, "node-a"))
    assert envelope.sender == "node-a"
    assert envelope.message == message


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "not an envelope"),
        ('{"v": 2, "from": "x", "t": "policy", "b": null}', "version 2"),
        ('{"v": 1, "from": "x", "t": "gossip", "b": null}', "unknown topic"),
        ('{"v": 1, "t": "policy", "b": null}', "sender"),
        ('{"v": 1, "from": "x", "t": "ready-lanes", "b": ["a"]}', "lane"),
        ('{"v": 1, "from": "x", "t": "ready-lanes", "b": {"a": "3"}}', "integer"),
        (
            '{"v": 1, "from": "x", "t": "cancel", "b": {"attempts": [["j", "1"]], "reason": "x"}}',
            "attempt",
        ),
        ('{"v": 1, "from": "x", "t": "cancel", "b": {"attempts": []}}', "reason"),
        ('{"v": 1, "from": "x", "t": "limits-freed", "b": [1]}', "keys"),
        ('{"v": 1, "from": "x", "t": "events", "b": {}}', "list"),
    ],
)
def test_a_message_that_cannot_be_read_is_refused_whole(text: str, words: str) -> None:
    with pytest.raises(BadMessage, match=words):
        decode(text)


class Wire:
    """An in-memory pub/sub: every envelope published reaches every listener of its channel
    (the publisher's own included, like Redis)."""

    def __init__(self) -> None:
        self.listeners: list[tuple[list[str], Callable[[str, str], None]]] = []
        self.sent: list[tuple[str, str]] = []

    def link(self) -> Link:
        return Link(self)


class Link:
    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        self.listening = asyncio.Event()

    def channel(self, topic: str) -> str:
        return f"{{t}}:{topic}"

    async def publish(self, channel: str, text: str) -> None:
        self.wire.sent.append((channel, text))
        for channels, handle in self.wire.listeners:
            if channel in channels:
                handle(channel, text)

    async def listen_many(
        self, channels: list[str], handle: Callable[[str, str], None], stopping: Any
    ) -> None:
        self.wire.listeners.append((channels, handle))
        self.listening.set()
        await asyncio.Event().wait()  # until cancelled


async def started(bus: Bus, link: Link) -> Bus:
    await bus.start()
    await link.listening.wait()
    return bus


async def test_each_handler_hears_each_message_once_whoever_sent_it() -> None:
    wire = Wire()
    a_link, b_link = wire.link(), wire.link()
    a, b = Bus(a_link, "a"), Bus(b_link, "b")
    heard: dict[str, list[Any]] = {"a": [], "b": []}
    for name, bus in (("a", a), ("b", b)):
        bus.subscribe(StopAttempts, lambda m, name=name: heard[name].append(m))
    await started(a, a_link)
    await started(b, b_link)
    try:
        stop = StopAttempts((("j", 1),), "cancelled")
        await a.publish(stop)
        assert heard == {"a": [stop], "b": [stop]}  # a heard it at once, its echo dropped
        assert (a.received, b.received) == (0, 1)
        # a message only this node should hear again (it was told first) is published only
        await a.publish(stop, here=False)
        assert heard == {"a": [stop], "b": [stop, stop]}
        # nobody listens to a topic without handlers
        await a.publish(PolicyChanged())
        assert b.received == 2
    finally:
        await a.stop()
        await b.stop()


async def test_a_bad_message_or_a_failing_handler_stops_nothing() -> None:
    wire = Wire()
    link = wire.link()
    bus = Bus(link, "me")
    got: list[Message] = []

    def broken(m: UnitsFreed) -> None:
        raise RuntimeError("a bug in one handler")

    bus.subscribe(UnitsFreed, broken)
    bus.subscribe(UnitsFreed, got.append)
    await started(bus, link)
    try:
        channel = link.channel(UnitsFreed.topic)
        await link.publish(channel, "garbage")
        await link.publish(channel, json.dumps({"v": 9, "from": "x", "t": "limits-freed"}))
        assert bus.dropped == 2
        freed = UnitsFreed(("k",))
        await link.publish(channel, encode(freed, "other"))
        assert got == [freed]  # the broken handler did not keep the message from the next one
    finally:
        await bus.stop()


async def test_job_events_reach_every_node_through_the_wire_its_own_included() -> None:
    """`JobEvents` (via_redis): not handed over locally, heard from the wire by every node, the
    publisher included, so every watcher sees one order."""
    wire = Wire()
    a_link, b_link = wire.link(), wire.link()
    a, b = Bus(a_link, "a"), Bus(b_link, "b")
    heard: dict[str, list[Any]] = {"a": [], "b": []}
    for name, bus in (("a", a), ("b", b)):
        bus.subscribe(JobEvents, lambda m, name=name: heard[name].append(m))
    await started(a, a_link)
    await started(b, b_link)
    try:
        events = JobEvents(({"type": "log", "job": "j"},))
        await a.publish(events)
        assert heard == {"a": [events], "b": [events]}
        assert (a.received, b.received) == (1, 1)
    finally:
        await a.stop()
        await b.stop()
