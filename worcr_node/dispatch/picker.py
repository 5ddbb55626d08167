"""The pick: which ready lane one class of workers takes from next, in O(log n).

A worker class is the set of workers with the same kinds and tags: they see the same lanes with
the same effective weights (lane weight x rule factors; forbidden lanes are absent). For a class,
ready lanes sit in a three-level structure:

    scope (kinds sharing a fairness strategy)     stride, share = its largest effective weight
      tenant (or one pseudo-tenant under fifo)    the strategy: rotation, stride by tenant
                                                  weight, or fewest running first
        weight class (lanes of equal weight)      stride, share = the effective weight
          lane                                    oldest head first (lowest seq)

Every level is a lazy heap or a rotation, so one pick and one charge cost O(log n) in the
number of lanes and tenants, never O(n) and never anything in the backlog size. The structure
is pure: the dispatcher feeds it lanes, heads and running counts and asks it for picks.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from worcr_node.dispatch.fairness import DEFAULT_SCOPE, Fairness, Strategy

__all__ = ["ClassView", "LaneEntry", "LazyHeap", "RotationQueue", "StrideQueue"]

K = TypeVar("K", bound=Hashable)
FIFO_TENANT = "*"


class LazyHeap(Generic[K]):
    """A keyed min-heap: set() re-prioritises, discard() removes, both O(log n) amortised."""

    __slots__ = ("_heap", "_live", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[Any, int, K]] = []
        self._live: dict[K, tuple[Any, int]] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, key: object) -> bool:
        return key in self._live

    def set(self, key: K, prio: Any) -> None:
        n = next(self._seq)
        self._live[key] = (prio, n)
        heapq.heappush(self._heap, (prio, n, key))
        if len(self._heap) > 2 * len(self._live) + 64:
            self._heap = [(p, s, k) for k, (p, s) in self._live.items()]
            heapq.heapify(self._heap)

    def prio(self, key: K) -> Any:
        return self._live[key][0]

    def discard(self, key: K) -> None:
        self._live.pop(key, None)

    def peek(self) -> K | None:
        heap = self._heap
        while heap:
            _, n, key = heap[0]
            cur = self._live.get(key)
            if cur is not None and cur[1] == n:
                return key
            heapq.heappop(heap)
        return None

    def ordered(self) -> list[K]:
        """Live keys in pick order (O(n log n): for explain, not for dispatch)."""
        return [k for k, _ in sorted(self._live.items(), key=lambda kv: kv[1])]


class StrideQueue(Generic[K]):
    """Stride scheduling: each key advances its pass by n/share per n jobs; least pass goes next.

    A key that joins starts at the current virtual time, so an idle key cannot bank credit.
    """

    __slots__ = ("_heap", "_share", "vtime")

    def __init__(self) -> None:
        self._heap: LazyHeap[K] = LazyHeap()
        self._share: dict[K, float] = {}
        self.vtime = 0.0

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, key: K, share: float) -> None:
        self._share[key] = share
        if key not in self._heap:
            self._heap.set(key, self.vtime)

    def reshare(self, key: K, share: float) -> None:
        if key in self._share:
            self._share[key] = share

    def discard(self, key: K) -> None:
        self._heap.discard(key)
        self._share.pop(key, None)

    def peek(self) -> K | None:
        return self._heap.peek()

    def charge(self, key: K, n: int) -> None:
        if key in self._heap:
            start = self._heap.prio(key)
            self.vtime = max(self.vtime, start)
            self._heap.set(key, start + n / self._share[key])

    def position(self, key: K) -> dict[str, Any]:
        order = self._heap.ordered()
        return {"rank": order.index(key) if key in order else None, "of": len(order),
                "pass": self._heap.prio(key) if key in self._heap else None,
                "vtime": self.vtime}  # fmt: skip


class RotationQueue(Generic[K]):
    """Round robin: the front key goes next, then moves to the back."""

    __slots__ = ("_gen", "_q", "_seq")

    def __init__(self) -> None:
        self._q: deque[tuple[K, int]] = deque()
        self._gen: dict[K, int] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._gen)

    def add(self, key: K, share: float = 1.0) -> None:
        if key not in self._gen:
            n = next(self._seq)
            self._gen[key] = n
            self._q.append((key, n))

    def discard(self, key: K) -> None:
        self._gen.pop(key, None)
        if len(self._q) > 2 * len(self._gen) + 64:
            self._q = deque((k, n) for k, n in self._q if self._gen.get(k) == n)

    def peek(self) -> K | None:
        q = self._q
        while q:
            key, n = q[0]
            if self._gen.get(key) == n:
                return key
            q.popleft()
        return None

    def charge(self, key: K, n: int) -> None:
        if self.peek() == key:
            self._q.popleft()
            gen = next(self._seq)
            self._gen[key] = gen
            self._q.append((key, gen))

    def position(self, key: K) -> dict[str, Any]:
        order = [k for k, n in self._q if self._gen.get(k) == n]
        return {"rank": order.index(key) if key in order else None, "of": len(order)}


class FewestQueue(Generic[K]):
    """Fewest running first; among equals, the one served least recently."""

    __slots__ = ("_clock", "_heap", "_served", "running")

    def __init__(self, running: Callable[[K], int]) -> None:
        self._clock = itertools.count(1)
        self._heap: LazyHeap[K] = LazyHeap()
        self._served: dict[K, int] = {}
        self.running = running

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, key: K, share: float = 1.0) -> None:
        if key not in self._heap:
            self._served.setdefault(key, 0)
            self._heap.set(key, (self.running(key), self._served[key]))

    def discard(self, key: K) -> None:
        self._heap.discard(key)
        self._served.pop(key, None)

    def touch(self, key: K) -> None:
        """The key's running count changed."""
        if key in self._heap:
            self._heap.set(key, (self.running(key), self._served[key]))

    def peek(self) -> K | None:
        return self._heap.peek()

    def charge(self, key: K, n: int) -> None:
        if key in self._heap:
            self._served[key] = next(self._clock)
            self._heap.set(key, (self.running(key), self._served[key]))

    def position(self, key: K) -> dict[str, Any]:
        order = self._heap.ordered()
        return {"rank": order.index(key) if key in order else None, "of": len(order),
                "running": self.running(key)}  # fmt: skip


