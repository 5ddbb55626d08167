"""HTTP API v1 for embedded functions: create, new versions, read, delete, try, errors.

Routes under `/api/v1/functions`, registered on the main app by `build_app` (bearer token and
JSON errors of `api.py` apply). A function is compiled before it is stored: a syntax error is a
400 whose error object carries `line` and `column`. `FunctionStore` keeps every version and bumps
the policy version, so every node compiles the new one within a second. `try` compiles the
stored (or a draft) function in a fresh sandbox and calls it with a sample job and worker: the
answer as the hook would use it, the error and the fallback if it failed, and the duration.
"""

from __future__ import annotations

import math
import time
from typing import Any

from aiohttp import web

from worcr.wire import ErrorCode, quoted
from worcr_node.functions.model import Function, FunctionError, Hook, parse_function, valid_name
from worcr_node.functions.runner import CHECKS, FALLBACKS, FunctionRunner
from worcr_node.functions.sandbox import CallError, CompileError
from worcr_node.functions.store import FunctionConflict, FunctionStore, function_from_row, row_times
from worcr_node.functions.views import plain
from worcr_node.http.errors import ApiError, bad_request, json_body, query_int, refuse_unknown

__all__ = ["add_functions_routes"]

MAX_VERSIONS = 1000
_TRY_FIELDS = frozenset({"job", "worker", "error", "attempt", "source", "language", "hook"})


def _render(row: Any, source: bool = True) -> dict[str, Any]:
    return {**function_from_row(row).to_json(source), **row_times(row)}


def _name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not valid_name(name):
        raise bad_request(f"{name[:64]!r} is not a function name")
    return name


