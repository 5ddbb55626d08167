"""The retry hook: functions that choose the delay before a failed job's next attempt, or give up.

`JobManager` asks `RetryHook` while it decides how a failed attempt ends (inside the transaction
that holds the job's row, so the call is capped like every call). It is asked only when the job
would be retried (the failure is retryable and attempts are left). The first enabled retry
function whose `match` selects the job answers: seconds until the next attempt, false to give up
now (the job is dead), or nothing for the job's own backoff. A failing function leaves the job to
its backoff; its error is stored with the job (`function_errors`).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import msgpack

from worcr_node.dispatch.rules import TagSet
from worcr_node.functions.model import Hook
from worcr_node.functions.runner import FunctionRunner
from worcr_node.functions.views import plain

__all__ = ["RetryHook"]


class RetryHook:
    def __init__(self, runner: FunctionRunner) -> None:
        self.runner = runner
        self.errors: dict[uuid.UUID, list[dict[str, Any]]] = {}  # job id -> failures, to store

    def __call__(
        self, row: Mapping[str, Any], message: str, backtrace: str | None
    ) -> float | bool | None:
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
        error = {"message": message, "backtrace": backtrace}
        outcome = self.runner.retry(fn, job, error, attempt, str(row["id"]))
        if outcome.failure is not None:  # (a transaction retried after a deadlock asks again)
            self.errors[row["id"]] = [outcome.failure.to_json()]
        value: float | bool | None = outcome.value
        return value
