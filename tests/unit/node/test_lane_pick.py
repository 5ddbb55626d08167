"""Weight-proportional lane choice (the dispatcher's pure part)."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from worcr_node.dispatcher import Dispatcher, LaneInfo


class _C:
    def __init__(self, kinds: frozenset[str] = frozenset()) -> None:
        self.kinds = kinds


def _dispatcher(lanes: list[LaneInfo], seed: int) -> Any:
    d = Dispatcher.__new__(Dispatcher)  # only _pick's state: no store, no Redis
    d.lanes = {i.lane: i for i in lanes}
    d.rand = random.Random(seed).random
    return d


def test_weights_are_proportional_not_strict_priority() -> None:
    lanes = [LaneInfo("a", "k", 1.0), LaneInfo("b", "k", 3.0)]
    d = _dispatcher(lanes, 7)
    picks = Counter(d._pick(_C()).lane for _ in range(20_000))
    assert 0.23 < picks["a"] / 20_000 < 0.27  # 1/4, and the light lane still runs
    assert 0.73 < picks["b"] / 20_000 < 0.77


def test_only_kinds_the_worker_runs() -> None:
    lanes = [LaneInfo("a", "email", 1.0), LaneInfo("b", "resize", 100.0)]
    d = _dispatcher(lanes, 1)
    assert {d._pick(_C(frozenset({"email"}))).lane for _ in range(100)} == {"a"}
    assert d._pick(_C(frozenset({"other"}))) is None
