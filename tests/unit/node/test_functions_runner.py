"""The function runner (compile once per version, checks, fallbacks, the breaker), function rules
in `evaluate`, and the on_enqueue answer rules: pure, against the real sandboxes."""

from __future__ import annotations

import time
from typing import Any

import pytest

from worcr.wire import Limits as WireLimits
from worcr_node.dispatch.rules import TagSet, evaluate, parse_rule, relevant_tags
from worcr_node.dispatch.rules import worker_tag_relevance as relevance
from worcr_node.functions.enqueue import apply_on_enqueue
from worcr_node.functions.judge import LaneJudge, judged
from worcr_node.functions.model import FunctionError, Hook, parse_function
from worcr_node.functions.runner import (
    MAX_TRIP,
    OVERRUN,
    TRIP_AFTER,
    TRIP_FOR,
    WINDOW,
    FunctionFailure,
    FunctionRunner,
    _Breaker,
    check_enqueue,
    check_factor,
    check_limit_key,
    check_retry,
    check_shed,
)
from worcr_node.functions.sandbox import Caps
from worcr_node.jobspec import SpecError, parse_job_spec

JOB = {"kind": "k", "tenant": "t", "tags": ["premium"], "weight": 1.0}
WORKER = {"kinds": [], "tags": ["gpu"]}


def runner(*functions: tuple[str, str, str, str], record: Any = None) -> FunctionRunner:
    r = FunctionRunner(Caps(time=0.05, memory=8 << 20), record)
    r.set_functions([parse_function({"language": lang, "hook": hook, "source": src}, name,
                                    version=1) for name, lang, hook, src in functions])  # fmt: skip
    return r


async def test_a_function_is_compiled_once_per_version() -> None:
    r = runner(("w", "lua", "weight", "n = (n or 0) + 1\nfunction weight() return n end"))
    assert [(await r.weight("w", JOB, WORKER)).value for _ in range(3)] == [1.0, 1.0, 1.0]
    same = parse_function({"language": "lua", "hook": "weight", "source": "x"}, "w", version=1)
    r.set_functions([same])  # same (name, version): the compiled code is kept
    assert (await r.weight("w", JOB, WORKER)).value == 1.0
    newer = parse_function(
        {"language": "lua", "hook": "weight", "source": "function weight() return 3 end"},
        "w",
        version=2,
    )
    r.set_functions([newer])
    assert (await r.weight("w", JOB, WORKER)).value == 3.0


@pytest.mark.parametrize(
    ("source", "kind", "words"),
    [
        ("function weight() error('nope') end", "error", "nope"),
        ("function weight() return 'heavy' end", "result", "number"),
        ("function weight() return 0 end", "result", "> 0"),
        ("function weight() return 1e7 end", "result", "1e+06"),
        ("function weight() return 0/0 end", "result", "number"),
        ("function weight() while true do end end", "timeout", ""),
        ("function weight( return 1 end", "compile", "line 1"),
    ],
)
async def test_a_failing_weight_falls_back_to_one_and_is_recorded(
    source: str, kind: str, words: str
) -> None:
    seen: list[tuple[FunctionFailure, str | None, str | None]] = []
    r = runner(
        ("w", "lua", "weight", source), record=lambda f, job, lane: seen.append((f, job, lane))
    )
    out = await r.weight("w", JOB, WORKER, lane="L")
    assert out.value == 1.0
    assert out.failure is not None
    assert (out.failure.kind, out.failure.function, out.failure.hook) == (kind, "w", "weight")
    assert words in out.failure.message
    assert seen == [(out.failure, None, "L")]


