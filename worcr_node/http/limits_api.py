"""HTTP API v1 for limits: define them, and read their live usage per key.

Routes under `/api/v1/limits`, registered on the main app by `build_app` (so the bearer-token
middleware and JSON errors of `api.py` apply). A limit is addressed by its id or by its name.
Handlers only validate (with `parse_limit`) and translate; `LimitStore` stores each change and
bumps the dispatch policy version, and every node's `PolicyWatcher` picks it up.

Usage is read from Redis: the limit's usage index (the keys it was used with, by when) and the
state of each key (`RedisIndex.limit_usage`, on the Redis clock). Listing it also prunes the index
of keys idle long enough to read as unused again, so it does not grow with every key ever seen.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from worcr.wire import ErrorCode, quote
from worcr_node.http.errors import ApiError, bad_request, json_body, refuse_unknown
from worcr_node.limits.compiled import CompiledLimits
from worcr_node.limits.model import MAX_KEY_LEN, MAX_NAME, Limit, LimitError, LimitType, parse_limit
from worcr_node.limits.store import LimitConflict, LimitStore
from worcr_node.limits.usage import prune_usage_index

if TYPE_CHECKING:
    from worcr_node.dispatch.policy import PolicyStore
    from worcr_node.store.redis_index import RedisIndex

__all__ = ["LimitsApi", "add_limits_routes"]

_USAGE_PARAMS = frozenset({"key", "max"})
MAX_USAGE = 1000  # keys in one usage answer


def _parse(body: Any) -> Limit:
    try:
        return parse_limit(body)
    except LimitError as exc:
        raise bad_request(str(exc)) from None


def _same_id(given: Any, limit_id: str) -> bool:
    if not isinstance(given, str):
        return False
    try:
        return str(uuid.UUID(given)) == limit_id
    except ValueError:
        return False


def _iso(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


class LimitsApi:
    def __init__(
        self, store: LimitStore, index: RedisIndex, compiled: Callable[[], CompiledLimits]
    ) -> None:
        self.store = store
        self.index = index
        self.compiled = compiled  # the limits in force on this node (the dispatcher's)

    async def _find(self, ref: str) -> Limit:
        """The limit with this id, else with this name."""
        limit = None
        try:
            limit_id: uuid.UUID | None = uuid.UUID(ref)
        except ValueError:
            limit_id = None
        if limit_id is not None:
            limit = await self.store.get(limit_id)
        if limit is None:  # a name may look like a UUID
            limit = await self.store.by_name(ref)
        if limit is None:
            raise ApiError(404, ErrorCode.NOT_FOUND, f"no limit {quote(ref)}")
        return limit

    # -- definitions -------------------------------------------------------------------------------

    async def limits(self, request: web.Request) -> web.Response:
        return web.json_response({"limits": [x.to_json() for x in await self.store.list()]})

    async def create(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        limit = _parse(body)
        if "id" in body:
            raise bad_request("id: the server picks a new limit's id; leave it out")
        try:
            created = await self.store.create(limit)
        except LimitError as exc:  # e.g. its function does not exist
            raise bad_request(str(exc)) from None
        except LimitConflict as exc:
            raise ApiError(409, ErrorCode.CONFLICT, str(exc)) from None
        return web.json_response(created.to_json(), status=201)

    async def get(self, request: web.Request) -> web.Response:
        return web.json_response((await self._find(_ref(request))).to_json())

    async def replace(self, request: web.Request) -> web.Response:
        ref = _ref(request)
        body = await json_body(request)
        limit = _parse(body)
        current = await self._find(ref)
        if "id" in body and not _same_id(body["id"], current.id):
            raise bad_request(f"id: {quote(body['id'])} is not the id of limit {quote(ref)} "
                       f"({current.id}); leave it out or give the same")  # fmt: skip
        try:
            replaced = await self.store.replace(dataclasses.replace(limit, id=current.id))
        except LimitError as exc:
            raise bad_request(str(exc)) from None
        except LimitConflict as exc:
            raise ApiError(409, ErrorCode.CONFLICT, str(exc)) from None
        if replaced is None:  # deleted meanwhile
            raise ApiError(404, ErrorCode.NOT_FOUND, f"no limit {quote(ref)}")
        return web.json_response(replaced.to_json())

    async def delete(self, request: web.Request) -> web.Response:
        ref = _ref(request)
        limit = await self._find(ref)
        if not await self.store.delete(uuid.UUID(limit.id)):
            raise ApiError(404, ErrorCode.NOT_FOUND, f"no limit {quote(ref)}")
        return web.Response(status=204)

    # -- usage -------------------------------------------------------------------------------------

    async def usage(self, request: web.Request) -> web.Response:
        ref = _ref(request)
        key, count = _usage_params(request)
        limit = await self._find(ref)
        compiled = self.compiled()
        if all(x.id != limit.id for x in compiled.limits):  # this node has not reloaded yet
            compiled = CompiledLimits([limit], self.index.limit_keys)
        index_key = compiled.check(limit, "").index_key
        if key is not None:
            last = await self.index.limit_index_last_used(index_key, key)
            [one], now_ms = await self.index.limit_usage([compiled.check(limit, key)])
            items = [_item(limit, key, last, *one)]
        else:
            await prune_usage_index(self.index, compiled, limit)
            rows = await self.index.limit_index(index_key, count)
            checks = [compiled.check(limit, k) for k, _ in rows]
            usage, now_ms = await self.index.limit_usage(checks)
            items = [_item(limit, k, t, *u) for (k, t), u in zip(rows, usage, strict=True)]
        return web.json_response({"limit": limit.to_json(), "at": _iso(now_ms), "keys": items})


def _ref(request: web.Request) -> str:
    """The limit id or name in the path (anything else cannot name a limit)."""
    ref = request.match_info["ref"]
    if len(ref) > MAX_NAME or not ref.isprintable():
        raise bad_request(f"{quote(ref)} is not a limit id or name")
    return ref


def _usage_params(request: web.Request) -> tuple[str | None, int]:
    q = request.query
    refuse_unknown(request, _USAGE_PARAMS)
    keys = q.getall("key", [])
    if len(keys) > 1:
        raise bad_request("key: give one key (or none, for the keys used most recently)")
    key = keys[0] if keys else None
    if key is not None and (len(key) > MAX_KEY_LEN or not key.isprintable()):
        raise bad_request(f"key: at most {MAX_KEY_LEN} printable characters")
    raw = q.get("max", "100")
    count = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 4 else 0
    if not 1 <= count <= MAX_USAGE:
        raise bad_request(f"max: expected an integer from 1 to {MAX_USAGE}")
    return key, count


def _item(
    limit: Limit, key: str, last_ms: float | None, used: int, available: int, retry_ms: int
) -> dict[str, Any]:
    """One key's usage. `limit` is what used + available add up to (a bucket's burst); a limit
    lowered below what is held reads as used over the limit, available 0."""
    return {
        "key": key,
        "used": used,
        "available": max(available, 0),
        "limit": limit.burst if limit.type == LimitType.TOKEN_BUCKET else limit.limit,
        # null when a unit is free now, or when it depends on a holder releasing (concurrency)
        "retry_after": retry_ms / 1000 if available <= 0 and retry_ms > 0 else None,
        "last_used": None if last_ms is None else _iso(last_ms),
    }


def add_limits_routes(
    app: web.Application,
    policy: PolicyStore,
    index: RedisIndex,
    compiled: Callable[[], CompiledLimits],
) -> None:
    api = LimitsApi(LimitStore(policy), index, compiled)
    r = app.router
    r.add_get("/api/v1/limits", api.limits)
    r.add_post("/api/v1/limits", api.create)
    r.add_get("/api/v1/limits/{ref}", api.get)
    r.add_put("/api/v1/limits/{ref}", api.replace)
    r.add_delete("/api/v1/limits/{ref}", api.delete)
    r.add_get("/api/v1/limits/{ref}/usage", api.usage)
