"""HTTP API v1 for the dispatch policy: tag rules, fairness strategies and tenant weights.

Routes under `/api/v1/rules`, `/api/v1/dispatch/fairness` and `/api/v1/tenants`, registered on
the main app by `build_app` (so the bearer-token middleware and JSON errors of `api.py` apply).
Handlers only validate (with the parsers of `worcr_node.dispatch`) and translate; `PolicyStore`
stores each change and bumps the policy version, and every node's `PolicyWatcher` picks it up.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from worcr.wire import ErrorCode, quote
from worcr_node.dispatch.fairness import (
    FairnessError,
    parse_fairness,
    parse_tenant_weight,
)
from worcr_node.dispatch.policy import PolicyStore, RuleConflict
from worcr_node.dispatch.rules import RuleError, parse_rule
from worcr_node.http.errors import ApiError, bad_request, json_body, path_id, text_ok

__all__ = ["DispatchApi", "add_dispatch_routes"]


def _render_tenant(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "tenant": row["tenant"],
        "weight": float(row["weight"]),
        "updated_at": row["updated_at"].isoformat(),
    }


class DispatchApi:
    def __init__(self, store: PolicyStore, max_tenant_len: int) -> None:
        self.store = store
        self.max_tenant_len = max_tenant_len

    # -- rules -------------------------------------------------------------------------------------

    async def rules(self, request: web.Request) -> web.Response:
        return web.json_response({"rules": [r.to_json() for r in await self.store.rules()]})

    async def rule_create(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        try:
            rule = await self.store.rule_create(parse_rule(body))
        except RuleError as exc:
            raise bad_request(str(exc)) from None
        except RuleConflict as exc:
            raise ApiError(409, ErrorCode.CONFLICT, str(exc)) from None
        return web.json_response(rule.to_json(), status=201)

    async def rule_get(self, request: web.Request) -> web.Response:
        rule_id = path_id(request, "rule")
        rule = await self.store.rule(rule_id)
        if rule is None:
            raise ApiError(404, ErrorCode.NOT_FOUND, f"no rule {rule_id}")
        return web.json_response(rule.to_json())

    async def rule_replace(self, request: web.Request) -> web.Response:
        rule_id = path_id(request, "rule")
        body = await json_body(request)
        try:
            rule = await self.store.rule_replace(parse_rule(body, str(rule_id)))
        except RuleError as exc:
            raise bad_request(str(exc)) from None
        except RuleConflict as exc:
            raise ApiError(409, ErrorCode.CONFLICT, str(exc)) from None
        if rule is None:
            raise ApiError(404, ErrorCode.NOT_FOUND, f"no rule {rule_id}")
        return web.json_response(rule.to_json())

    async def rule_delete(self, request: web.Request) -> web.Response:
        rule_id = path_id(request, "rule")
        if not await self.store.rule_delete(rule_id):
            raise ApiError(404, ErrorCode.NOT_FOUND, f"no rule {rule_id}")
        return web.Response(status=204)

    # -- fairness ----------------------------------------------------------------------------------

    async def fairness(self, request: web.Request) -> web.Response:
        return web.json_response((await self.store.load()).fairness.to_json())

    async def fairness_set(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        try:
            default, kinds = parse_fairness(body)
        except FairnessError as exc:
            raise bad_request(str(exc)) from None
        await self.store.fairness_set(default, kinds)
        return web.json_response((await self.store.load()).fairness.to_json())

    # -- tenant weights ----------------------------------------------------------------------------

    def _tenant(self, request: web.Request) -> str:
        """The tenant in the path, checked as a job's `tenant` field is."""
        tenant = request.match_info["tenant"]
        if not text_ok(tenant, self.max_tenant_len):
            raise bad_request(f"tenant: expected 1 to {self.max_tenant_len} printable characters "
                              "(no control characters or unpaired surrogates)")  # fmt: skip
        return tenant

    async def tenants(self, request: web.Request) -> web.Response:
        rows = await self.store.tenant_weights()
        return web.json_response({"tenants": [_render_tenant(r) for r in rows]})

    async def tenant_get(self, request: web.Request) -> web.Response:
        tenant = self._tenant(request)
        row = await self.store.tenant_weight(tenant)
        if row is None:
            raise ApiError(404, ErrorCode.NOT_FOUND, f"no weight set for tenant {quote(tenant)}")
        return web.json_response(_render_tenant(row))

    async def tenant_set(self, request: web.Request) -> web.Response:
        tenant = self._tenant(request)
        try:
            weight = parse_tenant_weight(await json_body(request))
        except FairnessError as exc:
            raise bad_request(str(exc)) from None
        return web.json_response(_render_tenant(await self.store.tenant_weight_set(tenant, weight)))

    async def tenant_delete(self, request: web.Request) -> web.Response:
        tenant = self._tenant(request)
        if not await self.store.tenant_weight_delete(tenant):
            raise ApiError(404, ErrorCode.NOT_FOUND, f"no weight set for tenant {quote(tenant)}")
        return web.Response(status=204)


def add_dispatch_routes(app: web.Application, store: PolicyStore, max_tenant_len: int) -> None:
    api = DispatchApi(store, max_tenant_len)
    r = app.router
    r.add_get("/api/v1/rules", api.rules)
    r.add_post("/api/v1/rules", api.rule_create)
    r.add_get("/api/v1/rules/{id}", api.rule_get)
    r.add_put("/api/v1/rules/{id}", api.rule_replace)
    r.add_delete("/api/v1/rules/{id}", api.rule_delete)
    r.add_get("/api/v1/dispatch/fairness", api.fairness)
    r.add_put("/api/v1/dispatch/fairness", api.fairness_set)
    r.add_get("/api/v1/tenants", api.tenants)
    # `.+`: a tenant may contain '/' (sent percent-encoded), as a job's tenant may
    r.add_get("/api/v1/tenants/{tenant:.+}", api.tenant_get)
    r.add_put("/api/v1/tenants/{tenant:.+}", api.tenant_set)
    r.add_delete("/api/v1/tenants/{tenant:.+}", api.tenant_delete)
