from __future__ import annotations

import json
import uuid

from worcr_node.outcome import FailReport, decide_failure, decide_lost_lease, decide_yield
from worcr_node.state import JobState

JID = uuid.uuid4()


def row(attempt: int, max_attempts: int = 3, backoff: dict[str, float] | None = None) -> dict:
    return {
        "id": JID,
        "lease_token": 7,
        "attempt": attempt,
        "max_attempts": max_attempts,
        "backoff": json.dumps(backoff) if backoff else None,
    }


def test_retryable_failure_waits_backoff() -> None:
    f = FailReport(JID, 7, "E", "tb", True)
    out = decide_failure(row(2, backoff={"base": 1, "factor": 3, "max": 100, "jitter": 0}), f,
                         1000.0, 0.5)  # fmt: skip
    assert out.new_state is JobState.RETRYING
    assert out.run_at == 1003.0
    assert out.outcome == "failed"


def test_last_attempt_or_permanent_is_dead() -> None:
    assert (
        decide_failure(row(3), FailReport(JID, 7, "E", None, True), 0, 0).new_state is JobState.DEAD
    )
    assert (
        decide_failure(row(1), FailReport(JID, 7, "E", None, False), 0, 0).new_state
        is JobState.DEAD
    )


def test_yield_does_not_count_and_lost_lease_does() -> None:
    y = decide_yield(JID, 7)
    assert (y.new_state, y.attempt_delta) == (JobState.QUEUED, -1)
    lost = decide_lost_lease(row(1))
    assert (lost.new_state, lost.attempt_delta, lost.token) == (JobState.QUEUED, 0, 7)
    assert decide_lost_lease(row(3)).new_state is JobState.DEAD
