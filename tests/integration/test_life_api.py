"""Job life over the HTTP API against real nodes: progress, result, log lines, event streams,
settings per kind.

A raw wire client plays the worker (as in test_job_life.py), so the data the routes show was
reported over the protocol. The Server-Sent Events streams are read line by line with aiohttp's
client, every read under a timeout so that a broken stream fails the test instead of hanging it:
a job's stream opens with a snapshot, forwards progress, log lines (not those already sent) and
state changes, and ends at a final state, also when the state event was missed; the all-jobs
stream filters by kind, tenant and type; events reach streams on every node; streams end when
the node stops.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from tests.apicalls import assert_error, call
from tests.conftest import NodeFactory
from tests.rawclient import RawClient
from tests.waiting import wait_until
from worcr_node.http import life_api
from worcr_node.life import events as event_bus
from worcr_node.node import Node

JOBS = "/api/v1/jobs"
KINDS = "/api/v1/kinds"
MISSING = "00000000-0000-4000-8000-000000000000"


@pytest.fixture
async def http(node: Node) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(node.http_address) as session:
        yield session


async def running(node: Node, spec: dict[str, Any]) -> tuple[RawClient, dict[str, Any]]:
    """A raw wire worker holding one job of `spec`."""
    c = await RawClient.connect(node.worker_address)
    await c.hello(capacity=1)
    await c.call("enqueue", {"jobs": [spec]})
    [job] = await c.jobs(1)
    return c, job


def ref(job: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"id": job["id"], "token": job["token"], **more}


async def log_lines(c: RawClient, job: dict[str, Any], node: Node, *messages: str) -> None:
    now = node.clock.now()
    r = await c.call("log", ref(job, lines=[[now, "info", m] for m in messages]))
    assert r == {"stored": len(messages)}


# -- reading Server-Sent Events --------------------------------------------------------------------


class Sse:
    """Events of one open stream: (name, data, id); comments are kept apart."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.comments: list[str] = []

    async def _block(self, timeout: float) -> list[str] | None:
        """The lines of the next block (up to a blank line); None at the end of the stream."""
        lines: list[str] = []
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.resp.content.readline()
                if not raw:
                    return None
                line = raw.decode().rstrip("\n")
                if line:
                    lines.append(line)
                elif lines:
                    return lines

    async def event(self, timeout: float = 10) -> tuple[str, Any, str | None]:
        while True:
            lines = await self._block(timeout)
            assert lines is not None, "the stream ended"
            if all(x.startswith(":") for x in lines):
                self.comments.extend(x[1:].strip() for x in lines)
                continue
            fields = dict(x.split(": ", 1) for x in lines)
            assert set(fields) <= {"event", "data", "id"}, lines
            return fields["event"], json.loads(fields["data"]), fields.get("id")

    async def comment(self, timeout: float = 10) -> str:
        while not self.comments:
            lines = await self._block(timeout)
            assert lines is not None, "the stream ended"
            assert all(x.startswith(":") for x in lines), f"an event before a comment: {lines}"
            self.comments.extend(x[1:].strip() for x in lines)
        return self.comments.pop(0)

    async def ended(self, timeout: float = 10) -> None:
        assert await self._block(timeout) is None, "the stream goes on"


@asynccontextmanager
async def stream(http: aiohttp.ClientSession, path: str, **headers: str) -> AsyncIterator[Sse]:
    async with http.get(path, headers=headers, timeout=aiohttp.ClientTimeout(total=60)) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "text/event-stream"
        assert resp.headers["Cache-Control"] == "no-cache"
        yield Sse(resp)


# -- the job's fields and its progress and result ------------------------------------------------


def state_event(job: dict[str, Any], state: str) -> dict[str, Any]:
    """A `state` event of a job pushed to a raw worker."""
    return {"type": "state", "job": job["id"], "state": state, "kind": job["kind"],
            "tenant": job["tenant"]}  # fmt: skip


