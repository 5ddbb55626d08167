"""Pure decisions about how a running attempt ends: retry with backoff, die, or go back to ready.

Kept free of I/O so the retry policy can be unit-tested with injected time and randomness.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from worcr_node.jobspec import RetryBackoff
from worcr_node.state import JobState
from worcr_node.store.pg import FinishOutcome, backoff_of

__all__ = ["FailReport", "decide_failure", "decide_lost_lease", "decide_revoked", "decide_yield"]


@dataclass(frozen=True, slots=True)
class FailReport:
    id: uuid.UUID
    token: int
    error: str
    backtrace: str | None
    retryable: bool


def decide_failure(
    row: Mapping[str, Any],
    f: FailReport,
    now: float,
    rand: float,
    chosen: float | bool | None = None,
) -> FinishOutcome:
    """A failed attempt: retrying after the backoff delay (or the delay `chosen` by a retry
    function, asked beforehand), or dead after the last attempt (or when a retry function gave
    up: `chosen` False)."""
    attempt = int(row["attempt"])
    if not f.retryable or attempt >= int(row["max_attempts"]):
        return FinishOutcome(f.id, f.token, JobState.DEAD, None, 0, "failed", f.error, f.backtrace)
    if chosen is False:
        error = f"{f.error} (a retry function gave up)"
        return FinishOutcome(f.id, f.token, JobState.DEAD, None, 0, "failed", error, f.backtrace)
    if isinstance(chosen, float | int) and not isinstance(chosen, bool):
        return FinishOutcome(f.id, f.token, JobState.RETRYING, now + chosen, 0, "failed",
                             f.error, f.backtrace)  # fmt: skip
    policy: RetryBackoff = backoff_of(row["backoff"])
    run_at = now + policy.delay(attempt, rand)
    return FinishOutcome(
        f.id, f.token, JobState.RETRYING, run_at, 0, "failed", f.error, f.backtrace
    )


def decide_yield(job_id: uuid.UUID, token: int) -> FinishOutcome:
    """A yielded job goes back to ready at once; the attempt does not count."""
    return FinishOutcome(job_id, token, JobState.QUEUED, None, -1, "yielded", None, None)


def decide_lost_lease(row: Mapping[str, Any]) -> FinishOutcome:
    """A lease expired (worker gone): counts as an attempt; ready again unless none are left."""
    return _lost(row, "lease_expired", "lease expired: the worker stopped sending heartbeats")


def decide_revoked(row: Mapping[str, Any], max_run_time: float, grace: float) -> FinishOutcome:
    """An attempt ran past its maximum run time and did not yield when asked: the lease is
    revoked. Counts as an attempt (a job that never yields cannot run forever); ready again,
    with its checkpoints, unless none are left."""
    return _lost(
        row,
        "timed_out",
        f"maximum run time of {max_run_time:g} s reached and the worker did not yield within"
        f" {grace:g} s: lease revoked",
    )


def _lost(row: Mapping[str, Any], outcome: str, error: str) -> FinishOutcome:
    """An attempt the worker did not end: it counts; the job is ready again, or dead after its
    last attempt."""
    final = int(row["attempt"]) >= int(row["max_attempts"])
    return FinishOutcome(
        row["id"],
        int(row["lease_token"]),
        JobState.DEAD if final else JobState.QUEUED,
        None,
        0,
        outcome,
        error,
        None,
    )