@dataclass(slots=True)
class LaneEntry:
    lane: str
    scope: str
    tenant: str  # the fairness key: the job tenant, or FIFO_TENANT
    weight: float  # effective weight for this class
    head: int  # seq of the oldest ready job, as last seen


class _WeightClass:
    __slots__ = ("lanes",)

    def __init__(self) -> None:
        self.lanes: LazyHeap[str] = LazyHeap()  # by head


class _TenantView:
    __slots__ = ("classes", "queue")

    def __init__(self) -> None:
        self.classes: dict[float, _WeightClass] = {}
        self.queue: StrideQueue[float] = StrideQueue()


class _ScopeView:
    __slots__ = ("max_weight", "queue", "strategy", "tenants", "weights")

    def __init__(self, strategy: Strategy, running: Callable[[str], int]) -> None:
        self.strategy = strategy
        self.max_weight = 0.0
        self.tenants: dict[str, _TenantView] = {}
        self.weights: Counter[float] = Counter()
        self.queue: StrideQueue[str] | RotationQueue[str] | FewestQueue[str]
        if strategy is Strategy.FEWEST_RUNNING:
            self.queue = FewestQueue(running)
        elif strategy is Strategy.ROUND_ROBIN:
            self.queue = RotationQueue()
        else:
            self.queue = StrideQueue()