async def test_a_job_shows_its_checkpoints_progress_and_run_time(
    node: Node, http: aiohttp.ClientSession
) -> None:
    status, queued = await call(http, "POST", JOBS, {"kind": "later", "run_at": 4e9})
    assert status == 201, queued
    status, job = await call(http, "GET", f"{JOBS}/{queued['id']}")
    assert status == 200
    assert {k: job[k] for k in ("checkpoints", "progress", "max_run_time", "yield_asked_at")} == {
        "checkpoints": None,
        "progress": None,
        "max_run_time": None,
        "yield_asked_at": None,
    }

    c, held = await running(node, {"kind": "digest", "max_run_time": 60})
    await c.call("checkpoint", ref(held, values={"cursor": {"page": 3}}))
    await c.call("progress", ref(held, counters={"emails": [5, 10]}))
    status, job = await call(http, "GET", f"{JOBS}/{held['id']}")
    assert job["checkpoints"] == {"cursor": {"page": 3}}
    assert job["progress"]["emails"]["current"] == 5
    assert job["progress"]["emails"]["total"] == 10
    assert isinstance(job["progress"]["emails"]["at"], float)
    assert job["max_run_time"] == 60
    assert job["yield_asked_at"] is None
    status, listed = await call(http, "GET", f"{JOBS}?kind=digest")
    assert listed["jobs"][0]["checkpoints"] == {"cursor": {"page": 3}}
    await c.close()


async def test_a_job_asked_to_yield_shows_when(node: Node, http: aiohttp.ClientSession) -> None:
    c, job = await running(node, {"kind": "slow", "max_run_time": 1})
    await c.next_notification("yield", timeout=10)
    _status, got = await call(http, "GET", f"{JOBS}/{job['id']}")
    assert got["yield_asked_at"] is not None
    assert got["yield_asked_at"].endswith("+00:00")
    await c.close()


async def test_progress_of_a_job(node: Node, http: aiohttp.ClientSession) -> None:
    c, job = await running(node, {"kind": "digest"})
    path = f"{JOBS}/{job['id']}/progress"
    assert await call(http, "GET", path) == (
        200,
        {"id": job["id"], "state": "running", "progress": {}},
    )
    await c.call("progress", ref(job, counters={"emails": [5, 10], "pages": 2}))
    await c.call("progress", ref(job, counters={"emails": [7, 10]}))
    status, got = await call(http, "GET", path)
    assert status == 200
    assert (got["id"], got["state"]) == (job["id"], "running")
    assert {k: (v["current"], v["total"]) for k, v in got["progress"].items()} == {
        "emails": (7, 10),
        "pages": (2, None),
    }
    await c.close()


async def test_result_of_a_job(node: Node, http: aiohttp.ClientSession) -> None:
    c, job = await running(node, {"kind": "digest"})
    path = f"{JOBS}/{job['id']}/result"
    assert await call(http, "GET", path) == (
        200,
        {"id": job["id"], "state": "running", "result": None},
    )
    result = {"sent": 7, "raw": b"\x00\x01"}
    await c.call("ack", {"jobs": [ref(job, result=result)]})
    assert await call(http, "GET", path) == (
        200,
        {"id": job["id"], "state": "completed", "result": {"sent": 7, "raw": {"$bytes": "AAE="}}},
    )
    await c.close()


@pytest.mark.parametrize("route", ["progress", "result", "logs", "events"])
async def test_job_routes_answer_404_and_400(http: aiohttp.ClientSession, route: str) -> None:
    status, body = await call(http, "GET", f"{JOBS}/{MISSING}/{route}")
    assert_error(status, body, 404, "NOT_FOUND", MISSING)
    status, body = await call(http, "GET", f"{JOBS}/nope/{route}")
    assert_error(status, body, 400, "BAD_REQUEST", "'nope' is not a job id")


# -- log lines -------------------------------------------------------------------------------------