class FunctionsApi:
    def __init__(self, store: FunctionStore, runner: FunctionRunner) -> None:
        self.store = store
        self.runner = runner

    async def _compiled_check(self, fn: Function) -> None:
        """Compile to validate (syntax, the entry function, the top level within the caps), in
        the runner's function host (never on the event loop)."""
        reply = await self.runner.host.check(fn.language, fn.source, fn.hook.value)
        exc = reply.error
        if isinstance(exc, CompileError):
            details = {"line": exc.line, "column": exc.column}
            raise ApiError(400, ErrorCode.BAD_REQUEST, f"source: {exc}", details)
        if exc is not None:  # the top level ran past a cap, or the process failed
            raise ApiError(400, ErrorCode.BAD_REQUEST, f"source: {exc}", {"line": None,
                           "column": None})  # fmt: skip

    async def _parse(self, body: Any, name: str) -> Function:
        try:
            fn = parse_function(body, name)
        except FunctionError as exc:
            raise bad_request(str(exc)) from None
        await self._compiled_check(fn)
        return fn

    async def list(self, request: web.Request) -> web.Response:
        rows = await self.store.all()
        return web.json_response({"functions": [_render(r, source=False) for r in rows]})

    async def create(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        if not isinstance(body, dict):
            raise bad_request("a function must be a JSON object")
        name = body.get("name")
        if not isinstance(name, str):
            raise bad_request("name: expected the function's name")
        return await self._put(await self._parse(body, name), create_only=True)

    async def put(self, request: web.Request) -> web.Response:
        name = _name(request)
        return await self._put(await self._parse(await json_body(request), name), create_only=False)

    async def _put(self, fn: Function, create_only: bool) -> web.Response:
        try:
            row, created = await self.store.put(fn, create_only)
        except FunctionConflict as exc:
            raise ApiError(409, ErrorCode.CONFLICT, str(exc)) from None
        return web.json_response(_render(row), status=201 if created else 200)

    async def get(self, request: web.Request) -> web.Response:
        name = _name(request)
        row = await self.store.get(name)
        if row is None:
            raise ApiError(404, ErrorCode.NOT_FOUND, f"no function {name!r}")
        return web.json_response(_render(row))

    async def delete(self, request: web.Request) -> web.Response:
        name = _name(request)
        try:
            if not await self.store.delete(name):
                raise ApiError(404, ErrorCode.NOT_FOUND, f"no function {name!r}")
        except FunctionConflict as exc:
            raise ApiError(409, ErrorCode.CONFLICT, str(exc)) from None
        return web.Response(status=204)

    async def versions(self, request: web.Request) -> web.Response:
        name = _name(request)
        rows = await self.store.versions(name, MAX_VERSIONS)
        if not rows:
            raise ApiError(404, ErrorCode.NOT_FOUND, f"no function {name!r}")
        return web.json_response({"versions": [_render(r, source=False) for r in rows]})

    async def version(self, request: web.Request) -> web.Response:
        name = _name(request)
        raw = request.match_info["version"]
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 9:
            raise bad_request(f"{raw[:20]!r} is not a version number")
        row = await self.store.version(name, int(raw))
        if row is None:
            raise ApiError(404, ErrorCode.NOT_FOUND, f"function {name!r} has no version {raw}")
        return web.json_response(_render(row))

    async def errors(self, request: web.Request) -> web.Response:
        name = _name(request)
        refuse_unknown(request, ("before", "limit"))
        before = query_int(request, "before", 1, 2**62)
        limit = query_int(request, "limit", 1, 1000) or 100
        rows = await self.store.errors(name, before, limit)
        out = [{"id": r["id"], "function": r["name"], "version": r["version"], "hook": r["hook"],
                "kind": r["kind"], "message": r["message"],
                "job_id": None if r["job_id"] is None else str(r["job_id"]), "lane": r["lane"],
                "node": r["node_id"], "repeats": r["repeats"], "at": r["at"].isoformat()}
               for r in rows]  # fmt: skip
        page: dict[str, Any] = {"errors": out}
        if len(out) == limit:
            page["next"] = out[-1]["id"]
        return web.json_response(page)

    async def try_(self, request: web.Request) -> web.Response:
        name = _name(request)
        body = await json_body(request)
        if not isinstance(body, dict):
            raise bad_request("expected a JSON object with job, worker, error, attempt")
        unknown = set(body) - _TRY_FIELDS
        if unknown:
            raise bad_request(f"unknown field(s) {quoted(unknown)}; allowed: "
                              f"{sorted(_TRY_FIELDS)}")  # fmt: skip
        fn = await self._trial_function(name, body)
        args = _trial_args(fn.hook, body)
        started = time.perf_counter()
        reply = await self.runner.host.trial(fn.language, fn.source, fn.hook.value, args)
        exc = reply.error
        if isinstance(exc, CompileError):
            return _tried(fn, None, {"kind": "compile", "message": str(exc), "line": exc.line,
                                     "column": exc.column}, started)  # fmt: skip
        if isinstance(exc, CallError):
            return _tried(fn, None, {"kind": exc.kind, "message": exc.message}, started)
        try:
            value = CHECKS[fn.hook](reply.value)
        except (ValueError, TypeError) as e:
            return _tried(fn, reply.value, {"kind": "result", "message": str(e)}, started)
        return _tried(fn, reply.value, None, started, value)

    async def _trial_function(self, name: str, body: dict[str, Any]) -> Function:
        """The stored function, or a draft (`source`, with `language` and `hook` unless the
        stored function gives them)."""
        row = await self.store.get(name)
        stored = None if row is None else function_from_row(row)
        if "source" not in body:
            if stored is None:
                raise ApiError(404, ErrorCode.NOT_FOUND, f"no function {name!r} (give a "
                               "draft: source, language, hook)")  # fmt: skip
            return stored
        draft = {"source": body["source"],
                 "language": body.get("language", stored.language if stored else None),
                 "hook": body.get("hook", stored.hook.value if stored else None)}  # fmt: skip
        try:
            return parse_function(draft, name, version=-1)
        except FunctionError as exc:
            raise bad_request(str(exc)) from None


def _trial_args(hook: Hook, body: dict[str, Any]) -> tuple[Any, ...]:
    job = body.get("job", {})
    if not isinstance(job, dict):
        raise bad_request("job: expected an object (the job as the hook sees it)")
    if hook in (Hook.WEIGHT, Hook.MATCH):
        worker = body.get("worker", {})
        if not isinstance(worker, dict):
            raise bad_request("worker: expected an object ({kinds, tags})")
        return plain(job), plain(worker)
    if hook == Hook.RETRY:
        error = body.get("error", {"message": "sample error", "backtrace": None})
        attempt = body.get("attempt", 1)
        if isinstance(attempt, bool) or not isinstance(attempt, int) or not 0 <= attempt <= 1000:
            raise bad_request("attempt: expected an integer from 0 to 1000")
        return plain(job), plain(error), attempt
    return (plain(job),)


def _tried(
    fn: Function, raw: Any, error: dict[str, Any] | None, since: float, value: Any = None
) -> web.Response:
    out: dict[str, Any] = {
        "function": fn.name,
        "version": None if fn.version < 0 else fn.version,
        "hook": fn.hook.value,
        "language": fn.language,
        "raw": _json_safe(raw) if error is None or error["kind"] == "result" else None,
        "result": FALLBACKS[fn.hook] if error is not None else value,
        "fallback": error is not None,
        "error": error,
        "duration_ms": round((time.perf_counter() - since) * 1000, 3),
    }
    return web.json_response(out)


def _json_safe(value: Any) -> Any:
    """A function's raw answer as JSON can hold it (NaN and infinities as strings)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def add_functions_routes(
    app: web.Application, store: FunctionStore, runner: FunctionRunner
) -> None:
    api = FunctionsApi(store, runner)
    app.router.add_get("/api/v1/functions", api.list)
    app.router.add_post("/api/v1/functions", api.create)
    app.router.add_get("/api/v1/functions/{name}", api.get)
    app.router.add_put("/api/v1/functions/{name}", api.put)
    app.router.add_delete("/api/v1/functions/{name}", api.delete)
    app.router.add_get("/api/v1/functions/{name}/versions", api.versions)
    app.router.add_get("/api/v1/functions/{name}/versions/{version}", api.version)
    app.router.add_get("/api/v1/functions/{name}/errors", api.errors)
    app.router.add_post("/api/v1/functions/{name}/try", api.try_)
