"""The job state machine: every state a job can be in and every allowed transition.

This is the one place that says how a job moves; the store's SQL writes check the expected
current state (and the fencing token) so that a transition not listed here cannot happen.
The diagram in docs/architecture.md is drawn from this table.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["ACTIVE", "FINAL", "TRANSITIONS", "JobState", "Transition", "can"]


class JobState(StrEnum):
    SCHEDULED = "scheduled"  # waiting for run_at
    QUEUED = "queued"  # ready: in its lane, may be dispatched
    RUNNING = "running"  # leased to one worker (one live attempt)
    RETRYING = "retrying"  # failed, waiting for its backoff delay
    COMPLETED = "completed"
    DEAD = "dead"  # failed on its last attempt, or a permanent error
    CANCELLED = "cancelled"
    EXPIRED = "expired"  # expires_at passed before it ran


class Transition(StrEnum):
    ENQUEUE = "enqueue"
    PROMOTE = "promote"  # run_at reached
    DISPATCH = "dispatch"
    ACK = "ack"
    FAIL_RETRY = "fail_retry"
    FAIL_FINAL = "fail_final"
    YIELD = "yield"
    LEASE_EXPIRED = "lease_expired"
    CANCEL = "cancel"
    EXPIRE = "expire"
    RETRY_NOW = "retry_now"  # operator: run again now


S = JobState
PENDING = frozenset({S.SCHEDULED, S.QUEUED, S.RETRYING})
ACTIVE = PENDING | {S.RUNNING}
FINAL = frozenset({S.COMPLETED, S.DEAD, S.CANCELLED, S.EXPIRED})

# transition -> (states it may start from, state it ends in). ENQUEUE starts from nothing.
TRANSITIONS: dict[Transition, tuple[frozenset[JobState], frozenset[JobState]]] = {
    Transition.ENQUEUE: (frozenset(), frozenset({S.SCHEDULED, S.QUEUED})),
    Transition.PROMOTE: (frozenset({S.SCHEDULED, S.RETRYING}), frozenset({S.QUEUED})),
    Transition.DISPATCH: (frozenset({S.QUEUED}), frozenset({S.RUNNING})),
    Transition.ACK: (frozenset({S.RUNNING}), frozenset({S.COMPLETED})),
    Transition.FAIL_RETRY: (frozenset({S.RUNNING}), frozenset({S.RETRYING})),
    Transition.FAIL_FINAL: (frozenset({S.RUNNING}), frozenset({S.DEAD})),
    Transition.YIELD: (frozenset({S.RUNNING}), frozenset({S.QUEUED})),
    # A lost lease counts as an attempt: back to the ready pool, or dead when none are left.
    Transition.LEASE_EXPIRED: (frozenset({S.RUNNING}), frozenset({S.QUEUED, S.DEAD})),
    Transition.CANCEL: (ACTIVE, frozenset({S.CANCELLED})),
    Transition.EXPIRE: (PENDING, frozenset({S.EXPIRED})),
    Transition.RETRY_NOW: (
        frozenset({S.SCHEDULED, S.RETRYING, S.DEAD, S.CANCELLED, S.EXPIRED}),
        frozenset({S.QUEUED}),
    ),
}


def can(transition: Transition, source: JobState, target: JobState) -> bool:
    """Whether `transition` may move a job from `source` to `target`."""
    sources, targets = TRANSITIONS[transition]
    if transition is Transition.ENQUEUE:
        return target in targets
    return source in sources and target in targets
