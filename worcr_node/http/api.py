"""HTTP API v1 (aiohttp): enqueue, read, list, cancel and retry jobs; health and readiness.

Handlers only validate and translate; the JobManager does the work. Errors are JSON
`{"error": {"code", "message"}}` with the same codes as the wire protocol. The dispatch policy
routes (rules, fairness, tenant weights) live in `dispatch_api.py`, explain in `explain_api.py`,
limits in `limits_api.py`, job life (progress, result, logs, event streams, settings per kind) in
`life_api.py`; `build_app` adds them.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from worcr.wire import ErrorCode
from worcr_node.dispatch.dispatcher import Dispatcher
from worcr_node.dispatch.policy import PolicyStore
from worcr_node.functions.runner import FunctionRunner
from worcr_node.functions.store import FunctionStore
from worcr_node.http.dispatch_api import add_dispatch_routes
from worcr_node.http.edge import BodyLimits, edge_middleware
from worcr_node.http.errors import (
    ApiError,
    error_response,
    json_body,
    path_id,
    query_int,
    query_one,
    query_text,
    refuse_unknown,
)
from worcr_node.http.explain_api import add_explain_route
from worcr_node.http.functions_api import add_functions_routes
from worcr_node.http.life_api import add_life_routes
from worcr_node.http.limits_api import add_limits_routes
from worcr_node.http.render import JobPage, render_attempt, render_job
from worcr_node.jobspec import SpecError
from worcr_node.life.events import EventStreams
from worcr_node.manager import JobManager
from worcr_node.state import JobState
from worcr_node.store.life import LifeStore
from worcr_node.store.pg import StorageUnavailable
from worcr_node.store.redis_index import IndexUnavailable

__all__ = ["build_app"]

log = logging.getLogger(__name__)

MAX_BODY = 8 << 20
STATES = {s.value for s in JobState}
LIST_PARAMS = ("state", "kind", "tenant", "limit", "cursor")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _middleware(token: str | None) -> Any:
    @web.middleware
    async def mw(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token is not None and request.path.startswith("/api/"):
            if request.headers.get("Authorization") != f"Bearer {token}":
                return error_response(401, ErrorCode.UNAUTHORIZED, "missing or wrong bearer token")
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(exc.status, exc.code, exc.message, exc.details)
        except SpecError as exc:
            return error_response(400, ErrorCode.BAD_REQUEST, str(exc))
        except (StorageUnavailable, IndexUnavailable) as exc:
            return error_response(503, ErrorCode.UNAVAILABLE, f"storage unavailable, retry: {exc}",
                                  headers={"Retry-After": "1"})  # fmt: skip
        except web.HTTPRequestEntityTooLarge:
            return error_response(413, ErrorCode.BAD_REQUEST, f"body over {MAX_BODY} bytes")

    return mw


def _cursor(request: web.Request) -> uuid.UUID | None:
    """The list's `cursor` (a `next_cursor` given back); empty is none."""
    raw = query_one(request, "cursor")
    if not raw:
        return None
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise ApiError(400, ErrorCode.BAD_REQUEST, "cursor: not a next_cursor given") from None