class ClassView:
    """Ready lanes as one worker class sees them, ready to pick from."""

    def __init__(self, fairness: Fairness, running: Callable[[str], int]) -> None:
        self.fairness = fairness
        self.running = running
        self.entries: dict[str, LaneEntry] = {}
        self._scopes: dict[str, _ScopeView] = {}
        self._scope_q: StrideQueue[str] = StrideQueue()

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, lane: str, kind: str, tenant: str, weight: float, head: int) -> None:
        """A lane with ready work that this class may run, at its effective weight."""
        if lane in self.entries:
            self.set_head(lane, head)
            return
        scope = self.fairness.scope_of(kind)
        strategy = self.fairness.strategy_of(scope)
        key = FIFO_TENANT if strategy is Strategy.FIFO else tenant
        e = LaneEntry(lane, scope, key, weight, head)
        self.entries[lane] = e
        sv = self._scopes.get(scope)
        if sv is None:
            sv = self._scopes[scope] = _ScopeView(strategy, self.running)
        tv = sv.tenants.get(key)
        if tv is None:
            tv = sv.tenants[key] = _TenantView()
            sv.queue.add(key, self.fairness.tenant_weight(key))
        wc = tv.classes.get(weight)
        if wc is None:
            wc = tv.classes[weight] = _WeightClass()
            tv.queue.add(weight, weight)
        wc.lanes.set(lane, head)
        sv.weights[weight] += 1
        if weight > sv.max_weight:
            sv.max_weight = weight
            self._scope_q.reshare(scope, weight)
        self._scope_q.add(scope, sv.max_weight)

    def set_head(self, lane: str, head: int) -> None:
        e = self.entries.get(lane)
        if e is not None and head != e.head:
            e.head = head
            self._scopes[e.scope].tenants[e.tenant].classes[e.weight].lanes.set(lane, head)

    def remove(self, lane: str) -> None:
        e = self.entries.pop(lane, None)
        if e is None:
            return
        sv = self._scopes[e.scope]
        tv = sv.tenants[e.tenant]
        wc = tv.classes[e.weight]
        wc.lanes.discard(lane)
        if not wc.lanes:
            del tv.classes[e.weight]
            tv.queue.discard(e.weight)
            if not tv.classes:
                del sv.tenants[e.tenant]
                sv.queue.discard(e.tenant)
        sv.weights[e.weight] -= 1
        if sv.weights[e.weight] <= 0:
            del sv.weights[e.weight]
            if not sv.weights:
                del self._scopes[e.scope]
                self._scope_q.discard(e.scope)
            elif e.weight == sv.max_weight:
                sv.max_weight = max(sv.weights)
                self._scope_q.reshare(e.scope, sv.max_weight)

    def pick(self) -> str | None:
        scope = self._scope_q.peek()
        if scope is None:
            return None
        sv = self._scopes[scope]
        tenant = sv.queue.peek()
        assert tenant is not None
        tv = sv.tenants[tenant]
        weight = tv.queue.peek()
        assert weight is not None
        return tv.classes[weight].lanes.peek()

    def charge(self, lane: str, n: int) -> None:
        """`n` jobs were taken from `lane`: advance every level's virtual time."""
        e = self.entries.get(lane)
        if e is None or n <= 0:
            return
        sv = self._scopes[e.scope]
        self._scope_q.charge(e.scope, n)
        sv.queue.charge(e.tenant, n)
        sv.tenants[e.tenant].queue.charge(e.weight, n)

    def running_changed(self, tenant: str) -> None:
        for sv in self._scopes.values():
            if isinstance(sv.queue, FewestQueue):
                sv.queue.touch(tenant)

    def position(self, lane: str) -> dict[str, Any] | None:
        """Where a lane stands at each level (for explain)."""
        e = self.entries.get(lane)
        if e is None:
            return None
        sv = self._scopes[e.scope]
        tv = sv.tenants[e.tenant]
        lanes = tv.classes[e.weight].lanes.ordered()
        return {
            "scope": "default" if e.scope == DEFAULT_SCOPE else e.scope,
            "strategy": sv.strategy.value,
            "tenant": None if e.tenant == FIFO_TENANT else e.tenant,
            "tenant_position": sv.queue.position(e.tenant),
            "weight_class_position": tv.queue.position(e.weight),
            "lane_position": {"rank": lanes.index(lane), "of": len(lanes), "head_seq": e.head},
            "next_pick": self.pick() == lane,
        }