async def test_log_lines_page_by_page(node: Node, http: aiohttp.ClientSession) -> None:
    spec = {"kind": "digest", "max_attempts": 3, "backoff": {"base": 0, "jitter": 0}}
    c, job = await running(node, spec)
    await log_lines(c, job, node, "one", "two", "three", "four")
    path = f"{JOBS}/{job['id']}/logs"
    status, page = await call(http, "GET", f"{path}?limit=3")
    assert status == 200
    assert [x["message"] for x in page["lines"]] == ["one", "two", "three"]
    first = page["lines"][0]
    assert set(first) == {"id", "attempt", "at", "level", "message"}
    assert (first["attempt"], first["level"]) == (1, "info")
    assert first["at"].endswith("+00:00")
    assert page["next"] == page["lines"][-1]["id"]  # full page: there may be more
    status, rest = await call(http, "GET", f"{path}?limit=3&after={page['next']}")
    assert [x["message"] for x in rest["lines"]] == ["four"]
    assert rest["next"] is None
    # a full last page has a `next` that leads to an empty page
    status, full = await call(http, "GET", f"{path}?limit=1&after={page['next']}")
    assert [x["message"] for x in full["lines"]] == ["four"]
    assert full["next"] is not None
    assert await call(http, "GET", f"{path}?after={full['next']}") == (
        200,
        {"lines": [], "next": None},
    )

    # a second attempt (failed, retried at once): lines by attempt
    await c.call("fail", {"jobs": [ref(job, error="boom")]})
    [again] = await c.jobs(1)
    assert again["attempt"] == 2
    await log_lines(c, again, node, "second")
    status, everything = await call(http, "GET", path)
    assert [x["message"] for x in everything["lines"]] == ["one", "two", "three", "four", "second"]
    assert everything["next"] is None
    status, second = await call(http, "GET", f"{path}?attempt=2")
    assert [(x["attempt"], x["message"]) for x in second["lines"]] == [(2, "second")]
    status, first_only = await call(http, "GET", f"{path}?attempt=1&limit=10000")
    assert len(first_only["lines"]) == 4
    await c.close()


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("limit=0", ["limit", "1 to 10000"]),
        ("limit=10001", ["limit", "1 to 10000"]),
        ("limit=ten", ["limit", "'ten'"]),
        ("limit=1&limit=2", ["limit", "once"]),
        ("after=-1", ["after", "0 to"]),
        ("after=99999999999999999999", ["after"]),
        ("attempt=0", ["attempt", "1 to"]),
        ("attempt=1.5", ["attempt"]),
        ("level=info", ["unknown parameter", "level"]),
    ],
)
async def test_bad_log_parameters_get_a_clear_error(
    node: Node, http: aiohttp.ClientSession, query: str, words: list[str]
) -> None:
    status, job = await call(http, "POST", JOBS, {"kind": "digest"})
    status, body = await call(http, "GET", f"{JOBS}/{job['id']}/logs?{query}")
    assert_error(status, body, 400, "BAD_REQUEST", *words)


# -- settings per kind -----------------------------------------------------------------------------


async def test_kind_settings_round_trip(http: aiohttp.ClientSession) -> None:
    assert await call(http, "GET", KINDS) == (200, {"kinds": []})
    status, put = await call(
        http, "PUT", f"{KINDS}/report", {"max_run_time": 600, "yield_grace": 30}
    )
    assert status == 200, put
    assert put.pop("updated_at").endswith("+00:00")
    assert put == {"kind": "report", "max_run_time": 600, "yield_grace": 30}
    status, got = await call(http, "GET", f"{KINDS}/report")
    assert (status, {**got, "updated_at": None}) == (200, {**put, "updated_at": None})

    # a PUT replaces all settings: a field left out is null (the default)
    status, put = await call(http, "PUT", f"{KINDS}/report", {"yield_grace": 0.5})
    assert (put["max_run_time"], put["yield_grace"]) == (None, 0.5)
    status, other = await call(http, "PUT", f"{KINDS}/mail/send", {"max_run_time": 2592000})
    assert status == 200
    assert other["kind"] == "mail/send"
    status, listed = await call(http, "GET", KINDS)
    assert [k["kind"] for k in listed["kinds"]] == ["mail/send", "report"]

    assert await call(http, "DELETE", f"{KINDS}/report") == (204, None)
    status, body = await call(http, "DELETE", f"{KINDS}/report")
    assert_error(status, body, 404, "NOT_FOUND", "'report'")
    status, body = await call(http, "GET", f"{KINDS}/report")
    assert_error(status, body, 404, "NOT_FOUND", "no settings for kind 'report'")