class Api:
    def __init__(self, manager: JobManager) -> None:
        self.m = manager

    async def enqueue(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        single = isinstance(body, dict)
        specs = [body] if single else body
        if not isinstance(specs, list):
            raise ApiError(400, ErrorCode.BAD_REQUEST, "body must be a job spec or a list of them")
        results = await self.m.enqueue(specs)
        out = [{"id": str(r.id), "state": r.state, "duplicate": r.duplicate} for r in results]
        status = 200 if all(r.duplicate for r in results) else 201
        return web.json_response(out[0] if single else {"jobs": out}, status=status)

    async def get(self, request: web.Request) -> web.Response:
        job_id = path_id(request)
        row = await self.m.store.job_get(job_id)
        if row is None:
            raise ApiError(404, ErrorCode.NOT_FOUND, f"no job {job_id}")
        job = render_job(row)
        job["attempts"] = [render_attempt(a) for a in await self.m.store.attempts_of_job(job_id)]
        return web.json_response(job)

    async def list(self, request: web.Request) -> web.Response:
        """A page of jobs, newest first: at most `limit`, and bounded in bytes (`JobPage`)."""
        refuse_unknown(request, LIST_PARAMS)
        state = query_one(request, "state")
        if state is not None and state not in STATES:
            raise ApiError(400, ErrorCode.BAD_REQUEST, f"state must be one of {sorted(STATES)}")
        kind = query_text(request, "kind", self.m.limits.max_kind_len)
        tenant = query_text(request, "tenant", self.m.limits.max_tenant_len)
        page = JobPage(query_int(request, "limit", 1, 1000) or 100)
        cursor = _cursor(request)
        while not page.full:  # rows are read a few at a time: the page may end on bytes
            want = page.next_fetch()
            rows = await self.m.store.job_list(want, state, kind, tenant, cursor)
            for row in rows:
                if not page.add(row):
                    break
            if len(rows) < want:
                break
            cursor = rows[-1]["id"]
        return web.Response(text=page.body(), content_type="application/json")

    async def cancel(self, request: web.Request) -> web.Response:
        job_id = path_id(request)
        changed, previous = await self.m.cancel(job_id)
        if previous == "missing":
            raise ApiError(404, ErrorCode.NOT_FOUND, f"no job {job_id}")
        if not changed:
            raise ApiError(
                409, ErrorCode.INVALID_STATE, f"job {job_id} is {previous}: not cancellable"
            )
        return web.json_response({"id": str(job_id), "state": "cancelled", "previous": previous})

    async def retry(self, request: web.Request) -> web.Response:
        job_id = path_id(request)
        if not await self.m.retry_now(job_id):
            row = await self.m.store.job_get(job_id)
            if row is None:
                raise ApiError(404, ErrorCode.NOT_FOUND, f"no job {job_id}")
            raise ApiError(409, ErrorCode.INVALID_STATE,
                           f"job {job_id} is {row['state']}: only scheduled, retrying, dead, "
                           "cancelled or expired jobs can be retried")  # fmt: skip
        return web.json_response({"id": str(job_id), "state": "queued"})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "node_id": self.m.node_id})

    async def readyz(self, request: web.Request) -> web.Response:
        problems = {}
        try:
            await self.m.store.ping()
        except StorageUnavailable as exc:
            problems["postgresql"] = str(exc)
        try:
            await self.m.index.epoch()
        except IndexUnavailable as exc:
            problems["redis"] = str(exc)
        if problems:
            return web.json_response({"status": "unavailable", "problems": problems}, status=503)
        return web.json_response({"status": "ready", "node_id": self.m.node_id})


def build_app(
    manager: JobManager,
    token: str | None,
    policy: PolicyStore,
    dispatcher: Dispatcher,
    life: LifeStore,
    events: EventStreams,
    functions: FunctionRunner | None = None,
    body_timeout: float = 30.0,
    body_budget: int = 64 << 20,
) -> web.Application:
    """The API; a request body must arrive within `body_timeout` seconds, and bodies over 64 KiB
    hold at most `body_budget` bytes at once (`edge.py`)."""
    limits = BodyLimits(body_timeout, body_budget, MAX_BODY)
    app = web.Application(
        middlewares=[_middleware(token), edge_middleware(limits)], client_max_size=limits.max_body
    )
    api = Api(manager)
    app.router.add_post("/api/v1/jobs", api.enqueue)
    app.router.add_get("/api/v1/jobs", api.list)
    app.router.add_get("/api/v1/jobs/{id}", api.get)
    app.router.add_post("/api/v1/jobs/{id}/cancel", api.cancel)
    app.router.add_post("/api/v1/jobs/{id}/retry", api.retry)
    app.router.add_get("/healthz", api.healthz)
    app.router.add_get("/readyz", api.readyz)
    add_dispatch_routes(app, policy, manager.limits.max_tenant_len)
    add_explain_route(app, dispatcher)
    add_limits_routes(app, policy, manager.index, lambda: dispatcher.limits)
    add_life_routes(app, manager, life, events)
    add_functions_routes(app, FunctionStore(policy), functions or dispatcher.functions)
    return app