async def test_dispatch_answers_are_remembered_per_version_lane_and_worker_class() -> None:
    r = runner(("w", "lua", "weight", "function weight(job, worker) return #worker.tags + 1 end"))
    gpu, cpu = {"kinds": [], "tags": ["gpu"]}, {"kinds": [], "tags": ["a", "b"]}
    assert [(await r.weight("w", JOB, w, lane="L")).value for w in (gpu, cpu, gpu, cpu)] == [
        2,
        3,
        2,
        3,
    ]
    assert (await r.weight("w", JOB, gpu, lane="L2")).value == 2
    assert r.calls == 3  # (L, gpu), (L, cpu), (L2, gpu)
    same = parse_function({"language": "lua", "hook": "weight", "source": "x"}, "w", version=1)
    r.set_functions([same])  # another policy version, same function version: still remembered
    assert (await r.weight("w", JOB, gpu, lane="L")).value == 2
    assert r.calls == 3
    body = {"language": "lua", "hook": "weight", "source": "function weight() return 7 end"}
    r.set_functions([parse_function(body, "w", version=2)])
    assert (await r.weight("w", JOB, gpu, lane="L")).value == 7
    assert r.calls == 4


async def test_missing_or_wrong_hook_functions_fall_back() -> None:
    r = runner(("m", "lua", "match", "function match() return true end"))
    assert (await r.weight("m", JOB, WORKER)).failure.kind == "missing"  # type: ignore[union-attr]
    assert (await r.weight("gone", JOB, WORKER)).value == 1.0
    assert (await r.match("gone", JOB, WORKER)).value is False  # a match rule fails closed
    assert (await r.match("m", JOB, WORKER)).value is True


async def test_the_breaker_trips_after_capped_failures_in_a_row() -> None:
    r = runner(("w", "javascript", "weight", "function weight() { for(;;){} }"))
    kinds = [(await r.weight("w", JOB, WORKER)).failure.kind for _ in range(TRIP_AFTER + 3)]  # type: ignore[union-attr]
    assert kinds == ["timeout"] * TRIP_AFTER + ["tripped"] * 3
    assert r.calls == TRIP_AFTER  # tripped calls never reach the sandbox


async def test_a_call_far_past_the_cap_trips_at_once() -> None:
    """QuickJS checks its interrupt every ~10,000 operations: comparing two 2 MiB strings in a
    loop runs far past a 20 ms cap (~1 ms a comparison). One such call trips the function."""
    source = """function weight() {
      const s = 'x'.repeat(2 << 20), t = 'x'.repeat(2 << 20);
      let n = 0; for (;;) { if (s === t) n++ }
    }"""
    r = FunctionRunner(Caps(time=0.02, memory=16 << 20))
    r.set_functions([parse_function({"language": "javascript", "hook": "weight",
                                     "source": source}, "w", 1)])  # fmt: skip
    first = await r.weight("w", JOB, WORKER)
    assert first.failure is not None
    assert first.failure.kind == "timeout"
    assert first.seconds > OVERRUN * 0.02, first.seconds
    assert (await r.weight("w", JOB, WORKER)).failure.kind == "tripped"  # type: ignore[union-attr]
    assert r.calls == 1


def test_trips_in_a_row_last_twice_as_long_until_a_run_of_good_calls() -> None:
    b = _Breaker()
    for _ in range(TRIP_AFTER - 1):
        b.heavy_failure(overran=False)
    assert b.until == 0.0  # not yet
    b.heavy_failure(overran=False)
    first = b.until - time.monotonic()
    assert TRIP_FOR - 1 < first <= TRIP_FOR
    b.heavy_failure(overran=True)
    assert 2 * TRIP_FOR - 1 < b.until - time.monotonic() <= 2 * TRIP_FOR
    for _ in range(20):
        b.heavy_failure(overran=True)
    assert b.until - time.monotonic() <= MAX_TRIP
    for _ in range(WINDOW - 1):
        b.ok()
    b.heavy_failure(overran=True)  # a run of good calls shorter than the window: still doubled
    assert b.until - time.monotonic() > MAX_TRIP - 1
    for _ in range(WINDOW):
        b.ok()
    b.heavy_failure(overran=True)
    assert b.until - time.monotonic() <= TRIP_FOR


def test_a_function_hitting_its_cap_every_other_call_trips() -> None:
    b = _Breaker()
    for _ in range(TRIP_AFTER - 1):
        b.heavy_failure(overran=False)
        b.ok()
    assert b.until == 0.0
    b.heavy_failure(overran=False)
    assert b.until > time.monotonic()


