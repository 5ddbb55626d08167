"""The messages nodes send each other over the bus (`bus.py`), and their one envelope.

Every cluster message is one of the frozen types below; on the wire each is a JSON object
`{"v": 1, "from": <sender>, "t": <topic>, "b": <body>}` published on the Redis channel
`{prefix}:bus:<topic>` (so a node subscribes to what it needs, and a message too new or malformed is
dropped with a warning, never half-read). `encode`/`decode` are the only code that knows the
formats; they are pure, so the store can publish a message inside a pipeline (ready lanes,
atomically with the push) without knowing the bus.

| type | topic | what it says | who listens |
|---|---|---|---|
| `LanesReady` | ready-lanes | these lanes got ready work (oldest new seq, if known) | dispatchers |
| `StopAttempts` | cancel | stop these attempts (job id, lease token), and why | worker sessions |
| `YieldAttempts` | yield | ask these attempts to yield, and why | worker sessions |
| `UnitsFreed` | limits-freed | these limit keys got units back (one entry per unit) | dispatchers |
| `PolicyChanged` | policy | the dispatch policy changed: read it now | policy watchers |
| `JobEvents` | events | progress, log and state events of jobs | event streams |
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

__all__ = [
    "TOPICS",
    "VERSION",
    "BadMessage",
    "Envelope",
    "JobEvents",
    "LanesReady",
    "Message",
    "PolicyChanged",
    "StopAttempts",
    "UnitsFreed",
    "YieldAttempts",
    "decode",
    "encode",
]

VERSION = 1

Attempt = tuple[str, int]  # (job id, lease token)


class BadMessage(ValueError):
    """A message that cannot be read (malformed, or of a newer version)."""


@dataclass(frozen=True, slots=True)
class LanesReady:
    topic: ClassVar[str] = "ready-lanes"
    via_redis: ClassVar[bool] = False
    heads: Mapping[str, int | None]  # lane -> the seq of its oldest new job (None: unknown)

    def body(self) -> Any:
        return dict(self.heads)

    @classmethod
    def read(cls, body: Any) -> LanesReady:
        if not isinstance(body, dict):
            raise BadMessage("ready-lanes: expected {lane: seq}")
        heads: dict[str, int | None] = {}
        for lane, seq in body.items():
            if seq is not None and (not isinstance(seq, int) or isinstance(seq, bool)):
                raise BadMessage("ready-lanes: a seq must be an integer or null")
            heads[str(lane)] = seq
        return cls(heads)


def _attempts(body: Any, topic: str) -> tuple[tuple[Attempt, ...], str]:
    if not isinstance(body, dict) or not isinstance(body.get("reason"), str):
        raise BadMessage(f"{topic}: expected {{attempts, reason}}")
    out = []
    for item in body.get("attempts") or ():
        if (not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], str)
                or not isinstance(item[1], int) or isinstance(item[1], bool)):  # fmt: skip
            raise BadMessage(f"{topic}: an attempt is [job id, token]")
        out.append((item[0], item[1]))
    return tuple(out), body["reason"]


@dataclass(frozen=True, slots=True)
class _AttemptsMessage:
    """Attempts (job id, lease token) some node should act on, and why."""

    topic: ClassVar[str]
    via_redis: ClassVar[bool] = False
    attempts: tuple[Attempt, ...]
    reason: str

    def body(self) -> Any:
        return {"attempts": [list(a) for a in self.attempts], "reason": self.reason}

    @classmethod
    def read(cls, body: Any) -> Self:
        return cls(*_attempts(body, cls.topic))


@dataclass(frozen=True, slots=True)
class StopAttempts(_AttemptsMessage):
    topic: ClassVar[str] = "cancel"
    reason: str = "cancelled"


@dataclass(frozen=True, slots=True)
class YieldAttempts(_AttemptsMessage):
    topic: ClassVar[str] = "yield"
    reason: str = "max_run_time"


@dataclass(frozen=True, slots=True)
class UnitsFreed:
    topic: ClassVar[str] = "limits-freed"
    via_redis: ClassVar[bool] = False
    keys: tuple[str, ...]

    def body(self) -> Any:
        return list(self.keys)

    @classmethod
    def read(cls, body: Any) -> UnitsFreed:
        if not isinstance(body, list) or not all(isinstance(k, str) for k in body):
            raise BadMessage("limits-freed: expected a list of keys")
        return cls(tuple(body))


@dataclass(frozen=True, slots=True)
class PolicyChanged:
    topic: ClassVar[str] = "policy"
    via_redis: ClassVar[bool] = False

    def body(self) -> Any:
        return None

    @classmethod
    def read(cls, body: Any) -> PolicyChanged:
        return cls()


@dataclass(frozen=True, slots=True)
class JobEvents:
    topic: ClassVar[str] = "events"
    # every node, the publisher included, hears these through Redis: one order for all watchers
    via_redis: ClassVar[bool] = True
    events: tuple[Mapping[str, Any], ...]

    def body(self) -> Any:
        return list(self.events)

    @classmethod
    def read(cls, body: Any) -> JobEvents:
        if not isinstance(body, list):
            raise BadMessage("events: expected a list of events")
        return cls(tuple(e for e in body if isinstance(e, dict)))


Message = LanesReady | StopAttempts | YieldAttempts | UnitsFreed | PolicyChanged | JobEvents
TYPES: dict[str, type[Message]] = {
    t.topic: t
    for t in (LanesReady, StopAttempts, YieldAttempts, UnitsFreed, PolicyChanged, JobEvents)
}
TOPICS = tuple(TYPES)


@dataclass(frozen=True, slots=True)
class Envelope:
    sender: str
    message: Message


def encode(message: Message, sender: str) -> str:
    return json.dumps({"v": VERSION, "from": sender, "t": message.topic, "b": message.body()},
                      separators=(",", ":"))  # fmt: skip


def decode(text: str) -> Envelope:
    """The envelope of a message; BadMessage if it cannot be read."""
    try:
        raw = json.loads(text)
    except ValueError:
        raise BadMessage("not JSON") from None
    if not isinstance(raw, dict):
        raise BadMessage("not an envelope")
    if raw.get("v") != VERSION:
        raise BadMessage(f"envelope version {raw.get('v')!r} (this node reads {VERSION})")
    kind = TYPES.get(raw.get("t"))  # type: ignore[arg-type]
    sender = raw.get("from")
    if kind is None or not isinstance(sender, str):
        raise BadMessage(f"unknown topic {raw.get('t')!r} or sender")
    return Envelope(sender, kind.read(raw.get("b")))