async def test_kind_settings_reach_the_run_time_duty(
    node: Node, http: aiohttp.ClientSession
) -> None:
    await call(http, "PUT", f"{KINDS}/slow", {"max_run_time": 1})
    c, _job = await running(node, {"kind": "slow"})
    assert (await c.next_notification("yield", timeout=10))["reason"] == "max_run_time"
    await c.close()


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ([1], ["body must be an object"]),
        ({"max_run_time": 10, "grace": 1}, ["unknown field", "grace"]),
        ({"max_run_time": True}, ["max_run_time", "number"]),
        ({"max_run_time": "60"}, ["max_run_time", "number"]),
        ({"max_run_time": 0.5}, ["max_run_time", "1 to 2592000"]),
        ({"max_run_time": 2592001}, ["max_run_time", "1 to 2592000"]),
        ({"max_run_time": 10**400}, ["max_run_time", "1 to 2592000"]),
        ({"yield_grace": -1}, ["yield_grace", "0 to 86400"]),
        ({"yield_grace": 86401}, ["yield_grace", "0 to 86400"]),
        ('{"max_run_time": NaN}', ["max_run_time", "1 to 2592000"]),
        ('{"yield_grace": Infinity}', ["yield_grace", "0 to 86400"]),
        ("{not json", ["not valid JSON"]),
    ],
)
async def test_bad_kind_settings_are_refused(
    http: aiohttp.ClientSession, body: Any, words: list[str]
) -> None:
    if isinstance(body, str):
        status, answer = await call(http, "PUT", f"{KINDS}/report", data=body)
    else:
        status, answer = await call(http, "PUT", f"{KINDS}/report", body)
    assert_error(status, answer, 400, "BAD_REQUEST", *words)
    assert await call(http, "GET", KINDS) == (200, {"kinds": []})


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_bad_kind_names_are_refused(http: aiohttp.ClientSession, method: str) -> None:
    for name in ("k" * 129, "a%01b"):
        status, body = await call(http, method, f"{KINDS}/{name}", {"max_run_time": 5})
        assert_error(status, body, 400, "BAD_REQUEST", "is not a job kind", "128 printable")


# -- one job's event stream ------------------------------------------------------------------------


async def test_a_job_stream_opens_with_a_snapshot_and_ends_with_the_final_state(
    node: Node, http: aiohttp.ClientSession
) -> None:
    c, job = await running(node, {"kind": "digest", "tenant": "acme"})
    await c.call("progress", ref(job, counters={"emails": [1, 10]}))
    await log_lines(c, job, node, "one", "two")
    async with stream(http, f"{JOBS}/{job['id']}/events") as sse:
        name, snapshot, event_id = await sse.event()
        assert name == "snapshot"
        assert snapshot["job"]["id"] == job["id"]
        assert snapshot["job"]["state"] == "running"
        assert snapshot["job"]["progress"]["emails"]["current"] == 1
        assert [x["message"] for x in snapshot["logs"]] == ["one", "two"]
        assert snapshot["logs"][0]["at"].endswith("+00:00")
        assert event_id == str(snapshot["logs"][-1]["id"])

        await c.call("progress", ref(job, counters={"emails": [5, 10]}))
        name, progress, _ = await sse.event()
        assert name == "progress"
        assert (progress["type"], progress["job"], progress["kind"], progress["tenant"]) == (
            "progress",
            job["id"],
            "digest",
            "acme",
        )
        assert progress["progress"]["emails"]["current"] == 5

        await log_lines(c, job, node, "three", "four")
        name, logged, event_id = await sse.event()
        assert name == "log"
        assert logged["job"] == job["id"]
        assert [x["message"] for x in logged["lines"]] == ["three", "four"]
        assert logged["lines"][0]["at"].endswith("+00:00")
        assert logged["lines"][0]["id"] > snapshot["logs"][-1]["id"]
        assert event_id == str(logged["lines"][-1]["id"])

        await c.call("ack", {"jobs": [ref(job)]})
        assert await sse.event() == (
            "state",
            state_event(job, "completed"),
            None,
        )
        await sse.ended()
    await wait_until(lambda: _truthy(not node.events.subscribers), timeout=5)
    await c.close()


async def test_a_job_stream_does_not_repeat_lines_it_sent(
    node: Node, http: aiohttp.ClientSession
) -> None:
    c, job = await running(node, {"kind": "digest", "tenant": "acme"})
    await log_lines(c, job, node, "one", "two")
    async with stream(http, f"{JOBS}/{job['id']}/events") as sse:
        name, snapshot, _ = await sse.event()
        one, two = snapshot["logs"]
        # The same lines again on the bus (as when they were stored as the stream subscribed),
        # then a new one: only the new one is sent.
        stored = await node.life_store.logs_of_job(uuid.UUID(job["id"]), 0, None, 10)
        again = [{k: r[k] for k in ("id", "attempt", "at", "level", "message")} for r in stored]
        newer = {**again[-1], "id": two["id"] + 1000, "message": "new"}
        base = {"type": "log", "job": job["id"], "kind": "digest", "tenant": "acme"}
        node.events.publish([{**base, "lines": again}, {**base, "lines": [again[1], newer]}])
        name, logged, event_id = await sse.event()
        assert name == "log"
        assert [x["message"] for x in logged["lines"]] == ["new"]
        assert event_id == str(two["id"] + 1000)

    # An EventSource that reconnects with Last-Event-ID gets only the lines after it.
    async with stream(
        http, f"{JOBS}/{job['id']}/events", **{"Last-Event-ID": str(one["id"])}
    ) as sse:
        name, snapshot, _ = await sse.event()
        assert [x["message"] for x in snapshot["logs"]] == ["two"]
    await c.close()


