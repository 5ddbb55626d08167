"""HTTP API v1 against a real node, with aiohttp's client: enqueue, read, list, cancel, retry,
validation errors, health and readiness, scheduled and expiring jobs.

Jobs are run by raw wire clients (tests/rawclient.py) so each dispatch and ack is explicit.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import aiohttp
import pytest

from tests.conftest import NodeFactory
from tests.rawclient import RawClient
from tests.waiting import wait_until
from worcr_node.node import Node

JOBS = "/api/v1/jobs"


@pytest.fixture
async def http(node: Node) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(node.http_address) as session:
        yield session


async def post(http: aiohttp.ClientSession, body: Any) -> tuple[int, Any]:
    async with http.post(JOBS, json=body) as resp:
        return resp.status, await resp.json()


async def get(http: aiohttp.ClientSession, path: str, **params: Any) -> tuple[int, Any]:
    async with http.get(path, params=params) as resp:
        return resp.status, await resp.json()


async def action(http: aiohttp.ClientSession, job_id: str, verb: str) -> tuple[int, Any]:
    async with http.post(f"{JOBS}/{job_id}/{verb}") as resp:
        return resp.status, await resp.json()


async def state_of(http: aiohttp.ClientSession, job_id: str) -> str:
    status, job = await get(http, f"{JOBS}/{job_id}")
    assert status == 200, job
    state: str = job["state"]
    return state


async def wait_state(http: aiohttp.ClientSession, job_id: str, state: str) -> None:
    async def reached() -> bool:
        return await state_of(http, job_id) == state

    await wait_until(reached)


async def worker(node: Node, capacity: int = 1, **hello: Any) -> RawClient:
    client = await RawClient.connect(node.worker_address)
    await client.hello(capacity=capacity, **hello)
    return client


def assert_bad_request(status: int, body: Any, *words: str) -> None:
    assert status == 400, body
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == "BAD_REQUEST"
    message = body["error"]["message"]
    assert isinstance(message, str)
    assert message
    for word in words:
        assert word in message, (word, message)


# -- enqueue -----------------------------------------------------------------------------------


async def test_post_one_job_then_get_it(http: aiohttp.ClientSession) -> None:
    status, body = await post(http, {"kind": "h.one", "args": {"to": "bob"}, "tags": ["eu"]})
    assert status == 201
    assert set(body) == {"id", "state", "duplicate"}
    assert (body["state"], body["duplicate"]) == ("queued", False)
    uuid.UUID(body["id"])

    status, job = await get(http, f"{JOBS}/{body['id']}")
    assert status == 200
    assert job["id"] == body["id"]
    assert (job["state"], job["kind"], job["args"], job["tags"]) == (
        "queued", "h.one", {"to": "bob"}, ["eu"],
    )  # fmt: skip
    assert (job["tenant"], job["weight"], job["max_attempts"], job["attempt"]) == (
        "default", 1.0, 25, 0,
    )  # fmt: skip
    assert job["reserve_for"] == 60.0
    assert job["result"] is None
    assert job["finished_at"] is None
    assert datetime.fromisoformat(job["enqueued_at"]).tzinfo is not None
    assert job["attempts"] == []


async def test_post_a_list_of_jobs(http: aiohttp.ClientSession) -> None:
    status, body = await post(http, [{"kind": "h.many", "args": [i]} for i in range(3)])
    assert status == 201
    assert [(j["state"], j["duplicate"]) for j in body["jobs"]] == [("queued", False)] * 3
    ids = [j["id"] for j in body["jobs"]]
    assert len(set(ids)) == 3
    for i, job_id in enumerate(ids):
        assert (await get(http, f"{JOBS}/{job_id}"))[1]["args"] == [i]


async def test_client_supplied_id_makes_enqueue_idempotent(http: aiohttp.ClientSession) -> None:
    job_id = str(uuid.uuid4())
    status, first = await post(http, {"kind": "h.idem", "id": job_id, "args": [1]})
    assert status == 201
    assert first == {"id": job_id, "state": "queued", "duplicate": False}
    status, again = await post(http, {"kind": "h.idem", "id": job_id, "args": [2]})
    assert status == 200
    assert again == {"id": job_id, "state": "queued", "duplicate": True}
    assert (await get(http, f"{JOBS}/{job_id}"))[1]["args"] == [1]  # the first one is kept
    # in a list: the new one is created, the known one reported
    status, body = await post(http, [{"kind": "h.idem", "id": job_id}, {"kind": "h.idem"}])
    assert status == 201
    assert [j["duplicate"] for j in body["jobs"]] == [True, False]
    assert body["jobs"][0]["id"] == job_id


async def test_unique_key_dedupes_pending_jobs_only(http: aiohttp.ClientSession) -> None:
    status, first = await post(http, {"kind": "h.uniq", "unique_key": "report:42"})
    assert (status, first["duplicate"]) == (201, False)
    status, again = await post(http, {"kind": "h.uniq", "unique_key": "report:42", "args": [9]})
    assert status == 200
    assert again == {"id": first["id"], "state": "queued", "duplicate": True}
    status, other = await post(http, {"kind": "h.uniq", "unique_key": "report:43"})
    assert (status, other["duplicate"]) == (201, False)
    # once the first is no longer pending, the key is free again
    assert (await action(http, first["id"], "cancel"))[0] == 200
    status, fresh = await post(http, {"kind": "h.uniq", "unique_key": "report:42"})
    assert (status, fresh["duplicate"]) == (201, False)
    assert fresh["id"] != first["id"]


async def test_get_shows_attempts_after_a_run(node: Node, http: aiohttp.ClientSession) -> None:
    _, body = await post(http, {"kind": "h.run", "max_attempts": 3,
                                "backoff": {"base": 3600, "jitter": 0}})  # fmt: skip
    w = await worker(node, worker_id="http-w1")
    try:
        [job] = await w.jobs(1)
        failure = {"id": body["id"], "token": job["token"], "error": "E: nope", "backtrace": "tb"}
        assert (await w.call("fail", {"jobs": [failure]}))["results"] == [None]
    finally:
        await w.close()
    status, got = await get(http, f"{JOBS}/{body['id']}")
    assert status == 200
    assert (got["state"], got["attempt"], got["last_error"]) == ("retrying", 1, "E: nope")
    assert got["lease_token"] == job["token"]
    [attempt] = got["attempts"]
    assert {k: attempt[k] for k in ("attempt", "lease_token", "worker_id", "outcome")} == {
        "attempt": 1, "lease_token": job["token"], "worker_id": "http-w1", "outcome": "failed",
    }  # fmt: skip
    assert (attempt["error"], attempt["backtrace"]) == ("E: nope", "tb")
    assert attempt["node_id"] == got["node_id"]
    started = datetime.fromisoformat(attempt["started_at"])
    assert started <= datetime.fromisoformat(attempt["finished_at"])


async def test_get_shows_the_backoff_policy_as_given(http: aiohttp.ClientSession) -> None:
    policy = {"base": 0.0, "factor": 1.5, "max": 10.0, "jitter": 0.0}  # base 0: retry at once
    status, body = await post(http, {"kind": "h.backoff", "backoff": policy})
    assert status == 201
    assert (await get(http, f"{JOBS}/{body['id']}"))[1]["backoff"] == policy


async def test_get_unknown_or_malformed_id(http: aiohttp.ClientSession) -> None:
    status, body = await get(http, f"{JOBS}/{uuid.uuid4()}")
    assert status == 404
    assert body["error"]["code"] == "NOT_FOUND"
    assert_bad_request(*await get(http, f"{JOBS}/not-a-uuid"), "not a job id")


# -- list --------------------------------------------------------------------------------------


async def test_list_filters_and_paginates_each_job_once(http: aiohttp.ClientSession) -> None:
    _, body = await post(http, [{"kind": "h.page", "args": [i]} for i in range(5)])
    wanted = {j["id"] for j in body["jobs"]}
    await post(http, [{"kind": "h.other"}, {"kind": "h.other"}])  # other kind
    await post(http, {"kind": "h.page", "run_in": 3600})  # same kind, scheduled

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"state": "queued", "kind": "h.page", "limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        status, page = await get(http, JOBS, **params)
        assert status == 200
        pages += 1
        assert len(page["jobs"]) <= 2
        assert all((j["state"], j["kind"]) == ("queued", "h.page") for j in page["jobs"])
        seen.extend(j["id"] for j in page["jobs"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert pages < 10, "pagination does not end"
    assert pages == 3
    assert len(seen) == len(set(seen)) == 5
    assert set(seen) == wanted
    assert seen == sorted(seen, key=uuid.UUID, reverse=True)  # newest first

    status, everything = await get(http, JOBS, kind="h.page")
    assert status == 200
    assert len(everything["jobs"]) == 6
    assert everything["next_cursor"] is None


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"state": "sleeping"}, ["state"]),
        ({"limit": "0"}, ["limit"]),
        ({"limit": "1001"}, ["limit"]),
        ({"limit": "ten"}, ["limit"]),
        ({"cursor": "nope"}, ["cursor"]),
        ({"colour": "red"}, ["colour"]),
    ],
)
async def test_list_rejects_bad_parameters(
    http: aiohttp.ClientSession, params: dict[str, str], words: list[str]
) -> None:
    assert_bad_request(*await get(http, JOBS, **params), *words)


# -- cancel and retry --------------------------------------------------------------------------


async def test_cancel(node: Node, http: aiohttp.ClientSession) -> None:
    _, queued = await post(http, {"kind": "h.cancel"})
    status, body = await action(http, queued["id"], "cancel")
    assert status == 200
    assert body == {"id": queued["id"], "state": "cancelled", "previous": "queued"}
    assert await state_of(http, queued["id"]) == "cancelled"
    status, body = await action(http, queued["id"], "cancel")
    assert status == 409
    assert body["error"]["code"] == "INVALID_STATE"
    assert "cancelled" in body["error"]["message"]

    _, done = await post(http, {"kind": "h.cancel"})
    w = await worker(node)
    try:
        [job] = await w.jobs(1)  # the cancelled job is never dispatched: this is the second
        assert job["id"] == done["id"]
        await w.call("ack", {"jobs": [{"id": done["id"], "token": job["token"]}]})
    finally:
        await w.close()
    status, body = await action(http, done["id"], "cancel")
    assert status == 409
    assert body["error"]["code"] == "INVALID_STATE"
    assert await state_of(http, done["id"]) == "completed"

    status, body = await action(http, str(uuid.uuid4()), "cancel")
    assert (status, body["error"]["code"]) == (404, "NOT_FOUND")
    assert_bad_request(*await action(http, "12345", "cancel"), "not a job id")


async def test_cancel_of_a_running_job_tells_its_worker(
    node: Node, http: aiohttp.ClientSession
) -> None:
    _, body = await post(http, {"kind": "h.running"})
    w = await worker(node)
    try:
        [job] = await w.jobs(1)
        status, answer = await action(http, body["id"], "cancel")
        assert (status, answer["previous"]) == (200, "running")
        cancel = await w.next_notification("cancel")
        assert cancel["jobs"] == [{"id": body["id"], "token": job["token"]}]
        late = await w.call("ack", {"jobs": [{"id": body["id"], "token": job["token"]}]})
        assert late["results"][0]["code"] == "STALE_TOKEN"
    finally:
        await w.close()
    assert await state_of(http, body["id"]) == "cancelled"


async def test_retry_of_a_dead_job_runs_it_again(node: Node, http: aiohttp.ClientSession) -> None:
    _, body = await post(http, {"kind": "h.retry"})
    job_id = body["id"]
    w = await worker(node)
    try:
        [job] = await w.jobs(1)
        failure = {"id": job_id, "token": job["token"], "error": "bad", "retryable": False}
        await w.call("fail", {"jobs": [failure]})
        assert await state_of(http, job_id) == "dead"

        status, answer = await action(http, job_id, "retry")
        assert status == 200
        assert answer == {"id": job_id, "state": "queued"}
        [again] = await w.jobs(1)
        assert again["id"] == job_id
        assert again["token"] > job["token"]
        ok = await w.call("ack", {"jobs": [{"id": job_id, "token": again["token"], "result": 7}]})
        assert ok["results"] == [None]
    finally:
        await w.close()
    _, got = await get(http, f"{JOBS}/{job_id}")
    assert (got["state"], got["result"]) == ("completed", 7)
    assert [a["outcome"] for a in got["attempts"]] == ["failed", "completed"]

    status, answer = await action(http, job_id, "retry")  # completed: nothing to retry
    assert (status, answer["error"]["code"]) == (409, "INVALID_STATE")
    status, answer = await action(http, str(uuid.uuid4()), "retry")
    assert (status, answer["error"]["code"]) == (404, "NOT_FOUND")
    assert_bad_request(*await action(http, "x", "retry"), "not a job id")


# -- validation --------------------------------------------------------------------------------


async def test_invalid_json_is_a_bad_request(http: aiohttp.ClientSession) -> None:
    for data in (b"{not json", b"\xff\xfe\x00", b""):
        async with http.post(JOBS, data=data, headers={"Content-Type": "application/json"}) as resp:
            assert_bad_request(resp.status, await resp.json(), "JSON")


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"kind": "k", "surprise": 1}, ["surprise"]),
        ({"args": [1]}, ["kind"]),
        ({"kind": ""}, ["kind"]),
        ({"kind": "k", "weight": -1}, ["weight"]),
        ({"kind": "k", "weight": 0}, ["weight"]),
        ({"kind": "k", "weight": "heavy"}, ["weight"]),
        ({"kind": "k", "weight": True}, ["weight"]),
        ({"kind": "k", "run_at": "2030-01-01T00:00:00"}, ["run_at", "timezone"]),
        ({"kind": "k", "run_at": "tomorrow"}, ["run_at"]),
        ({"kind": "k", "run_at": 1, "run_in": 1}, ["run_at", "run_in"]),
        ({"kind": "k", "max_attempts": 0}, ["max_attempts"]),
        ({"kind": "k", "args": [2**70]}, ["args"]),
        ({"kind": "k", "backoff": {"base": 1, "speed": 2}}, ["backoff"]),
        ({"kind": "k", "id": "not-a-uuid"}, ["id"]),
        ([], ["jobs"]),
        (42, ["job spec"]),
        ([{"kind": "ok"}, {"kind": "k", "tags": "eu"}], ["jobs[1]", "tags"]),
    ],
)
async def test_invalid_spec_is_a_bad_request(
    http: aiohttp.ClientSession, body: Any, words: list[str]
) -> None:
    assert_bad_request(*await post(http, body), *words)
    status, listed = await get(http, JOBS)
    assert (status, listed["jobs"]) == (200, [])  # nothing was stored, not even the good one


async def test_nan_weight_is_a_bad_request(http: aiohttp.ClientSession) -> None:
    data = b'{"kind": "k", "weight": NaN}'
    async with http.post(JOBS, data=data, headers={"Content-Type": "application/json"}) as resp:
        assert_bad_request(resp.status, await resp.json(), "weight")


async def test_body_over_the_size_limit_is_refused(http: aiohttp.ClientSession) -> None:
    body = b'{"kind": "k", "args": ["' + b"x" * (9 << 20) + b'"]}'
    async with http.post(
        JOBS, data=io.BytesIO(body), headers={"Content-Type": "application/json"}
    ) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"]["code"] == "BAD_REQUEST"


async def test_run_at_with_timezone_schedules_the_job(http: aiohttp.ClientSession) -> None:
    when = datetime.now(UTC) + timedelta(hours=1)
    east = when.astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat()
    for text in (when.isoformat(), when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), east):
        status, body = await post(http, {"kind": "h.at", "run_at": text})
        assert (status, body["state"]) == (201, "scheduled"), text
        _, job = await get(http, f"{JOBS}/{body['id']}")
        assert abs(datetime.fromisoformat(job["run_at"]) - when) < timedelta(milliseconds=1)


# -- health ------------------------------------------------------------------------------------


async def test_healthz_and_readyz(node: Node, http: aiohttp.ClientSession) -> None:
    for path, status_text in (("/healthz", "ok"), ("/readyz", "ready")):
        status, body = await get(http, path)
        assert status == 200
        assert body == {"status": status_text, "node_id": node.config.node_id}


# -- time-driven -------------------------------------------------------------------------------


async def test_scheduled_job_is_promoted_and_runs(node_factory: NodeFactory) -> None:
    node = await node_factory(duty_periods={"promote": 0.05})
    w = await worker(node)
    async with aiohttp.ClientSession(node.http_address) as http:
        status, body = await post(http, {"kind": "h.later", "run_in": 0.3})
        assert (status, body["state"]) == (201, "scheduled")
        try:
            [job] = await w.jobs(1)
            assert (job["id"], job["attempt"]) == (body["id"], 1)
            await w.call("ack", {"jobs": [{"id": body["id"], "token": job["token"]}]})
        finally:
            await w.close()
        _, got = await get(http, f"{JOBS}/{body['id']}")
    assert got["state"] == "completed"
    assert datetime.fromisoformat(got["started_at"]) >= datetime.fromisoformat(got["run_at"])


async def test_expired_job_is_never_dispatched(node_factory: NodeFactory) -> None:
    node = await node_factory(duty_periods={"expire": 0.05})
    w = await worker(node, capacity=4)
    async with aiohttp.ClientSession(node.http_address) as http:
        status, body = await post(http, {"kind": "h.expiring", "expires_in": 0})
        assert status == 201
        await wait_state(http, body["id"], "expired")
        # A job enqueued after it in the same lane is dispatched: the expired one was skipped.
        _, sentinel = await post(http, {"kind": "h.expiring"})
        try:
            [job] = await w.jobs(1)
            assert job["id"] == sentinel["id"]
            assert w.notifications.empty()
        finally:
            await w.close()
        _, got = await get(http, f"{JOBS}/{body['id']}")
    assert (got["state"], got["attempt"], got["attempts"]) == ("expired", 0, [])
    assert got["finished_at"] is not None
