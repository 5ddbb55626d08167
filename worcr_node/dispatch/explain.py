"""Explain: would this job go to this worker, and why (or why not)?

Answers `GET /api/v1/dispatch/explain` from the same code the dispatcher runs: the job's lane,
the worker's kinds and tags, every rule with whether it matched and why not, the effective weight,
the fairness strategy, where the job's lane stands in this node's pick order for that worker
class, and every job limit with whether it applies and the job's key (the HTTP layer adds each
key's live usage from Redis). It reads and never changes dispatch state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from worcr_node.dispatch.dispatcher import Dispatcher, LaneInfo
from worcr_node.dispatch.rules import TagSet, rule_matches

__all__ = ["WorkerDesc", "explain"]


@dataclass(frozen=True, slots=True)
class WorkerDesc:
    """The worker side of the question: a connected worker, or ad-hoc tags and kinds."""

    tags: tuple[str, ...]
    kinds: tuple[str, ...]  # empty: any kind
    worker_id: str | None = None
    node_id: str | None = None
    source: str = "ad hoc"  # "connected to this node" | "connected to node X" | "ad hoc"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.worker_id, "node": self.node_id, "tags": list(self.tags),
                "kinds": list(self.kinds) or None, "source": self.source}  # fmt: skip


def explain(
    d: Dispatcher, job: dict[str, Any], lane: LaneInfo, worker: WorkerDesc, args: Any = None
) -> dict[str, Any]:
    """`job` is the rendered job (id, state, kind, tenant, tags, weight); `args` its args."""
    policy = d.policy
    wtags = TagSet(worker.tags)
    reasons: list[str] = []
    kind_ok = not worker.kinds or lane.kind in worker.kinds
    if not kind_ok:
        reasons.append(f"the worker does not run kind {lane.kind!r} (it runs "
                       f"{sorted(worker.kinds)})")  # fmt: skip
    rules: list[dict[str, Any]] = []
    factor = 1.0
    forbidden = []
    for rule in policy.rules:
        why = rule_matches(rule, lane.kind, lane.tenant, lane.tags, wtags)
        entry = {"id": rule.id, "name": rule.name, "action": rule.action, "enabled": rule.enabled,
                 "matched": why is None and rule.enabled}  # fmt: skip
        if rule.action == "multiply":
            entry["factor"] = rule.factor
        if not rule.enabled:
            entry["why_not"] = "disabled"
        elif why is not None:
            entry["why_not"] = why
        elif rule.action == "forbid":
            forbidden.append(rule.name)
        else:
            factor *= rule.factor
        rules.append(entry)
    for name in forbidden:
        reasons.append(f"forbidden by rule {name!r}")
    if job["state"] != "queued":
        reasons.append(f"the job is {job['state']}, not queued: nothing to dispatch now")
    allowed = kind_ok and not forbidden
    return {
        "job": job,
        "worker": worker.to_json(),
        "allowed": allowed,
        "dispatchable_now": allowed and job["state"] == "queued",
        "reasons": reasons,
        "rules": rules,
        "weight": lane.weight,
        "rule_factor": factor,
        "effective_weight": lane.weight * factor if allowed else None,
        "fairness": _fairness(d, lane, worker) if allowed else None,
        "limits": _limits(d, lane, wtags, args),
        "policy_version": policy.version,
        "node": d.manager.node_id,
    }


def _fairness(d: Dispatcher, lane: LaneInfo, worker: WorkerDesc) -> dict[str, Any]:
    f = d.policy.fairness
    scope = f.scope_of(lane.kind)
    out: dict[str, Any] = {
        "strategy": f.strategy_of(scope).value,
        "scope": "default" if scope == "*" else scope,
        "tenant": lane.tenant,
        "tenant_weight": f.tenant_weight(lane.tenant),
        "tenant_running": d.running(lane.tenant),
        "ready_lanes_on_node": len(d.lanes),
    }
    key = d.key_for(worker.kinds, worker.tags)
    cls = d.classes.get(key)
    view = cls.view if cls is not None else d.new_view(key)
    out["worker_class"] = (
        "live: workers of this class are connected to this node"
        if cls is not None
        else "built for this answer: no such worker is connected to this node"
    )
    position = view.position(lane.lane)
    if position is None:
        out["position"] = None
        out["note"] = ("the job's lane has no ready work in this node's view (not queued yet, "
                       "all claimed, or not learned yet)")  # fmt: skip
    else:
        out["position"] = position
    return out


def _limits(d: Dispatcher, lane: LaneInfo, wtags: TagSet, args: Any) -> list[dict[str, Any]]:
    """Every enabled job limit: whether it applies to this (job, worker), and with which key."""
    out: list[dict[str, Any]] = []
    for lim in d.limits.job:
        why = rule_matches(lim.match, lane.kind, lane.tenant, lane.tags, wtags)
        entry: dict[str, Any] = {"name": lim.name, "type": lim.type.value, "limit": lim.limit,
                                 "applies": why is None}  # fmt: skip
        if why is None:
            entry["key"] = lim.key.render(lane.kind, lane.tenant, lane.tags, args)
        else:
            entry["why_not"] = why
        out.append(entry)
    return out


def parse_list(raw: str | None) -> Sequence[str]:
    return tuple(t for t in (raw or "").split(",") if t)
