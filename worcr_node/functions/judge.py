"""The functions of function rules, asked about one (lane, worker class) pair.

`dispatch/rules.evaluate` takes a `Judge`; the dispatcher builds a `LaneJudge` when it computes a
verdict it has not cached yet. The runner remembers each answer per (function version, lane,
worker class; none for shed), so a function runs once per lane and class until its next version.
A judge reads answers without waiting (`FunctionRunner.known`): when one is not known yet, the
judge is `pending` (the verdict is not to be used: the dispatcher judges the pair again when the
runner has the answer); `judged` waits for every answer instead (explain, enqueue). Explain
reads the answers (`answers`) to show what each function said.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, TypeVar

from worcr_node.dispatch.rules import Rule
from worcr_node.functions.model import Hook
from worcr_node.functions.runner import FALLBACKS, PASSING, FunctionRunner, Outcome
from worcr_node.functions.views import lane_view, worker_view

__all__ = ["LaneJudge", "judged"]

T = TypeVar("T")
MAX_ROUNDS = 8  # `judged`: evaluations before the fallbacks of missing answers are taken

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
        self.pending = False  # some answer is not known yet: asked, the verdict is not final
        self.asked: list[Any] = []  # (function, hook, args, worker) of answers not known yet
        self.waiting: set[Any] = set()  # their keys (`FunctionRunner.answered`)

    def _ask(self, rule: Rule, hook: Hook, args: tuple[Any, ...], worker: Any) -> Outcome:
        assert rule.function is not None
        out = self.runner.known(rule.function, hook, args, self.lane, worker)
        if out is None:
            self.pending = True
            self.asked.append((rule.function, hook, args, worker))
            key = self.runner.answer_key(rule.function, hook, self.lane, worker)
            if key is not None:
                self.waiting.add(key)
            return Outcome(FALLBACKS[hook])
        return out

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
            rule, self._ask(rule, Hook.WEIGHT, (self.job, self.worker), self.worker)
        )
        return float(value), error

    def match(self, rule: Rule) -> tuple[bool, str | None]:
        assert rule.function is not None
        value, error = self._answer(
            rule, self._ask(rule, Hook.MATCH, (self.job, self.worker), self.worker)
        )
        return bool(value), error

    def shed(self, rule: Rule) -> tuple[str | None, str | None]:
        assert rule.function is not None
        value, error = self._answer(rule, self._ask(rule, Hook.SHED, (self.job,), None))
        return value, error

    async def settle(self) -> None:
        """Wait for the answers this judge found missing (then judge again)."""
        for name, hook, args, worker in self.asked:
            await self.runner.answer(name, hook, args, self.lane, worker)


async def judged(
    make: Callable[[], LaneJudge], evaluate: Callable[[LaneJudge], T]
) -> tuple[T, LaneJudge]:
    """`evaluate` with a judge from `make` once every answer it needs is known (each missing
    one is asked and waited for, then the evaluation is done again: the answers it needs may
    depend on earlier ones). After `MAX_ROUNDS`, the fallbacks stand."""
    for _ in range(MAX_ROUNDS):
        judge = make()
        result = evaluate(judge)
        if not judge.pending:
            return result, judge
        await judge.settle()
    return result, judge
