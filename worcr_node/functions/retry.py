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

import asyncio
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack

from worcr_node.dispatch.rules import TagSet
from worcr_node.functions.model import Hook
from worcr_node.functions.runner import FunctionRunner
from worcr_node.functions.views import plain
from worcr_node.outcome import Failure

__all__ = ["RetryHook"]


class RetryHook:
    def __init__(self, runner: FunctionRunner) -> None:
        self.runner = runner
        self.errors: dict[uuid.UUID, list[dict[str, Any]]] = {}  # job id -> failures, to store

    async def ask(
        self, rows: Sequence[Mapping[str, Any]], failures: Mapping[tuple[uuid.UUID, int], Failure]
    ) -> dict[tuple[uuid.UUID, int], float | bool | None]:
        """Each running attempt's answer (by id and token), for those that would be retried;
        the calls of the batch queue up together."""
        asked = [r for r in rows if (f := failures.get((r["id"], r["lease_token"]))) is not None
                 and f.retryable and int(r["attempt"]) < int(r["max_attempts"])]  # fmt: skip
        answers = await asyncio.gather(*(self.one(r, failures[(r["id"], r["lease_token"])])
                                         for r in asked))  # fmt: skip
        return {(r["id"], r["lease_token"]): a for r, a in zip(asked, answers, strict=True)}

    async def one(self, row: Mapping[str, Any], failure: Failure) -> float | bool | None:
        """Seconds until the next attempt, False to give up, None: the job's backoff."""
        tags = tuple(t for t in (row["tags"] or ()) if t)
        found = self.runner.for_jobs(Hook.RETRY, row["kind"], row["tenant"], TagSet(tags))
        if not found:
            return None
        fn = found[0]
        attempt = int(row["attempt"])
        try:
            args = msgpack.unpackb(row["args"], raw=False, strict_map_key=False)
        except (ValueError, msgpack.UnpackException):
            args = None
        job = {"id": str(row["id"]), "kind": row["kind"], "tenant": row["tenant"],
               "tags": list(tags), "args": plain(args), "attempt": attempt,
               "max_attempts": int(row["max_attempts"])}  # fmt: skip
        error = {"message": failure.error, "backtrace": failure.backtrace}
        outcome = await self.runner.retry(fn, job, error, attempt, str(row["id"]))
        if outcome.failure is not None:
            self.errors[row["id"]] = [outcome.failure.to_json()]
        value: float | bool | None = outcome.value
        return value