async def test_a_stream_of_a_finished_job_ends_after_the_snapshot(
    node: Node, http: aiohttp.ClientSession
) -> None:
    c, job = await running(node, {"kind": "digest"})
    await c.call("ack", {"jobs": [ref(job, result=1)]})
    async with stream(http, f"{JOBS}/{job['id']}/events") as sse:
        name, snapshot, _ = await sse.event()
        assert (name, snapshot["job"]["state"], snapshot["job"]["result"]) == (
            "snapshot",
            "completed",
            1,
        )
        assert await sse.event() == (
            "state",
            state_event(job, "completed"),
            None,
        )
        await sse.ended()
    await c.close()


async def test_a_missed_state_event_ends_the_stream_at_the_next_read_of_the_job(
    node: Node, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(life_api, "RECHECK", 0.2)
    node.manager.on_states = lambda changes: None  # no state event is published
    c, job = await running(node, {"kind": "digest"})
    async with stream(http, f"{JOBS}/{job['id']}/events") as sse:
        assert (await sse.event())[0] == "snapshot"
        await c.call("fail", {"jobs": [ref(job, error="boom", retryable=False)]})
        assert await sse.event() == (
            "state",
            state_event(job, "dead"),
            None,
        )
        await sse.ended()
    await c.close()


async def test_unknown_stream_parameters_are_refused(http: aiohttp.ClientSession) -> None:
    status, job = await call(http, "POST", JOBS, {"kind": "digest"})
    status, body = await call(http, "GET", f"{JOBS}/{job['id']}/events?after=3")
    assert_error(status, body, 400, "BAD_REQUEST", "unknown parameter", "after")


# -- the all-jobs stream ---------------------------------------------------------------------------


async def test_the_all_jobs_stream_filters_by_kind_tenant_and_type(
    node: Node, http: aiohttp.ClientSession
) -> None:
    ours_c, ours = await running(node, {"kind": "digest", "tenant": "acme"})
    other_c, other = await running(node, {"kind": "report", "tenant": "acme"})
    third_c, third = await running(node, {"kind": "digest", "tenant": "initech"})
    path = "/api/v1/events?kind=digest&kind=invoice&tenant=acme&type=progress,log"
    async with stream(http, path) as sse:
        assert await sse.comment() == "watching"
        # events of other kinds and tenants are published first: the stream skips them
        await other_c.call("progress", ref(other, counters={"n": 1}))
        await third_c.call("progress", ref(third, counters={"n": 1}))
        await log_lines(third_c, third, node, "not ours")
        await ours_c.call("progress", ref(ours, counters={"n": 2}))
        name, event, _ = await sse.event()
        assert (name, event["job"], event["progress"]["n"]["current"]) == (
            "progress",
            ours["id"],
            2,
        )
        await log_lines(ours_c, ours, node, "ours")
        name, event, event_id = await sse.event()
        assert (name, event["job"], [x["message"] for x in event["lines"]]) == (
            "log",
            ours["id"],
            ["ours"],
        )
        assert event_id == str(event["lines"][0]["id"])

    async with stream(http, "/api/v1/events?type=state&type=progress") as sse:
        await sse.comment()
        await log_lines(ours_c, ours, node, "not a wanted type")
        await ours_c.call("ack", {"jobs": [ref(ours)]})
        assert await sse.event() == (
            "state",
            state_event(ours, "completed"),
            None,
        )
    for c in (ours_c, other_c, third_c):
        await c.close()


async def test_the_all_jobs_stream_keeps_alive_and_reports_lost_events(
    node: Node, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(life_api, "KEEPALIVE", 0.2)
    monkeypatch.setattr(event_bus, "QUEUE_SIZE", 2)
    async with stream(http, "/api/v1/events") as sse:
        assert await sse.comment() == "watching"
        assert await sse.comment() == "keepalive"
        # five events in one message: the stream's queue takes two, loses three
        node.events.publish(
            {"type": "progress", "job": str(n), "kind": "k", "tenant": "t", "progress": {}}
            for n in range(5)
        )
        assert await sse.event() == ("lost", {"count": 3}, None)
        assert [(await sse.event())[1]["job"] for _ in range(2)] == ["0", "1"]
        assert await sse.comment() == "keepalive"


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("type=progress,bogus", ["type", "'bogus'", "progress, log, state"]),
        ("kind=" + "k" * 129, ["kind", "128 printable"]),
        ("tenant=", ["tenant", "printable"]),
        ("job=1", ["unknown parameter", "job"]),
        ("&".join(["kind=k"] * 101), ["kind", "at most 100"]),
    ],
)
async def test_bad_all_jobs_stream_parameters_are_refused(
    http: aiohttp.ClientSession, query: str, words: list[str]
) -> None:
    status, body = await call(http, "GET", f"/api/v1/events?{query}")
    assert_error(status, body, 400, "BAD_REQUEST", *words)


