"""Parking: lanes set aside while a job limit they take from admits nothing.

When a limited claim finds a limit key full, the dispatcher takes the lane out of that worker
class's pick structure and parks it here under the key; other lanes, tenants and keys go on, so
a full key never blocks anything else. A key comes back when it may admit again:
- at the time the limit script computed (token buckets and windows): `block(key, retry_ms, n)`,
  which brings back as many lanes as the `n` units it will admit then can serve;
- when units of the key are released anywhere in the cluster (concurrency): `unpark(key, k)`,
  from the limits-freed pub/sub channel;
- and at least every `RECHECK` seconds in any case (a missed message), then all of its lanes.
Lanes come back in the order they were parked (round robin among the lanes waiting on one key),
so a full key shared by thousands of lanes costs a few script calls per freed unit, not one per
waiting lane. A key known to be full is also remembered (`is_full`), so a pick of another lane
behind it costs no script call at all.

Pure bookkeeping on the event loop's clock and timers: the dispatcher supplies `put_back`, which
re-offers a (class, lane) pair to its pick structure if both still exist.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

__all__ = ["RECHECK", "UNPARK_PER_UNIT", "Parking"]

RECHECK = 1.0  # seconds: a parked lane is retried at least this often
UNPARK_PER_UNIT = 2  # lanes put back per unit a limit frees

K = TypeVar("K", bound=Hashable)  # a worker class key


class Parking(Generic[K]):
    def __init__(self, put_back: Callable[[K, str], bool], wake: Callable[[], None]) -> None:
        """`put_back(class_key, lane)` re-offers a parked pair, False if it is gone."""
        self._put_back = put_back
        self._wake = wake
        self._full: dict[str, float] = {}  # key -> loop time it may admit again (inf: a release)
        self._waiting: dict[str, deque[tuple[K, str]]] = {}
        self._at: dict[tuple[K, str], str] = {}  # parked (class, lane) -> its key
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._units_then: dict[str, int] = {}  # key -> units it admits at its retry time

    def __len__(self) -> int:
        return len(self._at)

    def is_parked(self, class_key: K, lane: str) -> bool:
        return (class_key, lane) in self._at

    def is_full(self, key: str) -> bool:
        """Known to admit nothing now (from this node's last claim or block)."""
        return self._full.get(key, 0.0) > asyncio.get_running_loop().time()

    def park(self, class_key: K, lane: str, key: str) -> None:
        """Set the pair aside until `key` may admit (the caller took it out of its view)."""
        self._at[(class_key, lane)] = key
        self._waiting.setdefault(key, deque()).append((class_key, lane))
        if key not in self._timers:
            self._schedule(key, RECHECK)

    def block(self, key: str, retry_ms: int, units_then: int = 1) -> None:
        """`key` admits nothing for retry_ms (-1: until a holder releases units); at that time
        it admits `units_then` units."""
        loop = asyncio.get_running_loop()
        if retry_ms >= 0:
            delay = retry_ms / 1000
            self._full[key] = loop.time() + delay
            self._units_then[key] = units_then
        else:
            delay = RECHECK
            self._full[key] = math.inf
        self._schedule(key, delay)

    def unpark(self, key: str, budget: int | None) -> int:
        """`key` may admit again: put up to `budget` (None: all) of its pairs back; returns how
        many came back."""
        self._full.pop(key, None)
        waiting = self._waiting.get(key)
        if not waiting:
            return 0
        n = 0
        while waiting and (budget is None or n < budget):
            entry = waiting.popleft()
            if self._at.get(entry) != key:
                continue  # stale: forgotten, or parked again under another key
            del self._at[entry]
            if self._put_back(*entry):
                n += 1
        if waiting:
            self._schedule(key, RECHECK)  # the rest get their turn at the latest then
        else:
            del self._waiting[key]
        self._wake()
        return n

    def freed(self, keys: Iterable[str]) -> None:
        """Units of these keys (one entry per unit) were released somewhere in the cluster."""
        counts: dict[str, int] = {}
        for key in keys:
            counts[key] = counts.get(key, 0) + 1
        for key, count in counts.items():
            self.unpark(key, count * UNPARK_PER_UNIT)

    def forget_lane(self, lane: str, class_keys: Iterable[K]) -> None:
        """The lane left the ready set: drop its pairs (stale queue entries are skipped)."""
        for class_key in class_keys:
            self._at.pop((class_key, lane), None)

    def clear(self) -> None:
        """The policy changed: every lane is tried again."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._units_then.clear()
        self._full.clear()
        self._waiting.clear()
        self._at.clear()

    def _schedule(self, key: str, delay: float) -> None:
        loop = asyncio.get_running_loop()
        old = self._timers.get(key)
        if old is not None:
            if old.when() <= loop.time() + delay:
                return
            old.cancel()
        self._timers[key] = loop.call_later(delay, self._fired, key)

    def _fired(self, key: str) -> None:
        """A rate key's retry time (a few pairs back), or the re-check (all of them)."""
        self._timers.pop(key, None)
        units = self._units_then.pop(key, None)
        self.unpark(key, None if units is None else units * UNPARK_PER_UNIT)
