"""The functions of function rules, asked about one (lane, worker class) pair.

`dispatch/rules.evaluate` takes a `Judge`; the dispatcher builds a `LaneJudge` when it computes a
verdict it has not cached yet. The runner remembers each answer per (function version, lane,
worker class; none for shed), so a function runs once per lane and class until its next version.
Explain reads the answers (`answers`) to show what each function said.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from worcr_node.dispatch.rules import Rule
from worcr_node.functions.runner import PASSING, FunctionRunner, Outcome
from worcr_node.functions.views import lane_view, worker_view

__all__ = ["LaneJudge"]

Answer = tuple[Any, str | None]


class LaneJudge:
    def __init__(
        self,
        runner: FunctionRunner,
        lane: str,
        kind: str,
        tenant: str,
        tags: Collection[str],
        weight: float,
        worker_kinds: Collection[str] = (),
        worker_tags: Collection[str] = (),
    ) -> None:
        self.runner = runner
        self.lane = lane
        self.job = lane_view(kind, tenant, tags, weight)
        self.worker = worker_view(worker_kinds, worker_tags)
        self.answers: dict[str, Answer] = {}  # rule id -> (value, error)
        # some answer is a fallback for a failure that may pass (timeout, memory, tripped):
        # the verdict should be asked again later rather than kept
        self.doubtful = False
        self.hit_cap = False  # ... and this pair's own call hit the cap (not just tripped)

    def _answer(self, rule: Rule, outcome: Outcome) -> Answer:
        answer = (outcome.value, None if outcome.failure is None else str(outcome.failure))
        if outcome.failure is not None and outcome.failure.kind in PASSING:
            self.doubtful = True
            self.hit_cap = self.hit_cap or outcome.failure.kind != "tripped"
        self.answers[rule.id] = answer
        return answer

    def weight(self, rule: Rule) -> tuple[float, str | None]:
        assert rule.function is not None
        value, error = self._answer(
            rule, self.runner.weight(rule.function, self.job, self.worker, self.lane)
        )
        return float(value), error

    def match(self, rule: Rule) -> tuple[bool, str | None]:
        assert rule.function is not None
        value, error = self._answer(
            rule, self.runner.match(rule.function, self.job, self.worker, self.lane)
        )
        return bool(value), error

    def shed(self, rule: Rule) -> tuple[str | None, str | None]:
        assert rule.function is not None
        value, error = self._answer(rule, self.runner.shed(rule.function, self.job, self.lane))
        return value, error
