"""The on_enqueue hook: functions that change, refuse or drop a new job before it is stored.

`JobManager.parse` calls `apply_on_enqueue_many` with the validated job specs of a batch (each
function over all its jobs at once: their calls go to the function process together) when some
enabled on_enqueue function exists. Each function whose `match` selects the job runs in name order
and sees the job as the previous one left it. A function answers nothing (keep the job), the job or
a table of the fields to change (`tags`, `tenant`, `weight`, `run_at`, `expires_at`; the other job
fields may be present and are ignored), `{reject = "why"}` (the enqueue fails with that reason) or
`{discard = true}` (the job is not stored; the producer sees state "discarded"). A change is
validated like a job spec; a function that fails or answers something invalid leaves the job as it
was, and the error is stored with the job (`function_errors`).
"""

from __future__ import annotations

from typing import Any

from worcr.wire import Limits
from worcr_node.dispatch.rules import TagSet
from worcr_node.functions.model import Hook
from worcr_node.functions.runner import FunctionFailure, FunctionRunner
from worcr_node.functions.views import plain
from worcr_node.jobspec import NewJob, SpecError, number_field, parse_time, tags_field, text_field
from worcr_node.state import JobState

__all__ = ["DISCARDED", "apply_on_enqueue", "apply_on_enqueue_many", "job_view"]

DISCARDED = "discarded"
_CHANGES = frozenset({"tags", "tenant", "weight", "run_at", "expires_at"})
_READ_ONLY = frozenset({"id", "kind", "args", "enqueued_at", "max_attempts", "unique_key"})
_ANSWERS = frozenset({"reject", "discard"})


def job_view(job: NewJob, args: Any, now: float) -> dict[str, Any]:
    return {
        "id": str(job.id),
        "kind": job.kind,
        "tenant": job.tenant,
        "tags": list(job.tags),
        "weight": job.weight,
        "args": plain(args),
        "run_at": job.run_at,
        "expires_at": job.expires_at,
        "enqueued_at": now,
        "max_attempts": job.max_attempts,
        "unique_key": job.unique_key,
    }


async def apply_on_enqueue(
    runner: FunctionRunner, job: NewJob, args: Any, now: float, limits: Limits
) -> NewJob | None:
    """The job as the on_enqueue functions leave it (in place), or None if one discarded it.
    SpecError if one rejected it. Failures are appended to `job.function_errors`."""
    [out] = await apply_on_enqueue_many(runner, [(job, args)], now, limits)
    if isinstance(out, SpecError):
        raise out
    return out


async def apply_on_enqueue_many(
    runner: FunctionRunner, items: list[tuple[NewJob, Any]], now: float, limits: Limits
) -> list[NewJob | SpecError | None]:
    """`apply_on_enqueue` for the jobs of a batch: each function in name order over all the
    jobs its match selects (as the previous functions left them), its calls sent together. Per
    job: the job, None (discarded) or the SpecError that rejected it."""
    out: list[NewJob | SpecError | None] = [job for job, _ in items]
    for fn in runner.enabled(Hook.ON_ENQUEUE):
        # matched against the jobs as the previous functions left them
        chosen = [
            i
            for i, (job, _) in enumerate(items)
            if isinstance(out[i], NewJob)
            and fn.match.job_side(job.kind, job.tenant, TagSet(job.tags)) is None
        ]
        if not chosen:
            continue
        views = [job_view(items[i][0], items[i][1], now) for i in chosen]
        outcomes = await runner.on_enqueue_many(fn, views, [str(items[i][0].id) for i in chosen])
        for i, outcome in zip(chosen, outcomes, strict=True):
            job = items[i][0]
            if outcome.failure is not None:
                job.function_errors.append(outcome.failure.to_json())
                continue
            if outcome.value is None:
                continue
            try:
                verdict = _apply(job, outcome.value, now, limits)
            except SpecError as exc:
                failure = FunctionFailure(fn.name, fn.version, fn.hook, "result", str(exc))
                runner.record(failure, str(job.id), None)
                job.function_errors.append(failure.to_json())
                continue
            if verdict == "discard":
                out[i] = None
            elif verdict is not None:
                out[i] = SpecError(f"rejected by function {fn.name!r}: {verdict}")
    return out


def _apply(job: NewJob, answer: dict[str, Any], now: float, limits: Limits) -> str | None:
    """Validate all of an answer, then change the job; "discard", a reject reason, or None."""
    unknown = set(answer) - _CHANGES - _READ_ONLY - _ANSWERS
    if unknown:
        raise SpecError(f"unknown field(s) {sorted(unknown)}: a function may change "
                        f"{sorted(_CHANGES)}, or answer reject or discard")  # fmt: skip
    verdict = _verdict(answer)
    if verdict is not None:
        return verdict
    changes: dict[str, Any] = {}
    if "tags" in answer:
        raw = answer["tags"]
        changes["tags"] = tags_field({"tags": [] if raw == {} else raw}, limits)
    if "tenant" in answer:
        changes["tenant"] = text_field(answer, "tenant", limits.max_tenant_len)
    if "weight" in answer:
        changes["weight"] = number_field(answer, "weight", 1e-6, 1e6) or job.weight
    for name in ("run_at", "expires_at"):
        if answer.get(name) is not None:
            changes[name] = parse_time(answer[name], name)
    for name, value in changes.items():
        setattr(job, name, value)
    if "run_at" in changes:
        job.state = JobState.SCHEDULED if job.run_at is not None and job.run_at > now \
            else JobState.QUEUED  # fmt: skip
    return None


def _verdict(answer: dict[str, Any]) -> str | None:
    """ "discard", a reject reason, or None (the answer changes the job, or not)."""
    reject = answer.get("reject")
    if reject is not None and reject is not False:
        if reject is True:
            return "no reason given"
        if not isinstance(reject, str):
            raise SpecError("reject: expected a reason (a string) or true")
        return reject[:500] or "no reason given"
    discard = answer.get("discard")
    if discard is not None and not isinstance(discard, bool):
        raise SpecError("discard: expected true or false")
    return "discard" if discard else None