def test_result_checks() -> None:
    assert check_factor(2) == 2.0
    assert check_shed(None) is None
    assert check_shed("hold") == "hold"
    with pytest.raises(ValueError, match="hold"):
        check_shed("later")
    assert check_limit_key("k") == ("k", None)
    assert check_limit_key(42) == ("42", None)
    assert check_limit_key({"key": "k", "limit": 3}) == ("k", 3)
    assert check_limit_key(None) is None
    for bad in ({"key": "k", "limit": 0}, {"key": "k", "limit": 2.5}, {"k": 1}, "", "x" * 300):
        with pytest.raises(ValueError, match=r"key|limit|field"):
            check_limit_key(bad)
    assert check_retry(5) == 5.0
    assert check_retry(False) is False
    assert check_retry(None) is None
    for bad in (-1, True, "5", float("inf"), 1e12):
        with pytest.raises(ValueError, match="seconds"):
            check_retry(bad)
    assert check_enqueue({}) == {}
    with pytest.raises(ValueError, match="the job"):
        check_enqueue([1])


async def test_function_rules_in_evaluate() -> None:
    r = runner(
        ("w", "lua", "weight", "function weight(job, worker) return #worker.tags + 1 end"),
        ("m", "javascript", "match", "function match(job, w) { return w.tags.includes('gpu') }"),
        ("s", "lua", "shed", "function shed(job) if job.tenant == 't' then return 'hold' end end"),
    )
    rules = [
        parse_rule({"name": "w", "action": "multiply", "function": "w"}),
        parse_rule({"name": "m", "action": "match", "function": "m"}),
    ]
    tags = TagSet(["premium"])
    v, gpu = await judged(
        lambda: LaneJudge(r, "L", "k", "t", ["premium"], 1.0, (), ["gpu"]),
        lambda j: evaluate(rules, "k", "t", tags, TagSet(["gpu"]), j),
    )
    assert (v.allowed, v.factor, v.errors) == (True, 2.0, ())
    assert gpu.answers == {rules[0].id: (2.0, None), rules[1].id: (True, None)}
    v, _ = await judged(
        lambda: LaneJudge(r, "L", "k", "t", ["premium"], 1.0, (), ["cpu", "x"]),
        lambda j: evaluate(rules, "k", "t", tags, TagSet(["cpu", "x"]), j),
    )
    assert (v.allowed, v.factor, v.forbidden_by) == (False, 3.0, (rules[1],))
    shed = [parse_rule({"name": "s", "action": "shed", "function": "s"})]
    v, _ = await judged(lambda: LaneJudge(r, "L", "k", "t", [], 1.0),
                        lambda j: evaluate(shed, "k", "t", tags, TagSet(()), j))  # fmt: skip
    assert (v.allowed, v.held_by) == (False, (shed[0],))
    v, _ = await judged(lambda: LaneJudge(r, "L2", "k", "u", [], 1.0),
                        lambda j: evaluate(shed, "k", "u", tags, TagSet(()), j))  # fmt: skip
    assert (v.allowed, v.matched) == (True, ())  # the function did not shed: no effect
    # a judge that does not wait: answers not known yet are asked, and the verdict is pending
    fresh = LaneJudge(r, "L3", "k", "t", ["premium"], 1.0, (), ["gpu"])
    evaluate(rules, "k", "t", tags, TagSet(["gpu"]), fresh)
    assert fresh.pending
    await fresh.settle()
    again = LaneJudge(r, "L3", "k", "t", ["premium"], 1.0, (), ["gpu"])
    v = evaluate(rules, "k", "t", tags, TagSet(["gpu"]), again)
    assert not again.pending
    assert (v.allowed, v.factor) == (True, 2.0)
    # without a judge, function rules get their fallbacks
    v = evaluate(rules, "k", "t", tags, TagSet(["gpu"]))
    assert (v.allowed, v.factor) == (False, 1.0)


def test_function_rules_make_every_worker_tag_relevant() -> None:
    static = parse_rule({"name": "s", "action": "forbid", "match": {"worker_tags": {"all": ["a"]}}})
    fn = parse_rule({"name": "f", "action": "multiply", "function": "w"})
    assert relevant_tags(["a", "host:1"], relevance([static])) == {"a"}
    assert relevant_tags(["a", "host:1"], relevance([static, fn])) == {"a", "host:1"}