# -- streams across nodes, client departure, shutdown --------------------------------------------


async def test_what_one_node_stores_reaches_a_stream_on_another(
    node_factory: NodeFactory,
) -> None:
    a = await node_factory()
    b = await node_factory()
    c, job = await running(a, {"kind": "digest", "tenant": "acme"})
    async with aiohttp.ClientSession(b.http_address) as http:
        async with stream(http, f"{JOBS}/{job['id']}/events") as sse:
            assert (await sse.event())[0] == "snapshot"
            # events are published by `a` once it learns that somebody watches (within 1 s)
            await wait_until(lambda: _truthy(a.events.watched), timeout=5)
            await c.call("progress", ref(job, counters={"emails": [5, 10]}))
            name, progress, _ = await sse.event()
            assert (name, progress["progress"]["emails"]["current"]) == ("progress", 5)
            await log_lines(c, job, a, "from a")
            name, logged, _ = await sse.event()
            assert (name, [x["message"] for x in logged["lines"]]) == ("log", ["from a"])
            await c.call("ack", {"jobs": [ref(job)]})
            assert await sse.event() == (
                "state",
                state_event(job, "completed"),
                None,
            )
            await sse.ended()
    await c.close()


async def test_a_client_that_leaves_closes_its_subscription(
    node: Node, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(life_api, "KEEPALIVE", 0.2)
    async with stream(http, "/api/v1/events") as sse:
        await sse.comment()
        assert len(node.events.subscribers) == 1
    await wait_until(lambda: _truthy(not node.events.subscribers), timeout=5)


async def test_a_node_stops_promptly_with_open_streams(node_factory: NodeFactory) -> None:
    node = await node_factory()
    c, job = await running(node, {"kind": "digest"})
    async with aiohttp.ClientSession(node.http_address) as http:
        async with (
            stream(http, "/api/v1/events") as everything,
            stream(http, f"{JOBS}/{job['id']}/events") as one,
        ):
            await everything.comment()
            assert (await one.event())[0] == "snapshot"
            async with asyncio.timeout(5):
                await node.stop()
            await everything.ended(timeout=1)
            await one.ended(timeout=1)
    assert not node.events.subscribers
    await c.close()


async def _truthy(value: bool) -> bool:
    return value


async def test_the_all_jobs_stream_passes_lines_published_out_of_id_order(
    node: Node, http: aiohttp.ClientSession
) -> None:
    """Log batches of different jobs commit concurrently: a lower id may be published later.
    Only a job's own stream deduplicates (against its snapshot); this one drops nothing."""
    base = {"type": "log", "kind": "k", "tenant": "t"}
    line = {"attempt": 1, "at": 1e9, "level": "info", "message": "m"}
    async with stream(http, "/api/v1/events?type=log") as sse:
        assert await sse.comment() == "watching"
        for job, line_id in (("B", 200), ("A", 100), ("C", 300)):
            node.events.publish([{**base, "job": job, "lines": [{**line, "id": line_id}]}])
        assert [(await sse.event())[1]["job"] for _ in range(3)] == ["B", "A", "C"]
