"""HTTP API v1: `GET /api/v1/dispatch/explain` - would a job go to a worker, and why.

`?job=ID&worker=ID` explains against a connected worker (found on this node, else in the cluster's
worker registry in Redis); `?job=ID&tags=a,b[&kinds=x,y]` against ad-hoc worker tags. The answer
comes from `worcr_node.dispatch.explain`, which uses the dispatcher's own rule evaluation and pick
structures, plus the live usage (Redis) of every job limit key the job would take from.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from aiohttp import web

from worcr.wire import ErrorCode, quote
from worcr_node.dispatch.dispatcher import Dispatcher, LaneInfo
from worcr_node.dispatch.explain import WorkerDesc, explain, parse_list
from worcr_node.dispatch.rules import MAX_TEXT, TagSet
from worcr_node.http.errors import (
    ApiError,
    bad_request,
    query_one,
    query_text,
    refuse_unknown,
    text_ok,
)
from worcr_node.http.render import render_job
from worcr_node.store.redis_index import IndexUnavailable

__all__ = ["add_explain_route"]

_PARAMS = frozenset({"job", "worker", "tags", "kinds"})
MAX_TAGS = 64


class ExplainApi:
    def __init__(self, dispatcher: Dispatcher) -> None:
        self.d = dispatcher

    async def explain(self, request: web.Request) -> web.Response:
        q = request.query
        refuse_unknown(request, _PARAMS)
        raw = query_one(request, "job") or ""
        try:
            job_id = uuid.UUID(raw)
        except ValueError:
            raise bad_request("job: give the id of a job, as in ?job=<id>&worker=<id>") from None
        if "worker" in q and ("tags" in q or "kinds" in q):
            raise bad_request("give either worker=<id> or tags=/kinds= (ad-hoc worker), not both")
        worker_id = query_text(request, "worker", MAX_TEXT)
        if worker_id is not None:
            worker = await self._worker(worker_id)
        elif "tags" in q or "kinds" in q:
            worker = WorkerDesc(_names(request, "tags"), _names(request, "kinds"))
        else:
            raise bad_request("give worker=<id>, or tags=a,b (and optionally kinds=x,y)")
        row = await self.d.store.job_get(job_id)
        if row is None:
            raise ApiError(404, ErrorCode.NOT_FOUND, f"no job {job_id}")
        lane = LaneInfo(row["lane"], row["kind"], row["tenant"], TagSet(row["tags"]),
                        float(row["weight"]))  # fmt: skip
        job = render_job(row)
        job["lane"] = row["lane"]
        answer = await explain(self.d, job, lane, worker, job["args"])
        await self._usage(answer)
        return web.json_response(answer)

    async def _usage(self, answer: dict[str, Any]) -> None:
        """Live usage of each applying limit's key; a full one is a reason the job waits."""
        applying = [e for e in answer["limits"] if e["applies"]]
        if not applying:
            return
        by_name = self.d.limits.by_name
        checks = [self.d.limits.check(by_name[e["name"]], e["key"]) for e in applying]
        try:
            usage, _ = await self.d.index.limit_usage(checks)
        except IndexUnavailable:
            return
        for e, (used, available, retry_ms) in zip(applying, usage, strict=True):
            e.update(
                used=used,
                available=available,
                retry_after=None if available > 0 or retry_ms < 0 else retry_ms / 1000,
            )
            if available <= 0 and answer["allowed"]:
                answer["reasons"].append(
                    f"limit {e['name']!r} is full for key {e['key']!r}: the job waits, ready, "
                    "until it admits again")  # fmt: skip
                answer["dispatchable_now"] = False

    async def _worker(self, worker_id: str) -> WorkerDesc:
        for c in self.d.consumers:
            if c.worker_id == worker_id:
                return WorkerDesc(tuple(c.tags), tuple(sorted(c.kinds)), worker_id,
                                  self.d.manager.node_id, "connected to this node")  # fmt: skip
        raw = await self.d.index.worker_get(worker_id)
        if raw is None:
            raise ApiError(404, ErrorCode.NOT_FOUND,
                           f"no worker {quote(worker_id)} is connected to any node; "
                           "give its tags instead: ?job=<id>&tags=a,b&kinds=x")  # fmt: skip
        entry = json.loads(raw)
        node = str(entry.get("node"))
        return WorkerDesc(tuple(entry.get("tags", ())), tuple(entry.get("kinds", ())), worker_id,
                          node, f"registered by node {node}")  # fmt: skip


def _names(request: web.Request, name: str) -> tuple[str, ...]:
    """The comma-separated tags or kinds of an ad-hoc worker, each as a worker may have it."""
    names = parse_list(query_one(request, name))
    if len(names) > MAX_TAGS:
        raise bad_request(f"{name}: at most {MAX_TAGS}")
    if not all(text_ok(n, MAX_TEXT) for n in names):
        raise bad_request(f"{name}: each is 1 to {MAX_TEXT} printable characters")
    return tuple(names)


def add_explain_route(app: web.Application, dispatcher: Dispatcher) -> None:
    app.router.add_get("/api/v1/dispatch/explain", ExplainApi(dispatcher).explain)
