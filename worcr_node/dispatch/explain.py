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
from worcr_node.dispatch.rules import Rule, TagSet, Verdict, evaluate, rule_matches
from worcr_node.functions.judge import LaneJudge, judged

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


async def explain(
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
    verdict, judge = await judged(
        lambda: d.judge(lane, worker.kinds, wtags),
        lambda j: evaluate(policy.rules, lane.kind, lane.tenant, lane.tags, wtags, j),
    )
    rules = [_rule(rule, lane, wtags, verdict, judge) for rule in policy.rules]
    factor = verdict.factor
    for r in verdict.forbidden_by:
        what = "its match function answered false (or failed)" if r.action == "match" else ""
        reasons.append(f"forbidden by rule {r.name!r}" + (f": {what}" if what else ""))
    for r in verdict.held_by:
        reasons.append(f"held by rule {r.name!r} (load shedding: the job waits until the rule "
                       "is disabled or deleted)")  # fmt: skip
    for r in verdict.discarded_by:
        reasons.append(f"discarded by rule {r.name!r} (load shedding)")
    for error in verdict.errors:
        reasons.append(f"a function failed, its fallback was used: {error}")
    if job["state"] != "queued":
        reasons.append(f"the job is {job['state']}, not queued: nothing to dispatch now")
    allowed = kind_ok and verdict.allowed
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
        "limits": await _limits(d, lane, wtags, args, job.get("id")),
        "policy_version": policy.version,
        "node": d.manager.node_id,
    }


def _rule(
    rule: Rule, lane: LaneInfo, wtags: TagSet, verdict: Verdict, judge: LaneJudge
) -> dict[str, Any]:
    """One rule as explain shows it: matched or why not, and what its function answered."""
    why = rule_matches(rule, lane.kind, lane.tenant, lane.tags, wtags)
    entry = {"id": rule.id, "name": rule.name, "action": rule.action, "enabled": rule.enabled,
             "matched": rule in verdict.matched}  # fmt: skip
    if rule.function is not None:
        entry["function"] = rule.function
        answer = judge.answers.get(rule.id)
        if answer is not None:
            entry["answer"] = answer[0]
            if answer[1] is not None:
                entry["error"] = answer[1]
    elif rule.action == "multiply":
        entry["factor"] = rule.factor
    if not rule.enabled:
        entry["why_not"] = "disabled"
    elif why is not None:
        entry["why_not"] = why
    elif rule.action == "shed" and rule not in verdict.matched:
        entry["why_not"] = "its function did not shed the job"
    return entry


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


async def _limits(
    d: Dispatcher, lane: LaneInfo, wtags: TagSet, args: Any, job_id: str | None
) -> list[dict[str, Any]]:
    """Every enabled job limit: whether it applies to this (job, worker), and with which key."""
    out: list[dict[str, Any]] = []
    for lim in d.limits.job:
        why = rule_matches(lim.match, lane.kind, lane.tenant, lane.tags, wtags)
        entry: dict[str, Any] = {"name": lim.name, "type": lim.type.value, "limit": lim.limit,
                                 "applies": why is None}  # fmt: skip
        if why is None:
            found = await d.limits.key_of(lim, lane.kind, lane.tenant, lane.tags, args, job_id)
            if found is None:
                entry["applies"] = False
                entry["why_not"] = "its limit_key function answered nothing for this job"
            else:
                entry["key"] = found[0]
                if found[1] is not None:
                    entry["limit"] = found[1]
        else:
            entry["why_not"] = why
        out.append(entry)
    return out


def parse_list(raw: str | None) -> Sequence[str]:
    return tuple(t for t in (raw or "").split(",") if t)
