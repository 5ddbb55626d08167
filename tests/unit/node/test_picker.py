"""The pick structure (pure): weights, oldest-first ties, each fairness strategy, no starvation,
and lazy removal that never hands out a lane that left."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worcr_node.dispatch.fairness import Fairness, Strategy
from worcr_node.dispatch.picker import ClassView, LazyHeap, RotationQueue, StrideQueue

Lane = tuple[str, str, str, float]  # lane, kind, tenant, weight


class Sim:
    """Lanes with endless backlogs; heads advance as jobs are taken (global seq interleaving)."""

    def __init__(self, view: ClassView, lanes: list[Lane]) -> None:
        self.view = view
        self.next_seq: dict[str, int] = {}
        for i, (lane, kind, tenant, weight) in enumerate(lanes):
            self.next_seq[lane] = i
            view.add(lane, kind, tenant, weight, i)
        self.stride = len(lanes)
        self.picks: Counter[str] = Counter()

    def step(self, n: int = 1) -> str:
        lane = self.view.pick()
        assert lane is not None
        self.view.charge(lane, n)
        self.next_seq[lane] += n * self.stride
        self.view.set_head(lane, self.next_seq[lane])
        self.picks[lane] += n
        return lane


def view(strategy: Strategy = Strategy.ROUND_ROBIN, running: Callable[[str], int] | None = None,
         **kw: object) -> ClassView:  # fmt: skip
    return ClassView(Fairness(strategy, **kw), running or (lambda t: 0))  # type: ignore[arg-type]


@pytest.mark.parametrize("strategy", list(Strategy))
def test_weight_ten_gets_ten_times_the_picks(strategy: Strategy) -> None:
    sim = Sim(view(strategy), [("heavy", "a", "t", 10.0), ("light", "b", "t", 1.0)])
    for _ in range(11_000):
        sim.step()
    assert sim.picks["heavy"] / sim.picks["light"] == pytest.approx(10, rel=0.01)


def test_batches_are_charged_by_size() -> None:
    sim = Sim(view(), [("heavy", "a", "t", 2.0), ("light", "b", "t", 1.0)])
    for i in range(3000):
        sim.step(1 + i % 7)
    assert sim.picks["heavy"] / sim.picks["light"] == pytest.approx(2, rel=0.02)


def test_equal_weights_go_oldest_first() -> None:
    v = view(Strategy.FIFO)
    v.add("young", "k", "t1", 1.0, head=50)
    v.add("old", "k", "t2", 1.0, head=10)
    assert v.pick() == "old"
    v.set_head("old", 60)
    assert v.pick() == "young"


def test_fifo_lets_the_oldest_tenant_run_first() -> None:
    v = view(Strategy.FIFO)
    v.add("big", "k", "A", 1.0, head=0)
    for i in range(10):
        v.add(f"small{i}", "k", f"t{i}", 1.0, head=100_000 + i)
    for seq in range(1, 1000):  # A's backlog is older: it keeps the worker
        assert v.pick() == "big"
        v.charge("big", 1)
        v.set_head("big", seq)


def test_round_robin_rotates_over_tenants_whatever_their_backlog() -> None:
    v = view(Strategy.ROUND_ROBIN)
    v.add("big", "k", "A", 1.0, head=0)
    for i in range(10):
        v.add(f"small{i}", "k", f"t{i}", 1.0, head=100_000 + i)
    first_11 = []
    for _ in range(11):
        lane = v.pick()
        assert lane is not None
        first_11.append(lane)
        v.charge(lane, 8)
    assert sorted(first_11) == sorted(["big"] + [f"small{i}" for i in range(10)])


def test_round_robin_ignores_weights_across_tenants_but_not_within() -> None:
    sim = Sim(view(), [("a1", "k", "A", 10.0), ("a2", "k", "A", 1.0), ("b", "k", "B", 1.0)])
    for _ in range(2200):
        sim.step()
    assert sim.picks["a1"] + sim.picks["a2"] == pytest.approx(sim.picks["b"], rel=0.01)
    assert sim.picks["a1"] / sim.picks["a2"] == pytest.approx(10, rel=0.02)


def test_weighted_fair_shares_by_tenant_weight() -> None:
    v = view(Strategy.WEIGHTED_FAIR, tenant_weights={"gold": 3.0})
    sim = Sim(v, [("g", "k", "gold", 1.0), ("s", "k", "silver", 1.0)])
    for _ in range(4000):
        sim.step()
    assert sim.picks["g"] / sim.picks["s"] == pytest.approx(3, rel=0.01)


def test_weighted_fair_newcomer_cannot_bank_credit() -> None:
    v = view(Strategy.WEIGHTED_FAIR)
    sim = Sim(v, [("a", "k", "A", 1.0)])
    for _ in range(1000):
        sim.step()
    v.add("b", "k", "B", 1.0, head=10**9)
    sim.next_seq["b"] = 10**9
    picks = Counter(sim.step() for _ in range(100))
    assert 45 <= picks["b"] <= 55  # shares from now on, not 1000 picks of catching up


def test_fewest_running_prefers_the_idle_tenant() -> None:
    running = {"A": 8, "B": 0, "C": 3}
    v = view(Strategy.FEWEST_RUNNING, running=lambda t: running.get(t, 0))
    for t in "ABC":
        v.add(t, "k", t, 1.0, head=0)
    assert v.pick() == "B"
    running["B"] = 5
    v.running_changed("B")
    assert v.pick() == "C"
    running["C"] = 9
    v.running_changed("C")
    assert v.pick() == "B"


def test_fewest_running_rotates_among_equals() -> None:
    v = view(Strategy.FEWEST_RUNNING)
    for t in "ABC":
        v.add(t, "k", t, 1.0, head=0)
    seen = []
    for _ in range(6):
        lane = v.pick()
        assert lane is not None
        seen.append(lane)
        v.charge(lane, 1)
    assert seen[:3] == seen[3:]
    assert sorted(seen[:3]) == ["A", "B", "C"]


def test_strategy_per_kind() -> None:
    v = ClassView(Fairness(Strategy.ROUND_ROBIN, {"batch": Strategy.FIFO}), lambda t: 0)
    v.add("b-old", "batch", "A", 1.0, head=1)
    v.add("b-new", "batch", "B", 1.0, head=2)
    v.add("i-a", "interactive", "A", 1.0, head=3)
    v.add("i-b", "interactive", "B", 1.0, head=4)
    picks = []
    for _ in range(4):
        lane = v.pick()
        assert lane is not None
        picks.append(lane)
        v.charge(lane, 1)
    assert picks.count("b-new") == 0  # fifo within batch: the old lane keeps its turn
    assert {"i-a", "i-b"} <= set(picks)  # round robin within interactive


def test_position_explains_the_order() -> None:
    v = view(Strategy.ROUND_ROBIN)
    v.add("a", "k", "A", 1.0, head=0)
    v.add("b", "k", "B", 1.0, head=1)
    pos = v.position("b")
    assert pos is not None
    assert pos["strategy"] == "round_robin"
    assert pos["tenant"] == "B"
    assert pos["tenant_position"] == {"rank": 1, "of": 2}
    assert pos["next_pick"] is False
    assert v.position("missing") is None


_lane = st.tuples(
    st.sampled_from(["k1", "k2"]),
    st.sampled_from(["A", "B", "C", "D"]),
    st.sampled_from([0.1, 1.0, 2.5, 10.0]),
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(_lane, min_size=1, max_size=12),
    st.sampled_from(list(Strategy)),
    st.booleans(),
    st.lists(st.integers(1, 5), min_size=1, max_size=20),
)
def test_no_lane_starves(
    specs: list[tuple[str, str, float]], strategy: Strategy, per_kind: bool, batches: list[int]
) -> None:
    """Every lane gets picks within a bound set by its share, even the lightest."""
    kinds = {"k2": Strategy.FIFO if strategy is not Strategy.FIFO else Strategy.ROUND_ROBIN}
    fairness = Fairness(strategy, kinds if per_kind else {}, {"A": 3.0, "B": 0.5})
    lanes = [(f"l{i}", k, t, w) for i, (k, t, w) in enumerate(specs)]
    sim = Sim(ClassView(fairness, lambda t: 0), lanes)
    # Worst-case share: scopes (2, split by max weight) x tenants (4, weights down to 0.5 of a
    # total 5.5) x weight classes (10x spread, 4 classes) x lanes of one class (fifo: all).
    bound = math.ceil(2 * 10 * (5.5 / 0.5) * (16.0 / 0.1) * len(lanes)) * 5
    picks = 0
    while len(sim.picks) < len(lanes):
        sim.step(batches[picks % len(batches)])
        picks += 1
        assert picks <= bound, f"starved: {set(x[0] for x in lanes) - set(sim.picks)}"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("add"), st.integers(0, 9), _lane),
            st.tuples(st.just("remove"), st.integers(0, 9)),
            st.tuples(st.just("pick"), st.integers(1, 4)),
        ),
        max_size=80,
    ),
    st.sampled_from(list(Strategy)),
)
def test_picks_only_lanes_that_are_present(ops: list[tuple], strategy: Strategy) -> None:  # type: ignore[type-arg]
    v = view(strategy, tenant_weights={"A": 2.0})
    present: set[str] = set()
    for op in ops:
        if op[0] == "add":
            _, i, (kind, tenant, weight) = op
            if f"l{i}" not in present:
                v.add(f"l{i}", kind, tenant, weight, head=i)
                present.add(f"l{i}")
        elif op[0] == "remove":
            v.remove(f"l{op[1]}")
            present.discard(f"l{op[1]}")
        else:
            lane = v.pick()
            assert (lane is None) == (not present)
            assert lane is None or lane in present
            if lane is not None:
                v.charge(lane, op[1])
        assert len(v) == len(present)


def test_lazy_heap_compacts_and_keeps_order() -> None:
    h: LazyHeap[str] = LazyHeap()
    for i in range(1000):
        h.set("a", i)
        h.set("b", i + 0.5)
    assert len(h._heap) < 200
    assert h.peek() == "a"
    h.discard("a")
    assert h.peek() == "b"
    assert h.ordered() == ["b"]


def test_rotation_and_stride_queues_drop_departed_keys() -> None:
    r: RotationQueue[str] = RotationQueue()
    s: StrideQueue[str] = StrideQueue()
    for q in (r, s):
        q.add("x", 1.0)
        q.add("y", 1.0)
        q.discard("x")
        assert q.peek() == "y"
        q.charge("y", 1)
        assert q.peek() == "y"
        assert len(q) == 1