def test_rule_validation_with_functions() -> None:
    for body, words in [
        ({"name": "r", "action": "match"}, "match function"),
        ({"name": "r", "action": "shed"}, "shed function"),
        ({"name": "r", "action": "forbid", "function": "f"}, "no function"),
        ({"name": "r", "action": "multiply", "function": "f", "factor": 2}, "not both"),
        ({"name": "r", "action": "multiply", "function": 5}, "name of a function"),
        ({"name": "r", "action": "discard", "match": {"same": ["region"]}}, "whatever"),
    ]:
        with pytest.raises(ValueError, match=words):
            parse_rule(body)


def test_function_validation() -> None:
    ok = {"language": "lua", "hook": "retry", "source": "x", "match": {"kinds": ["a"]}}
    assert parse_function(ok, "f").match.kinds == frozenset({"a"})
    for body, words in [
        ({**ok, "language": "ruby"}, "language"),
        ({**ok, "hook": "when"}, "hook"),
        ({**ok, "source": "  "}, "source"),
        ({**ok, "source": "\ud800"}, "surrogates"),
        ({**ok, "name": "other"}, "differs"),
        ({**ok, "hook": "weight"}, "only on_enqueue and retry"),
    ]:
        with pytest.raises(FunctionError, match=words):
            parse_function(body, "f")
    with pytest.raises(FunctionError, match="name"):
        parse_function(ok, "9 lives")


def _job(**spec: Any) -> Any:
    return parse_job_spec({"kind": "k", **spec}, 1000.0, WireLimits())


async def test_on_enqueue_answers() -> None:
    r = runner(
        (
            "a",
            "lua",
            "on_enqueue",
            """
function on_enqueue(job)
  local a = job.args
  if a.discard then return {discard = true} end
  if a.reject then return {reject = a.reject} end
  if a.tags then return {tags = a.tags, weight = 3} end
  if a.later then return {run_at = job.enqueued_at + a.later} end
  if a.bad then return {tags = {1, 2}} end
end""",
        )
    )
    assert await apply_on_enqueue(r, _job(), {"discard": True}, 1000.0, WireLimits()) is None
    with pytest.raises(SpecError, match="rejected by function 'a': no"):
        await apply_on_enqueue(r, _job(), {"reject": "no"}, 1000.0, WireLimits())
    job = await apply_on_enqueue(r, _job(), {"tags": ["b", "a", "a"]}, 1000.0, WireLimits())
    assert job is not None
    assert (job.tags, job.weight) == (("a", "b"), 3.0)
    job = await apply_on_enqueue(r, _job(), {"later": 60}, 1000.0, WireLimits())
    assert job is not None
    assert (job.run_at, job.state) == (1060.0, "scheduled")
    job = await apply_on_enqueue(r, _job(tags=["x"]), {"bad": True}, 1000.0, WireLimits())
    assert job is not None
    assert job.tags == ("x",)  # unchanged
    (error,) = job.function_errors
    assert (error["function"], error["kind"]) == ("a", "result")
    assert "tags" in error["message"]
    assert Hook.ON_ENQUEUE in {f.hook for f in r.functions.values()}


async def test_a_batch_stops_at_the_breaker() -> None:
    """`call_many` (a batch's on_enqueue or retry calls, sent together): once a call hits its
    cap, the rest of its chunk is not run; they go one at a time until the function trips, then
    fail at once. A looping function costs a few capped calls per batch, not one per job."""
    source = "function on_enqueue(job) if job.n >= 3 then while true do end end return nil end"
    r = runner(("spin", "lua", "on_enqueue", source))
    fn = r.functions["spin"]
    outs = await r.on_enqueue_many(fn, [{"n": i} for i in range(40)], [str(i) for i in range(40)])
    kinds = [o.failure.kind if o.failure else "ok" for o in outs]
    assert kinds[:3] == ["ok"] * 3
    assert kinds[3 : 3 + TRIP_AFTER] == ["timeout"] * TRIP_AFTER
    assert set(kinds[3 + TRIP_AFTER :]) == {"tripped"}
    assert r.calls == 3 + TRIP_AFTER  # the skipped and tripped ones never ran
