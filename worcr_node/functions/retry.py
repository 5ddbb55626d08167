"""The retry hook: functions that choose the delay before a failed job's next attempt, or give up.

`JobManager` asks `RetryHook` before it decides how a failed attempt ends: the attempts are read
(not locked), the functions answer, then the transaction that ends them uses the answers (an
attempt's id and lease token fix what the function saw). It is asked only when the job would be
retried (the failure is retryable and attempts are left). The first enabled retry
function whose `match` selects the job answers: seconds until the next attempt, false to give up
now (the job is dead), or nothing for the job's own backoff. A failing function leaves the job to
its backoff; its error is stored with the job (`function_errors`).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack

from worcr_node.dispatch.rules import TagSet
from worcr_node.functions.model import Function, Hook
from worcr_node.functions.runner import FALLBACKS, FunctionRunner, check_retry
from worcr_node.functions.views import plain
from worcr_node.outcome import FailReport

__all__ = ["RetryHook"]


class RetryHook:
    def __init__(self, runner: FunctionRunner) -> None:
        self.runner = runner
        self.errors: dict[uuid.UUID, list[dict[str, Any]]] = {}  # job id -> failures, to store

    async def ask(
        self,
        rows: Sequence[Mapping[str, Any]],
        failures: Mapping[tuple[uuid.UUID, int], FailReport],
    ) -> dict[tuple[uuid.UUID, int], float | bool | None]:
        """Each running attempt's answer (by id and token), for those that would be retried:
        seconds until the next attempt, False to give up, None for the job's backoff. The calls
        of one function go to the function process together."""
        asked: dict[tuple[str, int], list[tuple[tuple[uuid.UUID, int], tuple[Any, ...], str]]] = {}
        functions: dict[tuple[str, int], Function] = {}
        for row in rows:
            f = failures.get((row["id"], row["lease_token"]))
            if f is None or not f.retryable or int(row["attempt"]) >= int(row["max_attempts"]):
                continue
            tags = tuple(t for t in (row["tags"] or ()) if t)
            found = self.runner.for_jobs(Hook.RETRY, row["kind"], row["tenant"], TagSet(tags))
            if not found:
                continue
            fn = found[0]
            functions[fn.key] = fn
            asked.setdefault(fn.key, []).append(
                ((row["id"], row["lease_token"]), _arguments(row, tags, f), str(row["id"]))
            )
        out: dict[tuple[uuid.UUID, int], float | bool | None] = {}
        for key, calls in asked.items():
            outcomes = await self.runner.call_many(
                functions[key], [c[1] for c in calls], check_retry, FALLBACKS[Hook.RETRY],
                [c[2] for c in calls],
            )  # fmt: skip
            for (ref, _, _), outcome in zip(calls, outcomes, strict=True):
                if outcome.failure is not None:
                    self.errors[ref[0]] = [outcome.failure.to_json()]
                out[ref] = outcome.value
        return out


def _arguments(
    row: Mapping[str, Any], tags: tuple[str, ...], failure: FailReport
) -> tuple[Any, ...]:
    """What a retry function is called with: (job, error, attempt)."""
    attempt = int(row["attempt"])
    try:
        args = msgpack.unpackb(row["args"], raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException):
        args = None
    job = {"id": str(row["id"]), "kind": row["kind"], "tenant": row["tenant"],
           "tags": list(tags), "args": plain(args), "attempt": attempt,
           "max_attempts": int(row["max_attempts"])}  # fmt: skip
    return job, {"message": failure.error, "backtrace": failure.backtrace}, attempt
