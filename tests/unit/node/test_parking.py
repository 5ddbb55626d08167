"""Parking of lanes behind full limit keys: order, budgets, timers, stale entries."""

from __future__ import annotations

import asyncio

from worcr_node.dispatch.parking import UNPARK_PER_UNIT, Parking


class Views:
    """What the dispatcher would do: record lanes put back; some lanes are gone."""

    def __init__(self) -> None:
        self.back: list[tuple[str, str]] = []
        self.gone: set[str] = set()
        self.wakes = 0
        self.changed = asyncio.Event()

    def put_back(self, cls: str, lane: str) -> bool:
        if lane in self.gone:
            return False
        self.back.append((cls, lane))
        self.changed.set()
        return True

    def wake(self) -> None:
        self.wakes += 1


def parking(v: Views) -> Parking[str]:
    return Parking(v.put_back, v.wake)


async def test_freed_units_bring_lanes_back_in_parking_order_a_few_at_a_time() -> None:
    v = Views()
    p = parking(v)
    p.block("k", -1)
    for i in range(10):
        p.park("c", f"l{i}", "k")
    assert p.is_full("k")
    p.freed(["k"])  # one unit: two lanes
    assert v.back == [("c", "l0"), ("c", "l1")]
    assert not p.is_full("k")
    p.freed(["k", "k"])
    assert [lane for _, lane in v.back] == ["l0", "l1", "l2", "l3", "l4", "l5"]
    assert len(p) == 4
    assert v.wakes == 2
    p.clear()


async def test_a_rate_key_brings_back_what_it_will_admit_at_its_retry_time() -> None:
    v = Views()
    p = parking(v)
    for i in range(20):
        p.park("c", f"l{i}", "bucket")
    p.block("bucket", 30, units_then=1)
    assert p.is_full("bucket")
    await asyncio.wait_for(v.changed.wait(), 5)
    assert len(v.back) == UNPARK_PER_UNIT  # one token: two lanes, not twenty
    assert not p.is_full("bucket")
    v.changed.clear()
    p.block("window", 20, units_then=5)
    for i in range(20):
        p.park("c", f"w{i}", "window")
    await asyncio.wait_for(v.changed.wait(), 5)
    await asyncio.sleep(0)
    assert sum(1 for _, lane in v.back if lane.startswith("w")) == 5 * UNPARK_PER_UNIT
    p.clear()


async def test_the_recheck_brings_every_lane_back() -> None:
    v = Views()
    p = parking(v)
    for i in range(50):
        p.park("c", f"l{i}", "k")  # no block: only the re-check is scheduled
    p._schedule("k", 0.01)  # (the re-check, sooner)
    await asyncio.wait_for(v.changed.wait(), 5)
    assert len(v.back) == 50
    assert len(p) == 0


async def test_stale_and_gone_entries_are_skipped() -> None:
    v = Views()
    p = parking(v)
    p.park("c", "a", "k")
    p.park("c", "b", "k")
    p.park("c", "c", "k")
    p.park("d", "a", "k")
    p.forget_lane("a", ["c"])  # lane a left the ready set for class c
    v.gone.add("b")  # lane b is gone from the dispatcher
    assert p.unpark("k", 1) == 1
    assert v.back == [("c", "c")]  # a (stale) and b (gone) did not use the budget
    assert p.is_parked("d", "a")
    assert p.unpark("k", None) == 1
    assert not p.is_parked("d", "a")
    p.clear()


async def test_clear_forgets_everything_and_cancels_timers() -> None:
    v = Views()
    p = parking(v)
    p.park("c", "a", "k")
    p.block("k", 10)
    p.clear()
    assert len(p) == 0
    assert not p.is_full("k")
    await asyncio.sleep(0.05)  # the cancelled timer must not fire (nothing to await instead)
    assert v.back == []
