"""Fairness between tenants: the strategies, and the settings that select them per kind.

The strategy decides which tenant's work a worker gets next; weights then decide among that
tenant's lanes (see `picker.py` for the structures and `docs/dispatch.md` for the guarantees).
Settings live in PostgreSQL (`worcr_fairness`, `worcr_tenants`) and reach every node with the
dispatch policy (`policy.py`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from worcr.wire import Limits, quote, quoted

__all__ = [
    "DEFAULT_SCOPE",
    "MAX_TENANT_WEIGHT",
    "MIN_TENANT_WEIGHT",
    "Fairness",
    "FairnessError",
    "Strategy",
    "parse_fairness",
    "parse_tenant_weight",
]

DEFAULT_SCOPE = "*"
MIN_TENANT_WEIGHT = 1e-6  # as a job's weight: smaller ones only underflow the shares
MAX_TENANT_WEIGHT = 1e6
MAX_KIND_OVERRIDES = 1000


class FairnessError(ValueError):
    """Fairness settings are invalid; the message names the field."""


class Strategy(StrEnum):
    FIFO = "fifo"  # no tenant sharing: oldest ready work first (weights still apply)
    ROUND_ROBIN = "round_robin"  # rotate over tenants with ready work, one pick each
    WEIGHTED_FAIR = "weighted_fair"  # tenants share jobs in proportion to their tenant weight
    FEWEST_RUNNING = "fewest_running"  # the tenant with the fewest running jobs goes next


@dataclass(frozen=True, slots=True)
class Fairness:
    default: Strategy = Strategy.ROUND_ROBIN
    kinds: Mapping[str, Strategy] = field(default_factory=dict)
    tenant_weights: Mapping[str, float] = field(default_factory=dict)

    def scope_of(self, kind: str) -> str:
        """Kinds with their own strategy form their own scope; all others share one."""
        return kind if kind in self.kinds else DEFAULT_SCOPE

    def strategy_of(self, scope: str) -> Strategy:
        return self.kinds.get(scope, self.default) if scope != DEFAULT_SCOPE else self.default

    def tenant_weight(self, tenant: str) -> float:
        return self.tenant_weights.get(tenant, 1.0)

    def to_json(self) -> dict[str, Any]:
        return {"default": self.default.value, "kinds": {k: v.value for k, v in self.kinds.items()}}


def _strategy(value: Any, where: str) -> Strategy:
    try:
        return Strategy(value)
    except ValueError:
        raise FairnessError(
            f"{where}: {quote(value)} is not a strategy; expected one of "
            f"{[s.value for s in Strategy]}"
        ) from None


def parse_fairness(body: Any) -> tuple[Strategy, dict[str, Strategy]]:
    """`{"default": "round_robin", "kinds": {"report": "fifo"}}` -> (default, per kind)."""
    if not isinstance(body, Mapping):
        raise FairnessError("expected a JSON object with 'default' and optional 'kinds'")
    unknown = set(body) - {"default", "kinds"}
    if unknown:
        raise FairnessError(f"unknown field(s) {quoted(unknown)}; allowed: default, kinds")
    if "default" not in body:
        raise FairnessError("default: required")
    default = _strategy(body["default"], "default")
    kinds = body.get("kinds", {})
    if not isinstance(kinds, Mapping) or len(kinds) > MAX_KIND_OVERRIDES:
        raise FairnessError(f"kinds: expected an object of at most {MAX_KIND_OVERRIDES} entries")
    out = {}
    for kind, value in kinds.items():
        # printable: no control characters or unpaired surrogates, which PostgreSQL cannot hold
        if (
            not 0 < len(kind) <= Limits.max_kind_len
            or not kind.isprintable()
            or kind == DEFAULT_SCOPE
        ):
            raise FairnessError(f"kinds: {quote(kind)} is not a job kind (1 to "
                                f"{Limits.max_kind_len} printable characters)")  # fmt: skip
        out[kind] = _strategy(value, f"kinds.{kind}")
    return default, out


def parse_tenant_weight(body: Any) -> float:
    if not isinstance(body, Mapping) or set(body) != {"weight"}:
        raise FairnessError('expected {"weight": <number>}')
    w = body["weight"]
    if isinstance(w, bool) or not isinstance(w, int | float):
        raise FairnessError("weight: expected a number")
    if not MIN_TENANT_WEIGHT <= w <= MAX_TENANT_WEIGHT or not math.isfinite(w):  # huge ints
        raise FairnessError(f"weight: expected a number from {MIN_TENANT_WEIGHT:g} to "
                            f"{MAX_TENANT_WEIGHT:g}")  # fmt: skip
    return float(w)
