"""HTTP API v1 for the life of jobs: progress, result and log lines, event streams, kind settings.

Routes registered on the main app by `build_app` (so the bearer-token middleware and JSON errors
of `api.py` apply). Reads come from PostgreSQL: the job row (`PgStore.job_get`) and `LifeStore`
(log lines, settings per kind). The two Server-Sent Events streams forward what the `EventStreams`
hands this node, which is what every node of the cluster published: one job's stream opens with
a snapshot read after subscribing, so nothing falls between the two (docs/events.md).

Open streams end when the node shuts down: the app's `on_shutdown` hook (run by the runner's
cleanup in `Node.stop`) wakes each of them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from worcr.wire import ErrorCode, quote, quoted
from worcr_node.http.errors import (
    ApiError,
    bad_request,
    json_body,
    path_id,
    query_int,
    refuse_unknown,
    text_ok,
)
from worcr_node.http.render import render_job, render_result
from worcr_node.life.events import EventStreams, Subscription
from worcr_node.manager import JobManager
from worcr_node.state import FINAL
from worcr_node.store.life import LifeStore
from worcr_node.store.pg import StorageUnavailable

__all__ = ["LifeApi", "add_life_routes"]

log = logging.getLogger(__name__)

Event = dict[str, Any]

FINAL_STATES = frozenset(s.value for s in FINAL)
EVENT_TYPES = ("progress", "log", "state")
SNAPSHOT_LINES = 200  # log lines in a job stream's snapshot: the last of the current attempt
KEEPALIVE = 15.0  # seconds of silence before a `: keepalive` comment
RECHECK = 5.0  # seconds between reads of a watched job's row (a state event may be missed)
DEFAULT_LINES = 1000
MAX_LINES = 10_000
MAX_FILTERS = 100  # kind= and tenant= values of one all-jobs stream
MAX_INT8 = (1 << 63) - 1
MAX_INT4 = (1 << 31) - 1
# Settings of a kind: field -> (lowest, highest) seconds.
KIND_FIELDS = {"max_run_time": (1, 30 * 86400), "yield_grace": (0, 86400)}

_CLOSE: Event = {"type": "close"}  # offered to every open stream when the node shuts down


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat()


def _state_event(row: Any) -> dict[str, Any]:
    """A `state` event for a job as read (the job's stream found it in that state)."""
    return {"type": "state", "job": str(row["id"]), "state": row["state"], "kind": row["kind"],
            "tenant": row["tenant"]}  # fmt: skip


def _line(row: Any) -> dict[str, Any]:
    """A log line as the API shows it (a stored row or a line of a log event)."""
    return {
        "id": row["id"],
        "attempt": row["attempt"],
        "at": _iso(row["at"]),
        "level": row["level"],
        "message": row["message"],
    }


def _last_event_id(request: web.Request) -> int:
    """The `Last-Event-ID` an EventSource sends when it reconnects: the last log line it got."""
    raw = request.headers.get("Last-Event-ID", "")
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 18 else 0


class _Stream:
    """One open Server-Sent Events response and the subscription that feeds it."""

    def __init__(self, request: web.Request, sub: Subscription) -> None:
        self.request = request
        self.sub = sub
        self.resp = web.StreamResponse(
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        self.resp.content_type = "text/event-stream"
        self.seen = 0  # the largest log line id sent (the id of `log` events)
        # One job's stream: ids of the lines its snapshot held, or that a reconnecting client
        # had (up to `floor`): live lines among them are not sent again. Live lines themselves
        # come once each, but not necessarily in id order (batches commit concurrently).
        self.sent_ids: set[int] = set()
        self.floor = 0
        self.wrote_at = 0.0

    async def open(self) -> None:
        await self.resp.prepare(self.request)

    def gone(self) -> bool:
        transport = self.request.transport
        return transport is None or transport.is_closing()

    async def write(self, text: str) -> None:
        await self.resp.write(text.encode())
        self.wrote_at = asyncio.get_running_loop().time()

    async def send(self, name: str, data: Any, event_id: int | None = None) -> None:
        head = f"event: {name}\n" + ("" if event_id is None else f"id: {event_id}\n")
        await self.write(f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n")

    async def forward(self, event: Event) -> None:
        """A live event as `event: <type>`; log lines already sent are dropped."""
        kind = event.get("type")
        if kind == "log":
            lines = [
                _line(x)
                for x in event.get("lines") or ()
                if x["id"] > self.floor and x["id"] not in self.sent_ids
            ]
            if not lines:
                return
            self.seen = max(self.seen, max(x["id"] for x in lines))
            await self.send("log", {**event, "lines": lines}, self.seen)
        elif kind in ("progress", "state"):
            await self.send(kind, event)

    async def report_lost(self) -> None:
        if self.sub.lost:
            count, self.sub.lost = self.sub.lost, 0
            await self.send("lost", {"count": count})


# A watched job's row is read again every RECHECK seconds: this says whether the stream is over.
Recheck = Callable[[_Stream], Awaitable[bool]]


class LifeApi:
    def __init__(self, manager: JobManager, life: LifeStore, events: EventStreams) -> None:
        self.m = manager
        self.life = life
        self.events = events
        self.streams: set[_Stream] = set()
        self.closing = False

    async def on_shutdown(self, app: web.Application) -> None:
        """End every open stream (the node is stopping): each wakes up and returns."""
        self.closing = True
        for stream in list(self.streams):
            stream.sub.offer(_CLOSE)  # a full queue wakes it anyway, and it checks `closing`

    async def _row(self, job_id: uuid.UUID) -> Any:
        row = await self.m.store.job_get(job_id)
        if row is None:
            raise ApiError(404, ErrorCode.NOT_FOUND, f"no job {job_id}")
        return row

    # -- progress, result, logs --------------------------------------------------------------------

    async def progress(self, request: web.Request) -> web.Response:
        row = await self._row(path_id(request))
        job = render_job(row)
        return web.json_response(
            {"id": job["id"], "state": job["state"], "progress": job["progress"] or {}}
        )

    async def result(self, request: web.Request) -> web.Response:
        row = await self._row(path_id(request))
        return web.json_response(
            {"id": str(row["id"]), "state": row["state"], "result": render_result(row)}
        )

    async def logs(self, request: web.Request) -> web.Response:
        job_id = path_id(request)
        refuse_unknown(request, ("attempt", "after", "limit"))
        attempt = query_int(request, "attempt", 1, MAX_INT4)
        after = query_int(request, "after", 0, MAX_INT8) or 0
        limit = query_int(request, "limit", 1, MAX_LINES) or DEFAULT_LINES
        await self._row(job_id)
        lines = [_line(r) for r in await self.life.logs_of_job(job_id, after, attempt, limit)]
        more = lines[-1]["id"] if len(lines) == limit else None
        return web.json_response({"lines": lines, "next": more})

    # -- event streams -----------------------------------------------------------------------------

    async def job_events(self, request: web.Request) -> web.StreamResponse:
        job_id = path_id(request)
        refuse_unknown(request, ())
        stream = self._subscribe(request, job=str(job_id))
        try:
            row = await self._row(job_id)  # after subscribing: no event falls in between
            tail = []
            if row["lease_token"]:  # the lines of the job's current (or last) attempt
                tail = await self.life.logs_tail_of_attempt(
                    job_id, row["lease_token"], SNAPSHOT_LINES
                )
            stream.floor = _last_event_id(request)  # a reconnecting EventSource has those
            lines = [_line(r) for r in tail if r["id"] > stream.floor]
            stream.sent_ids = {x["id"] for x in lines}
            stream.seen = max([stream.floor] + [x["id"] for x in lines])
            await stream.open()
            snapshot = {"job": render_job(row), "logs": lines}
            await stream.send("snapshot", snapshot, stream.seen or None)
            if row["state"] in FINAL_STATES:
                await stream.send("state", _state_event(row))
            else:
                await self._pump(stream, self._job_over)
        except ConnectionError:  # the client left
            pass
        finally:
            self._close(stream)
        return stream.resp

    async def _job_over(self, stream: _Stream) -> bool:
        """Whether the watched job reached a final state (then its `state` event is sent)."""
        job = stream.sub.job
        assert job is not None
        try:
            row = await self.m.store.job_get(uuid.UUID(job))
        except StorageUnavailable:
            return False  # try again at the next recheck
        if row is None:  # deleted
            return True
        if row["state"] not in FINAL_STATES:
            return False
        await stream.send("state", _state_event(row))
        return True

    async def all_events(self, request: web.Request) -> web.StreamResponse:
        refuse_unknown(request, ("kind", "tenant", "type"))
        kinds = _names(request, "kind", self.m.limits.max_kind_len)
        tenants = _names(request, "tenant", self.m.limits.max_tenant_len)
        types = _types(request)
        stream = self._subscribe(request, kinds=kinds, tenants=tenants, types=types)
        try:
            await stream.open()
            await stream.write(": watching\n\n")
            await self._pump(stream, None)
        except ConnectionError:
            pass
        finally:
            self._close(stream)
        return stream.resp

    def _subscribe(self, request: web.Request, **which: Any) -> _Stream:
        if self.closing:
            raise ApiError(503, ErrorCode.SHUTTING_DOWN, "node shutting down: connect to another")
        stream = _Stream(request, self.events.subscribe(**which))
        self.streams.add(stream)
        return stream

    def _close(self, stream: _Stream) -> None:
        stream.sub.close()
        self.streams.discard(stream)

    async def _pump(self, stream: _Stream, recheck: Recheck | None) -> None:
        """Forward events until a final state, the client leaves or the node shuts down."""
        clock = asyncio.get_running_loop().time
        recheck_at = clock() + RECHECK
        while True:
            due = stream.wrote_at + KEEPALIVE
            if recheck is not None:
                due = min(due, recheck_at)
            event = await stream.sub.get(max(0.0, due - clock()))
            if self.closing or stream.gone():
                return
            await stream.report_lost()
            if event is not None:
                await stream.forward(event)
                if (
                    recheck is not None
                    and event.get("type") == "state"
                    and event.get("state") in FINAL_STATES
                ):
                    return
            if recheck is not None and clock() >= recheck_at:
                if await recheck(stream):
                    return
                recheck_at = clock() + RECHECK
            if clock() >= stream.wrote_at + KEEPALIVE:
                await stream.write(": keepalive\n\n")

    # -- settings per kind -------------------------------------------------------------------------

    def _kind(self, request: web.Request) -> str:
        kind = request.match_info["kind"]
        limit = self.m.limits.max_kind_len
        if not text_ok(kind, limit):
            raise bad_request(f"{quote(kind)} is not a job kind (at most {limit} printable "
                              "characters)")  # fmt: skip
        return kind

    async def kinds(self, request: web.Request) -> web.Response:
        return web.json_response({"kinds": [_kind_row(r) for r in await self.life.kind_list()]})

    async def kind_get(self, request: web.Request) -> web.Response:
        kind = self._kind(request)
        row = await self.life.kind_get(kind)
        if row is None:
            raise ApiError(404, ErrorCode.NOT_FOUND, f"no settings for kind {quote(kind)}")
        return web.json_response(_kind_row(row))

    async def kind_put(self, request: web.Request) -> web.Response:
        kind = self._kind(request)
        max_run_time, yield_grace = _kind_settings(await json_body(request))
        return web.json_response(
            _kind_row(await self.life.kind_put(kind, max_run_time, yield_grace))
        )

    async def kind_delete(self, request: web.Request) -> web.Response:
        kind = self._kind(request)
        if not await self.life.kind_delete(kind):
            raise ApiError(404, ErrorCode.NOT_FOUND, f"no settings for kind {quote(kind)}")
        return web.Response(status=204)


def _names(request: web.Request, name: str, max_len: int) -> list[str]:
    values = request.query.getall(name, [])
    if len(values) > MAX_FILTERS:
        raise bad_request(f"{name}: at most {MAX_FILTERS} values")
    for value in values:
        if not text_ok(value, max_len):
            raise bad_request(f"{name}: {quote(value)} is not 1 to {max_len} printable characters")
    return values


def _types(request: web.Request) -> list[str]:
    types = [t for raw in request.query.getall("type", []) for t in raw.split(",")]
    bad = [t for t in types if t not in EVENT_TYPES]
    if bad:
        raise bad_request(f"type: {quote(bad[0])} is not one of {', '.join(EVENT_TYPES)}")
    return types


def _kind_settings(body: Any) -> tuple[float | None, float | None]:
    if not isinstance(body, dict):
        raise bad_request(
            'body must be an object: {"max_run_time": seconds or null, '
            '"yield_grace": seconds or null}'
        )
    unknown = set(body) - set(KIND_FIELDS)
    if unknown:
        raise bad_request(f"unknown field(s) {quoted(unknown)}; allowed: {sorted(KIND_FIELDS)}")
    out: list[float | None] = []
    for field, (low, high) in KIND_FIELDS.items():
        value = body.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise bad_request(f"{field}: expected a number of seconds, or null")
        if value is not None and not low <= value <= high:  # NaN is not in range either
            raise bad_request(f"{field}: expected {low} to {high} seconds, got {quote(value)}")
        if value == 0 and math.copysign(1.0, value) < 0:
            raise bad_request(f"{field}: -0.0 is negative zero; give 0")
        out.append(None if value is None else float(value))
    return out[0], out[1]


def _kind_row(row: Any) -> dict[str, Any]:
    return {
        "kind": row["kind"],
        "max_run_time": row["max_run_time"],
        "yield_grace": row["yield_grace"],
        "updated_at": row["updated_at"].isoformat(),
    }


def add_life_routes(
    app: web.Application, manager: JobManager, life: LifeStore, events: EventStreams
) -> None:
    api = LifeApi(manager, life, events)
    app.on_shutdown.append(api.on_shutdown)
    r = app.router
    r.add_get("/api/v1/jobs/{id}/progress", api.progress)
    r.add_get("/api/v1/jobs/{id}/result", api.result)
    r.add_get("/api/v1/jobs/{id}/logs", api.logs)
    r.add_get("/api/v1/jobs/{id}/events", api.job_events)
    r.add_get("/api/v1/events", api.all_events)
    r.add_get("/api/v1/kinds", api.kinds)
    r.add_get("/api/v1/kinds/{kind:.+}", api.kind_get)
    r.add_put("/api/v1/kinds/{kind:.+}", api.kind_put)
    r.add_delete("/api/v1/kinds/{kind:.+}", api.kind_delete)
