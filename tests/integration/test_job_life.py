"""The life of a running job over the wire protocol: checkpoints, progress, logs, run time.

A raw wire client plays the worker, so these tests pin the protocol as documented: writes are
durable when answered, fenced by the attempt's token, merged by name, bounded; the next attempt
gets the latest checkpoints with the job; a job past its maximum run time is asked to yield and,
if its worker does not, revoked and re-dispatched with its checkpoints.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import asyncpg
import msgpack
import pytest

from tests.conftest import NodeFactory
from tests.rawclient import RawClient
from tests.waiting import wait_until
from worcr import wire
from worcr_node.life.writer import Written
from worcr_node.node import Node
from worcr_node.store.life import CheckpointWrite, LogWrite


async def _running(
    node: Node, spec: dict[str, Any], **hello: Any
) -> tuple[RawClient, dict[str, Any]]:
    c = await RawClient.connect(node.worker_address)
    await c.hello(capacity=1, **hello)
    await c.call("enqueue", {"jobs": [spec]})
    [job] = await c.jobs(1)
    return c, job


def _ref(job: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"id": job["id"], "token": job["token"], **more}


async def _row(node: Node, job: dict[str, Any]) -> Any:
    row = await node.store.job_get(uuid.UUID(job["id"]))
    assert row is not None
    return row


async def test_checkpoints_merge_and_come_back_with_the_next_attempt(node: Node) -> None:
    c, job = await _running(node, {"kind": "digest"})
    assert "checkpoints" not in job  # none yet
    await c.call("checkpoint", _ref(job, values={"user_id": 1, "batch": "a"}))
    await c.call("checkpoint", _ref(job, values={"user_id": 2, "cursor": {"page": [1, 2.5]}}))
    await c.call("checkpoint", _ref(job, values={"batch": None}))  # nil removes a checkpoint
    row = await _row(node, job)
    assert msgpack.unpackb(row["checkpoints"]) == {"user_id": 2, "cursor": {"page": [1, 2.5]}}
    # a yield hands the job back; the next attempt gets the checkpoints with the job
    await c.call("yield", {"jobs": [_ref(job)]})
    [again] = await c.jobs(1)
    assert again["id"] == job["id"]
    assert again["token"] == job["token"] + 1
    assert again["checkpoints"] == {"user_id": 2, "cursor": {"page": [1, 2.5]}}
    # ... and after a failure and retry
    await c.call("checkpoint", _ref(again, values={"user_id": 3}))
    r = await c.call("fail", {"jobs": [_ref(again, error="boom")]})
    assert r["results"] == [None]
    row = await _row(node, job)
    assert row["state"] == "retrying"
    assert msgpack.unpackb(row["checkpoints"])["user_id"] == 3
    await c.close()


async def test_checkpoint_values_come_back_exactly_as_given(node: Node) -> None:
    """Any msgpack value: huge and tiny floats stay floats, bytes stay bytes, big ints stay ints
    (a JSON store would turn 1e20 into an int no msgpack encoder can send)."""
    values = {"f": 1e20, "tiny": 1e-300, "i": (1 << 64) - 1, "b": b"\x00\xff", "s": "a\x00b",
              "nested": {"l": [1.5, None, True, -(1 << 63)]}}  # fmt: skip
    c, job = await _running(node, {"kind": "digest"})
    await c.call("checkpoint", _ref(job, values=values))
    await c.call("yield", {"jobs": [_ref(job)]})
    [again] = await c.jobs(1)
    assert again["checkpoints"] == values
    assert isinstance(again["checkpoints"]["f"], float)
    await c.close()


async def test_a_late_copy_of_an_older_checkpoint_write_is_not_applied(node: Node) -> None:
    c, job = await _running(node, {"kind": "digest"})
    await c.call("checkpoint", _ref(job, seq=2, values={"next": 20}))
    await c.call("checkpoint", _ref(job, seq=1, values={"next": 10}))  # delayed: superseded
    assert msgpack.unpackb((await _row(node, job))["checkpoints"]) == {"next": 20}
    await c.call("checkpoint", _ref(job, values={"other": 1}))  # no seq: always applied
    assert msgpack.unpackb((await _row(node, job))["checkpoints"]) == {"next": 20, "other": 1}
    await c.close()


async def test_writes_of_a_stale_attempt_are_refused(node: Node) -> None:
    c, job = await _running(node, {"kind": "digest"})
    await c.call("checkpoint", _ref(job, values={"n": 1}))
    await c.call("yield", {"jobs": [_ref(job)]})
    [again] = await c.jobs(1)
    for method, params in (
        ("checkpoint", {"values": {"n": 99}}),
        ("progress", {"counters": {"n": [99, 100]}}),
        ("log", {"lines": [[1.0, "info", "late"]]}),
    ):
        with pytest.raises(wire.RemoteError) as err:
            await c.call(method, _ref(job, **params))  # the old token
        assert err.value.code == "STALE_TOKEN", method
    row = await _row(node, job)
    assert msgpack.unpackb(row["checkpoints"]) == {"n": 1}
    assert row["progress"] is None
    assert await node.life_store.logs_of_job(uuid.UUID(job["id"]), 0, None, 100) == []
    await c.call("ack", {"jobs": [_ref(again)]})
    with pytest.raises(wire.RemoteError) as err:  # nor after the job completed
        await c.call("checkpoint", _ref(again, values={"n": 2}))
    assert err.value.code == "STALE_TOKEN"
    await c.close()


async def test_progress_counters_are_merged_by_name(node: Node) -> None:
    c, job = await _running(node, {"kind": "digest"})
    await c.call("progress", _ref(job, counters={"emails": [10, 1000], "pages": 3}))
    await c.call("progress", _ref(job, counters={"emails": [20, 1000]}))
    progress = json.loads((await _row(node, job))["progress"])
    assert progress["emails"]["current"] == 20
    assert progress["emails"]["total"] == 1000
    assert progress["pages"]["current"] == 3
    assert progress["pages"]["total"] is None
    await c.call("ack", {"jobs": [_ref(job)]})
    # progress stays readable after the job ended
    assert json.loads((await _row(node, job))["progress"])["emails"]["current"] == 20
    await c.close()


async def test_log_lines_are_stored_per_attempt_up_to_the_cap(node_factory: NodeFactory) -> None:
    node = await node_factory(limits=wire.Limits(max_log_lines=5))
    c, job = await _running(node, {"kind": "digest"})
    r = await c.call("log", _ref(job, lines=[[1e9, "info", "one"], [1e9, "stdout", "two"]]))
    assert r == {"stored": 2}
    lines = [[1e9, "error", f"line {i}"] for i in range(3, 9)]
    assert (await c.call("log", _ref(job, lines=lines))) == {"stored": 3}
    assert (await c.call("log", _ref(job, lines=lines))) == {"stored": 0}  # capped, not stale
    await c.call("yield", {"jobs": [_ref(job)]})
    [again] = await c.jobs(1)
    r = await c.call("log", _ref(again, lines=[[1e9, "info", "second attempt"]]))
    assert r == {"stored": 1}  # the cap is per attempt
    rows = await node.life_store.logs_of_job(uuid.UUID(job["id"]), 0, None, 100)
    assert [r["message"] for r in rows] == ["one", "two", "line 3", "line 4", "line 5",
                                            "second attempt"]  # fmt: skip
    assert [r["lease_token"] for r in rows] == [job["token"]] * 5 + [again["token"]]
    assert [r["level"] for r in rows][:3] == ["info", "stdout", "error"]
    # a time far from the node's is replaced by the node's
    assert abs(rows[0]["at"] - 1e9) > 3600
    await c.close()


@pytest.mark.parametrize(
    ("method", "params", "message"),
    [
        ("checkpoint", {"values": {}}, "values"),
        ("checkpoint", {"values": [1]}, "values"),
        ("checkpoint", {"values": {"": 1}}, "names"),
        ("checkpoint", {"values": {"x" * 129: 1}}, "names"),
        ("checkpoint", {"values": {"big": "x" * 70_000}}, "over the limit"),
        ("progress", {"counters": {"n": "ten"}}, "expected a number"),
        ("progress", {"counters": {"n": [1, 2, 3]}}, "[current, total]"),
        ("progress", {"counters": {"n": [1, -2]}}, "negative"),
        ("progress", {"counters": {}}, "counters"),
        ("log", {"lines": []}, "lines"),
        ("log", {"lines": [[1.0, "loud", "x"]]}, "level"),
        ("log", {"lines": [["now", "info", "x"]]}, "Unix seconds"),
        ("log", {"lines": [[1.0, "info", 7]]}, "string"),
        ("log", {"lines": [[1.0, ["info"], "x"]]}, "level"),
        ("checkpoint", {"seq": 0, "values": {"a": 1}}, "seq"),
        ("log", {"lines": [[1.0, "info", "x"]] * 1001}, "at most 1000"),
        ("checkpoint", {"id": "nope"}, "not a UUID"),
        ("checkpoint", {"token": -1}, "token"),
    ],
)
async def test_bad_reports_get_a_clear_error(
    node: Node, method: str, params: dict[str, Any], message: str
) -> None:
    c, job = await _running(node, {"kind": "digest"})
    with pytest.raises(wire.RemoteError) as err:
        await c.call(method, {**_ref(job), **params})
    assert err.value.code == "BAD_REQUEST"
    assert message in err.value.message
    # the session and the job are unharmed
    await c.call("checkpoint", _ref(job, values={"ok": True}))
    assert (await c.call("ack", {"jobs": [_ref(job)]}))["results"] == [None]
    await c.close()


async def test_merged_checkpoints_over_the_limit_are_refused_whole(node: Node) -> None:
    c, job = await _running(node, {"kind": "digest"})
    await c.call("checkpoint", _ref(job, values={"a": "x" * 40_000}))
    with pytest.raises(wire.RemoteError) as err:
        await c.call("checkpoint", _ref(job, values={"b": "y" * 40_000}))
    assert err.value.code == "BAD_REQUEST"
    assert "exceed" in err.value.message
    assert set(msgpack.unpackb((await _row(node, job))["checkpoints"])) == {"a"}
    await c.close()


async def test_long_log_lines_are_cut_not_refused(node: Node) -> None:
    c, job = await _running(node, {"kind": "digest"})
    await c.call("log", _ref(job, lines=[[1.0, "info", "z" * 20_000]]))
    [row] = await node.life_store.logs_of_job(uuid.UUID(job["id"]), 0, None, 10)
    assert len(row["message"]) == wire.Limits().max_log_line
    assert row["message"].endswith("...(truncated)")
    await c.close()


async def test_a_job_past_its_run_time_is_asked_to_yield(node_factory: NodeFactory) -> None:
    node = await node_factory()
    c, job = await _running(node, {"kind": "slow", "max_run_time": 1})
    asked = await c.next_notification("yield", timeout=10)
    assert asked == {"jobs": [_ref(job)], "reason": "max_run_time"}
    await c.call("checkpoint", _ref(job, values={"done": 5}))
    assert (await c.call("yield", {"jobs": [_ref(job)]}))["results"] == [None]
    [again] = await c.jobs(1)
    assert again["checkpoints"] == {"done": 5}
    assert again["attempt"] == 1  # a yield is not an attempt
    outcomes = [a["outcome"] for a in await node.store.attempts_of_job(uuid.UUID(job["id"]))]
    assert outcomes == ["yielded"]
    await c.close()


async def test_a_job_whose_row_is_busy_is_still_asked_to_yield(
    node_factory: NodeFactory, database_url: str
) -> None:
    """A job that writes checkpoints all the time has its row locked much of the time: the
    run-time duty waits for the lock instead of skipping the job (it did, and such a job could
    run past its maximum run time unasked on a loaded machine)."""
    node = await node_factory()
    c, job = await _running(node, {"kind": "busy", "max_run_time": 1})
    holder, watcher = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    try:

        async def duty_waits() -> bool:
            n = await watcher.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()"
            )
            return bool(n)

        async with holder.transaction():
            await holder.execute("SELECT 1 FROM worcr_jobs WHERE id = $1 FOR UPDATE",
                                 uuid.UUID(job["id"]))  # fmt: skip
            await wait_until(duty_waits, timeout=10)  # past 1 s: the duty wants the row
        asked = await c.next_notification("yield", timeout=10)
        assert asked == {"jobs": [_ref(job)], "reason": "max_run_time"}
    finally:
        await holder.close()
        await watcher.close()
        await c.close()


async def test_a_worker_that_does_not_yield_loses_the_attempt(node_factory: NodeFactory) -> None:
    node = await node_factory(yield_grace=1)
    await node.life_store.kind_put("stubborn", 1.0, None)  # the kind's run time, the default grace
    c, job = await _running(node, {"kind": "stubborn", "max_attempts": 5})
    await c.call("checkpoint", _ref(job, values={"at": 7}))
    await c.next_notification("yield", timeout=10)
    cancel = await c.next_notification("cancel", timeout=10)  # ignored the ask: revoked
    assert cancel == {"jobs": [_ref(job)], "reason": "max_run_time"}
    [again] = await c.jobs(1)  # re-dispatched (to the same, only worker) with the checkpoints
    assert again["token"] == job["token"] + 1
    assert again["attempt"] == 2  # a revocation counts as an attempt
    assert again["checkpoints"] == {"at": 7}
    [attempt] = await node.store.attempts_of_job(uuid.UUID(job["id"]))
    assert attempt["outcome"] == "timed_out"
    assert "maximum run time of 1 s" in attempt["error"]
    # the old attempt's ack is refused
    r = await c.call("ack", {"jobs": [_ref(job)]})
    assert r["results"][0]["code"] == "STALE_TOKEN"
    assert (await c.call("ack", {"jobs": [_ref(again)]}))["results"] == [None]
    await c.close()


async def test_log_retention_deletes_old_lines(node_factory: NodeFactory) -> None:
    node = await node_factory(log_retention=60)
    c, job = await _running(node, {"kind": "digest"})
    now = node.clock.now()
    await c.call("log", _ref(job, lines=[[now - 1800, "info", "old"], [now, "info", "new"]]))
    node.log_retention.log_retention = 900  # as if configured to 15 minutes
    await node.log_retention.run()
    rows = await node.life_store.logs_of_job(uuid.UUID(job["id"]), 0, None, 10)
    assert [r["message"] for r in rows] == ["new"]
    await c.close()


async def test_progress_and_logs_reach_subscribers_on_every_node(
    node_factory: NodeFactory,
) -> None:
    a = await node_factory()
    b = await node_factory()
    sub = b.events.subscribe(job=None)
    # events are published while somebody watches: node a learns it within a second
    await wait_until(lambda: _truthy(a.events.watched), timeout=5)
    c, job = await _running(a, {"kind": "digest", "tenant": "acme"})
    await c.call("progress", _ref(job, counters={"emails": [5, 10]}))
    await c.call("log", _ref(job, lines=[[a.clock.now(), "info", "hello"]]))
    seen = []

    async def got_both() -> bool:
        event = await sub.get(1.0)
        if event is not None:
            seen.append(event)
        return {e["type"] for e in seen} >= {"progress", "log"}

    await wait_until(got_both, timeout=10)
    progress = next(e for e in seen if e["type"] == "progress")
    assert progress["job"] == job["id"]
    assert progress["tenant"] == "acme"
    assert progress["progress"]["emails"]["current"] == 5
    log_event = next(e for e in seen if e["type"] == "log")
    assert [x["message"] for x in log_event["lines"]] == ["hello"]
    await c.call("ack", {"jobs": [_ref(job)]})

    async def completed() -> bool:
        event = await sub.get(1.0)
        return event == {"type": "state", "job": job["id"], "state": "completed",
                         "kind": "digest", "tenant": "acme"}  # fmt: skip

    await wait_until(completed, timeout=10)
    sub.close()
    await c.close()


async def _truthy(value: bool) -> bool:
    return value


async def test_hello_adopts_only_current_attempts_and_names_the_stale(
    node_factory: NodeFactory,
) -> None:
    node = await node_factory(duty_periods={"leases": 0.05})
    c, job = await _running(node, {"kind": "long", "reserve_for": 0.5}, worker_id="w1")
    other = await RawClient.connect(node.worker_address)
    await other.hello(capacity=1, worker_id="w2")
    await c.close()  # w1 goes silent; its lease expires and w2 gets the job
    [again] = await other.jobs(1)
    assert again["token"] == job["token"] + 1
    back = await RawClient.connect(node.worker_address)
    hello = await back.hello(worker_id="w1", capacity=0, running=[_ref(job)])
    assert hello["stale"] == [job["id"]]  # not adopted
    fresh = await RawClient.connect(node.worker_address)
    hello = await fresh.hello(worker_id="w3", capacity=0, running=[_ref(again)])
    assert hello["stale"] == []  # the current attempt is adopted (w2's own reconnection)
    assert (await other.call("ack", {"jobs": [_ref(again)]}))["results"] == [None]
    for client in (back, fresh, other):
        await client.close()


async def test_concurrent_checkpoints_of_one_attempt_are_all_kept(node: Node) -> None:
    """Writes of one attempt racing each other (here 50 at once, from different requests that
    land in different batches) are merged, never lost: each merge reads the locked row."""
    c, job = await _running(node, {"kind": "digest"})
    for rnd in range(5):
        answers = await asyncio.gather(
            *(c.call("checkpoint", _ref(job, values={f"r{rnd}n{i}": i})) for i in range(50))
        )
        assert all(a == {} for a in answers)
    stored = msgpack.unpackb((await _row(node, job))["checkpoints"])
    assert len(stored) == 250
    await c.close()


async def test_many_jobs_reporting_at_once_neither_deadlock_nor_fail(node: Node) -> None:
    """100 running jobs each send a checkpoint, a progress update and log lines at the same
    time, round after round: every request is answered, nothing is lost (writers lock the job
    rows in one order)."""
    c = await RawClient.connect(node.worker_address)
    await c.hello(capacity=100)
    await c.call("enqueue", {"jobs": [{"kind": "digest"}] * 100})
    jobs = await c.jobs(100)
    now = node.clock.now()
    for rnd in range(1, 11):
        calls = []
        for job in jobs:
            calls.append(c.call("checkpoint", _ref(job, values={"round": rnd})))
            calls.append(c.call("progress", _ref(job, counters={"round": [rnd, 10]})))
            calls.append(c.call("log", _ref(job, lines=[[now, "info", f"round {rnd}"]] * 3)))
        answers = await asyncio.gather(*calls)  # raises on the first error answer
        assert answers.count({}) == 200
    for job in jobs[:10]:
        row = await _row(node, job)
        assert msgpack.unpackb(row["checkpoints"]) == {"round": 10}
        assert json.loads(row["progress"])["round"]["current"] == 10
        lines = await node.life_store.logs_of_job(uuid.UUID(job["id"]), 0, None, 100)
        assert len(lines) == 30
    await c.close()


async def test_a_batch_with_two_attempts_of_one_job_tells_them_apart(node: Node) -> None:
    """A worker that lost its lease keeps writing while the job's new attempt writes too, through
    the same node: the stale writes are refused, the current ones stored, in one batch."""
    c, job = await _running(node, {"kind": "digest"})
    await c.call("yield", {"jobs": [_ref(job)]})
    [again] = await c.jobs(1)
    now = node.clock.now()
    results = await asyncio.gather(
        c.call_raw("checkpoint", _ref(job, values={"stale": 1})),
        c.call_raw("checkpoint", _ref(again, values={"current": 1})),
        c.call_raw("log", _ref(job, lines=[[now, "info", "stale line"]])),
        c.call_raw("log", _ref(again, lines=[[now, "info", "current line"]])),
    )
    errors = [r[2] and r[2]["code"] for r in results]
    assert errors == ["STALE_TOKEN", None, "STALE_TOKEN", None]
    assert results[3][3] == {"stored": 1}
    assert msgpack.unpackb((await _row(node, job))["checkpoints"]) == {"current": 1}
    lines = await node.life_store.logs_of_job(uuid.UUID(job["id"]), 0, None, 10)
    assert [(x["message"], x["lease_token"]) for x in lines] == [("current line", again["token"])]
    # the same, certainly in one batch (the writer's flushes, called directly)
    jid = uuid.UUID(job["id"])
    out = await node.life._flush_checkpoints(
        [CheckpointWrite(jid, job["token"], {"x": 1}, []),
         CheckpointWrite(jid, again["token"], {"y": 2}, [])]
    )  # fmt: skip
    assert out == [Written.STALE, Written.OK]
    stored = await node.life._flush_logs(
        [LogWrite(jid, job["token"], [(now, "info", "a")]),
         LogWrite(jid, again["token"], [(now, "info", "b")])]
    )  # fmt: skip
    assert stored == [-1, 1]
    await c.close()
